"""Command line: parse arguments and call the classes. Nothing heavy is imported at start-up.

Each subcommand has an `add_<name>_arguments(parser)` that declares its flags and a
`run_<name>(args) -> int` that does the work; `pipeline` reuses the other three's flags.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from mtnsails.errors import MtnsailsError

if TYPE_CHECKING:  # annotations only: the commands import these lazily
    from mtnsails.chat import ChatInterface
    from mtnsails.onnx_converter import VerificationReport

# -- validate ---------------------------------------------------------------------------------


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-file", required=True, help="conversations to check (.json or .jsonl)")
    parser.add_argument("--filter", action="store_true",
                        help="write only the valid conversations to --output")
    parser.add_argument("--output", help="where --filter writes (default: <input stem>_filtered.json, "
                                         "or .jsonl for a .jsonl input, beside the input)")
    parser.add_argument("--json", action="store_true",
                        help="print the full report as JSON on stdout, nothing else")
    parser.add_argument("--quiet", action="store_true", help="print only the verdict line")


def run_validate(args: argparse.Namespace) -> int:
    """Exit 0 when at least 50 % of the conversations are valid, 1 below, 2 for unusable input."""
    import json
    from pathlib import Path

    from mtnsails.data import (JSONL_SUFFIXES, ConversationDataHandler, require_output_directory,
                               write_conversations)
    from mtnsails.quality import DataQualityValidator

    data_file = Path(args.data_file)
    if args.output and not args.filter:
        raise MtnsailsError("--output is only used with --filter; add --filter to write the valid "
                            "conversations")
    output = None
    if args.filter:
        suffix = ".jsonl" if data_file.suffix.lower() in JSONL_SUFFIXES else ".json"
        output = Path(args.output or data_file.with_name(f"{data_file.stem}_filtered{suffix}"))
        if output.resolve() == data_file.resolve():
            raise MtnsailsError(f"{output}: is the input file; choose another --output "
                                "(validate never overwrites its input)")
        require_output_directory(output)
    conversations = ConversationDataHandler(data_file).conversations
    report = DataQualityValidator().analyze(conversations)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    elif args.quiet:
        print(report.verdict_line())
    else:
        print(f"File: {data_file}\n")
        print(report.format_text())
    if output is not None:
        valid = [c for c, found in zip(conversations, report.issues) if not found]
        try:
            write_conversations(output, valid)
        except OSError as error:
            raise MtnsailsError(f"{output}: cannot write the filtered data: {error.strerror}") from None
        if not args.quiet:
            print(f"Filtered: kept {len(valid)} of {report.total} conversations, removed "
                  f"{report.total - len(valid)}; wrote {output}",
                  file=sys.stderr if args.json else sys.stdout)
    return 0 if report.quality_score >= 0.5 else 1


# -- train ------------------------------------------------------------------------------------


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare `train`'s flags (the pipeline declares them too) in a "training" group."""
    group = parser.add_argument_group("training")
    group.add_argument("--data-file", help="training conversations, .json or .jsonl "
                       "(default: the packaged example conversations)")
    group.add_argument("--model-name", default="distilgpt2",
                       help="hub model name, a local model directory (e.g. ./trained_model to "
                       "retrain) or 'tiny' for the embedded offline model (default: distilgpt2, "
                       "falls back to tiny when it cannot be had)")
    group.add_argument("--output-dir", default="./trained_model",
                       help="where the trained model goes (default: ./trained_model)")
    group.add_argument("--epochs", type=int, help="passes over the data (default: 3; tiny: 40)")
    group.add_argument("--batch-size", type=int, default=4, help="examples per device step (default: 4)")
    group.add_argument("--learning-rate", type=float,
                       help="peak learning rate (default: 5e-5; tiny: 1e-3)")
    group.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"),
                       help="where to train; auto picks a GPU when there is one (default: cpu)")
    group.add_argument("--force", action="store_true",
                       help="train even when the data quality score is below 50%%")
    group.add_argument("--eval-split", type=float, help="fraction held out for eval loss "
                       "(default: 0.1 with >= 20 conversations, else none; tiny: none)")
    group.add_argument("--early-stopping-patience", type=int,
                       help="stop after N evaluations without a better eval loss (default: off)")
    group.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    group.add_argument("--warmup-ratio", type=float, default=0.0,
                       help="fraction of steps with a rising learning rate (default: 0)")
    group.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: 0)")
    group.add_argument("--gradient-accumulation-steps", type=int, default=1,
                       help="steps whose gradients add up before one update (default: 1)")
    group.add_argument("--max-length", type=int, default=256,
                       help="tokens per example; longer ones lose context from the left (default: 256)")
    group.add_argument("--save-steps", type=int, default=100,
                       help="checkpoint every N steps into <output-dir>.checkpoints (default: 100)")
    group.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from its last checkpoint")
    group.add_argument("--quiet", action="store_true", help="no progress bars or reports")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="allow a hub model to run its own Python code (only for models you trust)")


