"""`pipeline`: train, convert (and verify), then ask the new ONNX model a few questions."""

from __future__ import annotations

import argparse
import sys

from mtnsails.commands import chat, convert, train

HELP = "train, convert and try a model in one go"
DEMO_PROMPTS = 3  # questions from the data the demo asks the freshly converted model
EVALUATED = 100  # at most this many questions of each part (trained, held out) are scored


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of train, convert and chat once; the model paths are the pipeline's own:
    the trained model (--output-dir) feeds convert, the ONNX directory (--onnx-output) the chat."""
    train.add_arguments(parser)
    convert.add_arguments(parser, standalone=False)
    chat.add_arguments(parser, standalone=False)
    deployment = parser.add_argument_group("deployment")
    deployment.add_argument(
        "--promote-to",
        metavar="LIVE_DIR",
        help="at the end, replace LIVE_DIR with the new ONNX model only when it is not worse than "
        "the model there on the data it was trained on, nor on the held-out set: the eval split "
        "and --eval-file (as promote does; exit 1 when refused)",
    )
    deployment.add_argument(
        "--eval-file",
        nargs="+",
        metavar="EVAL_FILE",
        help="with --promote-to: conversations the new model was not trained on, which it must "
        "not answer worse than the live model",
    )


def run(args: argparse.Namespace) -> int:
    """Train, convert (and verify), then ask the new ONNX model a few questions and summarise.

    Each stage's header says what it does (the first names the model really trained, which
    offline may be the embedded fallback), and its output follows under it.

    Exit 0 on success, 1 when --verify rejected the export (chat is then skipped) or
    --promote-to refused the new model."""
    import shlex
    from pathlib import Path

    from mtnsails.data.handler import ConversationDataHandler
    from mtnsails.model_dir.metadata import TRAINING_DATA_FILE, read_metadata
    from mtnsails.train.trainer import packaged_example_data

    check_settings(args)
    promoter, eval_set = None, []
    if args.eval_file and not args.promote_to:
        from mtnsails.core.errors import MtnsailsError

        raise MtnsailsError("--eval-file judges a promotion: give --promote-to LIVE_DIR too")
    if args.promote_to:
        from mtnsails.loop.promoter import Promoter

        promoter = Promoter(args.promote_to)  # a live directory that is not a model fails now
        if args.eval_file:  # read now: a bad file fails before training
            eval_set = ConversationDataHandler.from_files(args.eval_file).conversations
    data_file = ", ".join(map(str, args.data_file or [packaged_example_data()]))
    trainer = train.make_trainer(args)
    _stage(args, 1, f"train {trainer.model_choice().describe()} on {data_file}")
    model_dir, conversations = train.train(args, next_step=False, trainer=trainer)  # reads the data once
    _stage(args, 2, f"convert {model_dir} to ONNX")
    onnx_dir, report = convert.convert(args, model_path=model_dir)
    if report is not None and not report.ok:
        print("pipeline stopped: the ONNX model failed verification", file=sys.stderr)
        return 1
    prompts = [args.prompt] if args.prompt is not None else demo_prompts(conversations)
    _stage(args, 3, f"chat demo: {len(prompts)} question(s) from {'--prompt' if args.prompt else data_file}")
    with chat.open_chat(args, model_path=onnx_dir) as session:
        for prompt in prompts:
            answer = session.reply(prompt)
            session.reset()  # each demo question stands alone
            if not args.quiet:
                print(f"  You:       {prompt}\n  Assistant: {answer or '(empty answer)'}", flush=True)
        precision = session.precision

    meta = read_metadata(model_dir)
    losses = ", ".join(
        f"{name.replace('_', ' ')} {meta[name]:.4f}"
        for name in ("train_loss", "eval_loss", "perplexity")
        if meta.get(name) is not None
    )
    print("\n=== Summary ===")
    print(f"Trained model: {model_dir} ({losses or 'no loss recorded'})")
    print(f"ONNX model:    {onnx_dir} (the demo ran the {precision} file)")
    if args.log_conversations:
        print(f"Logged the demo to {args.log_file}")
    # What the model was trained on, in training order: the data plus, continuing a model, the
    # conversations replayed from it (held_out counts positions in this list).
    trained_on = ConversationDataHandler.from_file(Path(model_dir) / TRAINING_DATA_FILE).conversations
    held_out = set(meta.get("held_out") or [])
    parts = [
        ("training data", [c for i, c in enumerate(trained_on) if i not in held_out]),
        ("eval split", [c for i, c in enumerate(trained_on) if i in held_out]),
    ]
    for name, part in parts:
        if part:
            print(f"Evaluation on the {name}: {evaluation_summary(args, onnx_dir, part)}", flush=True)
    print(f"Chat with it:  python main.py chat --model-path {shlex.quote(str(onnx_dir))}", flush=True)
    if promoter is None:
        return 0
    trained, eval_split = (part for _, part in parts)
    decision = promoter.promote(onnx_dir, trained, eval_split + eval_set)
    print(decision.describe(), flush=True)
    return 0 if decision.promoted else 1


def evaluation_summary(args: argparse.Namespace, onnx_dir: str, conversations: list[dict]) -> str:
    """Score the new model's greedy answers on (up to EVALUATED of) `conversations`, each alone."""
    from mtnsails.loop.evaluator import Evaluator

    sample = spread(conversations, EVALUATED)
    report = Evaluator(
        onnx_dir,
        system=args.system,
        max_new_tokens=args.max_new_tokens,
        max_length=args.max_length,
        precision=args.precision,
    ).evaluate(sample)
    scored = "" if len(sample) == len(conversations) else f" (a spread of {len(conversations)})"
    return report.summary_line() + scored