def train_from_args(args: argparse.Namespace, next_step: bool = True) -> str:
    """Run the quality gate and training that `train` describes; return the model directory.

    `next_step=False` leaves out the "Next: convert" hint (the pipeline converts by itself)."""
    return _train(args, next_step)[0]


def _train(args: argparse.Namespace, next_step: bool) -> tuple[str, list[dict]]:
    """`train_from_args`, also returning the conversations it read (the pipeline's demo asks some)."""
    from mtnsails.data import ConversationDataHandler
    from mtnsails.trainer import (LLMTrainer, TrainingConfig, finish_distributed,
                                  packaged_example_data, quality_gate)

    config = TrainingConfig(
        model_name=args.model_name, output_dir=args.output_dir, num_epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
        gradient_accumulation_steps=args.gradient_accumulation_steps, max_length=args.max_length,
        eval_split=args.eval_split, early_stopping_patience=args.early_stopping_patience,
        seed=args.seed, device=args.device, save_steps=args.save_steps, resume=args.resume,
        quiet=args.quiet, trust_remote_code=args.trust_remote_code)
    trainer = LLMTrainer(config=config)  # validates the settings: refuse them before any loading
    data_file = args.data_file or packaged_example_data()
    conversations = ConversationDataHandler.from_file(data_file).conversations
    quality_gate(conversations, force=args.force, quiet=args.quiet)
    result = trainer.train_conversations(conversations, data_file=data_file)
    path = trainer.save_model()
    if trainer.is_main_process:
        print(result.summary(path, next_step))
    finish_distributed()
    return path, conversations


def run_train(args: argparse.Namespace) -> int:
    """`train`: check the data, train, save the model; 0 on success (errors raise MtnsailsError)."""
    train_from_args(args)
    return 0


# -- convert ----------------------------------------------------------------------------------


def add_convert_arguments(parser: argparse.ArgumentParser, standalone: bool = True) -> None:
    """`standalone=False` (pipeline) leaves out --model-path and --quiet, which train declares."""
    group = parser.add_argument_group("ONNX export")
    if standalone:
        group.add_argument("--model-path", required=True, help="trained model directory (save_pretrained)")
        group.add_argument("--quiet", action="store_true", help="print nothing but errors")
    group.add_argument("--onnx-output", default="./onnx_model",
                       help="ONNX model directory to write, replaced atomically (default: ./onnx_model)")
    group.add_argument("--opset-version", type=int, default=14, help="ONNX opset (default: 14)")
    group.add_argument("--verify", action="store_true",
                       help="compare PyTorch and ONNX Runtime on test prompts; exit 1 if they disagree")
    group.add_argument("--quantize", choices=("none", "int8"), default="none",
                       help="also write model_int8.onnx, dynamic int8 (default: none)")