def spread(items: list, count: int) -> list:
    """At most `count` items spread evenly over `items`, in order."""
    if len(items) <= count:
        return items
    return [items[index * len(items) // count] for index in range(count)]


def check_settings(args: argparse.Namespace) -> None:
    """Refuse a bad setting of any stage before the first one starts, so that a pipeline never
    trains and writes a model and then fails on a convert or chat setting."""
    from pathlib import Path

    from mtnsails.core import settings
    from mtnsails.core.errors import MtnsailsError
    from mtnsails.data.logger import check_log_path
    from mtnsails.inference.generation import session_options
    from mtnsails.inference.generation_config import GenerationConfig
    from mtnsails.model_dir.metadata import MODEL_FORMAT, ONNX_FORMAT
    from mtnsails.model_dir.output import check_replaceable
    from mtnsails.train.config import TrainingConfig

    chat.check_prompt(args)
    convert.check_settings(args)
    settings.from_args(TrainingConfig, args).validate()
    settings.from_args(GenerationConfig, args).validate()
    session_options(args.threads)  # checks --threads
    model_dir, onnx_dir = Path(args.output_dir).resolve(), Path(args.onnx_output).resolve()
    if onnx_dir == model_dir or model_dir in onnx_dir.parents or onnx_dir in model_dir.parents:
        raise MtnsailsError(
            f"--onnx-output {args.onnx_output} and --output-dir {args.output_dir} "
            "must be separate folders, neither inside the other"
        )
    check_replaceable(model_dir, MODEL_FORMAT)
    check_replaceable(onnx_dir, ONNX_FORMAT)
    if args.precision not in ("auto", "fp32") and args.quantize not in (args.precision, "all"):
        raise MtnsailsError(
            f"--precision {args.precision} needs --quantize {args.precision} (or "
            f"all): only then does the pipeline write the {args.precision} model"
        )
    if args.log_conversations:
        check_log_path(args.log_file)


def _stage(args: argparse.Namespace, number: int, title: str) -> None:
    if not args.quiet:
        print(f"\n=== [{number}/3] {title} ===", flush=True)


def demo_prompts(conversations: list[dict], count: int = DEMO_PROMPTS) -> list[str]:
    """`count` questions spread over the conversations, preferring ones that stand alone (no history)."""
    single = [c for c in conversations if not c.get("history") and not c.get("system")]
    pool = [c["input"] for c in (single or conversations)]
    step = max(1, len(pool) // count)
    return list(dict.fromkeys(pool[::step]))[:count]