def convert_from_args(args: argparse.Namespace,
                      model_path: str | None = None) -> tuple[str, VerificationReport | None]:
    """Export (and verify) as `convert` describes; return (onnx directory, VerificationReport or None)."""
    from mtnsails.onnx_converter import ONNXConverter

    converter = ONNXConverter(model_path or args.model_path, quiet=args.quiet)
    onnx_dir = converter.convert_to_onnx(args.onnx_output, opset_version=args.opset_version,
                                         quantize=args.quantize)
    report = converter.verify(onnx_dir) if args.verify else None
    if report is not None and not report.ok:
        print(report.format_problems(), file=sys.stderr)
    return onnx_dir, report


def run_convert(args: argparse.Namespace) -> int:
    """Exit 0 after a successful export, 1 when --verify found PyTorch and ONNX disagreeing."""
    _, report = convert_from_args(args)
    return 1 if report is not None and not report.ok else 0


# -- chat -------------------------------------------------------------------------------------


def add_chat_arguments(parser: argparse.ArgumentParser, standalone: bool = True) -> None:
    """`standalone=False` (pipeline) leaves out --model-path, --max-length and --seed, which train declares."""
    group = parser.add_argument_group("chat")
    if standalone:
        group.add_argument("--model-path", required=True, help="ONNX model directory (from convert)")
        group.add_argument("--max-length", type=int, default=256,
                           help="most prompt tokens (history + question) given to the model (default: 256)")
        group.add_argument("--seed", type=int, help="random seed for reproducible sampling (default: none)")
    group.add_argument("--prompt", help="answer this one prompt and exit")
    group.add_argument("--max-tokens", type=int, default=50, help="new tokens per answer at most (default: 50)")
    group.add_argument("--temperature", type=float, default=0.7,
                       help="sampling temperature; 0 = greedy (default: 0.7)")
    group.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens; 0 = all (default: 50)")
    group.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling probability mass (default: 0.9)")
    group.add_argument("--repetition-penalty", type=float, default=1.2,
                       help="discourage tokens already in the conversation; 1 = off (default: 1.2)")
    group.add_argument("--no-repeat-ngram-size", type=int, default=0,
                       help="never repeat an n-gram of this many tokens; 0 = off (default: 0)")
    group.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto",
                       help="which model file to run; auto = int8 when present (default: auto)")
    group.add_argument("--threads", type=int,
                       help="onnxruntime threads; fewer can be faster on a busy machine (default: physical cores)")
    group.add_argument("--log-conversations", action="store_true",
                       help="append every exchange to --log-file (training format)")
    group.add_argument("--log-file", default="./chat_history.json",
                       help="conversation log, .json array or .jsonl (default: ./chat_history.json)")


def check_prompt(args: argparse.Namespace) -> None:
    """Refuse a blank --prompt before any work: there is no question to answer or log."""
    if args.prompt is not None and not args.prompt.strip():
        raise MtnsailsError("--prompt is blank: give the question to answer "
                            "(or leave --prompt out to chat)")


def open_chat_from_args(args: argparse.Namespace, model_path: str | None = None) -> ChatInterface:
    """The ChatInterface that `chat` describes (the caller closes it)."""
    from mtnsails.chat import ChatInterface, GenerationConfig

    generation = GenerationConfig(
        max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
        seed=args.seed)
    return ChatInterface(model_path or args.model_path, max_length=args.max_length,
                         log_conversations=args.log_conversations, log_file=args.log_file,
                         precision=args.precision, generation=generation, threads=args.threads)


def run_chat(args: argparse.Namespace) -> int:
    """Answer --prompt once, or chat (streamed in a terminal, one answer per line when piped); exit 0."""
    check_prompt(args)
    chat = open_chat_from_args(args)
    if args.prompt is None:
        chat.chat(interactive=True)
        return 0
    with chat:
        print(chat.reply(args.prompt), flush=True)
    return 0


# -- pipeline ---------------------------------------------------------------------------------


DEMO_PROMPTS = 3  # questions from the data the demo asks the freshly converted model


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of train, convert and chat once; the model paths are the pipeline's own:
    the trained model (--output-dir) feeds convert, the ONNX directory (--onnx-output) the chat."""
    add_train_arguments(parser)
    add_convert_arguments(parser, standalone=False)
    add_chat_arguments(parser, standalone=False)


def run_pipeline(args: argparse.Namespace) -> int:
    """Train, convert (and verify), then ask the new ONNX model a few questions and summarise.

    Exit 0 on success, 1 when --verify rejected the export (chat is then skipped)."""
    import shlex

    from mtnsails.files import read_metadata
    from mtnsails.trainer import packaged_example_data

    check_prompt(args)
    data_file = args.data_file or packaged_example_data()
    _pipeline_stage(args, 1, f"train {args.model_name} on {data_file}")
    model_dir, conversations = _train(args, next_step=False)  # the data is read once, for both
    _pipeline_stage(args, 2, f"convert {model_dir} to ONNX")
    onnx_dir, report = convert_from_args(args, model_path=model_dir)
    if report is not None and not report.ok:
        print("pipeline stopped: the ONNX model failed verification", file=sys.stderr)
        return 1
    prompts = [args.prompt] if args.prompt is not None else demo_prompts(conversations)
    _pipeline_stage(args, 3, f"chat demo: {len(prompts)} question(s) from "
                    f"{'--prompt' if args.prompt else data_file}")
    with open_chat_from_args(args, model_path=onnx_dir) as chat:
        answers = []
        for prompt in prompts:
            answers.append(chat.reply(prompt))
            chat.reset()  # each demo question stands alone
        precision = chat.precision

    meta = read_metadata(model_dir)
    losses = ", ".join(f"{name.replace('_', ' ')} {meta[name]:.4f}"
                       for name in ("train_loss", "eval_loss", "perplexity")
                       if meta.get(name) is not None)
    print("\n=== Summary ===")
    print(f"Trained model: {model_dir} ({losses or 'no loss recorded'})")
    print(f"ONNX model:    {onnx_dir} (the demo ran the {precision} file)")
    for prompt, answer in zip(prompts, answers):
        print(f"  You:       {prompt}\n  Assistant: {answer or '(empty answer)'}")
    if args.log_conversations:
        print(f"Logged the demo to {args.log_file}")
    print(f"Chat with it:  python main.py chat --model-path {shlex.quote(str(onnx_dir))}", flush=True)
    return 0


def _pipeline_stage(args: argparse.Namespace, number: int, title: str) -> None:
    if not args.quiet:
        print(f"\n=== [{number}/3] {title} ===", flush=True)


def demo_prompts(conversations: list[dict], count: int = DEMO_PROMPTS) -> list[str]:
    """`count` questions spread over the conversations, preferring ones that stand alone (no history)."""
    single = [c for c in conversations if not c.get("history") and not c.get("system")]
    pool = [c["input"] for c in (single or conversations)]
    step = max(1, len(pool) // count)
    return list(dict.fromkeys(pool[::step]))[:count]


# -- entry point ------------------------------------------------------------------------------

COMMANDS = {
    "validate": (add_validate_arguments, run_validate,
                 "check a data set's quality (and optionally filter it)"),
    "train": (add_train_arguments, run_train, "fine-tune a causal language model on conversations"),
    "convert": (add_convert_arguments, run_convert, "export a trained model to ONNX for fast CPU chat"),
    "chat": (add_chat_arguments, run_chat, "chat with an ONNX model"),
    "pipeline": (add_pipeline_arguments, run_pipeline, "train, convert and try a model in one go"),
}


def build_parser() -> argparse.ArgumentParser:
    """The `mtnsails` parser: one subcommand per entry of COMMANDS, its handler in `args.handler`."""
    parser = argparse.ArgumentParser(
        prog="mtnsails",
        description="Turn question/answer conversations into a small chat model that runs fast on a CPU.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add_arguments, run, help_text) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(subparser)
        subparser.set_defaults(handler=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]) and return the exit status.

    A MtnsailsError becomes one `error: ...` line on stderr and its exit code (2); Ctrl-C exits 130."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except MtnsailsError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`mtnsails validate ... | head`): not an error of ours. Point
        # stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
