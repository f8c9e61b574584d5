"""The whole mtnsails workflow through the Python API, in about a minute on a laptop CPU.

    python example.py                          # embedded offline model, short run
    python example.py --model-name distilgpt2  # a hub model (needs it downloaded once)
    python example.py --keep ./example_run     # keep the model, ONNX export and chat log

Steps: load the packaged example conversations -> check their quality -> train a model for a
short run -> export it to ONNX and verify the export against PyTorch -> chat with a few prompts,
logging the exchanges to a file (the file trains the next model: see docs/retraining-loop.md).
Works offline: the embedded model needs no download.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from mtnsails import (
    ChatInterface,
    ConversationDataHandler,
    DataQualityValidator,
    GenerationConfig,
    LLMTrainer,
    MtnsailsError,
    ONNXConverter,
    TrainingConfig,
)
from mtnsails.train.trainer import packaged_example_data

PROMPTS = ["What is mtnsails?", "How do I convert a trained model to ONNX?", "Do I need a GPU to use mtnsails?"]


def step(number: int, text: str) -> float:
    print(f"\n[{number}/5] {text}")
    return time.perf_counter()


def run(args: argparse.Namespace, workdir: Path) -> None:
    start = step(1, "Load the packaged example conversations")
    data = ConversationDataHandler.from_file(packaged_example_data())
    print(
        f"  {len(data)} conversations, e.g. {data.conversations[0]['input']!r} -> "
        f"{data.conversations[0]['output'][:60]!r}..."
    )

    step(2, "Check their quality")
    report = DataQualityValidator().analyze(data.conversations)
    print(f"  {report.verdict_line()}")
    conversations = [c for c, issues in zip(data.conversations, report.issues) if not issues]
    conversations = conversations[: args.conversations]  # a short run learns a few answers well
    print(f"  training on the first {len(conversations)} valid conversations")

    began = step(3, f"Train {args.model_name!r} for {args.epochs} epochs")
    config = TrainingConfig(
        model_name=args.model_name, output_dir=str(workdir / "trained_model"), num_epochs=args.epochs, quiet=True
    )
    trainer = LLMTrainer(config=config)
    result = trainer.train_conversations(conversations)
    model_dir = trainer.save_model()
    print(f"  final train loss {result.train_loss:.3f} after {time.perf_counter() - began:.0f} s; saved to {model_dir}")

    began = step(4, "Export to ONNX and verify it against PyTorch")
    converter = ONNXConverter(model_dir, quiet=True)
    onnx_dir = converter.convert_to_onnx(workdir / "onnx_model")
    verification = converter.verify(onnx_dir)
    print(
        f"  {onnx_dir}: {'verified' if verification.ok else 'NOT verified'} "
        f"(largest logit difference {verification.max_logit_diff:.1e}) "
        f"in {time.perf_counter() - began:.0f} s"
    )
    if not verification.ok:
        raise MtnsailsError("the ONNX export does not match PyTorch: " + verification.format_text())

    step(5, "Chat, logging every exchange")
    log_file = workdir / "chat_log.jsonl"
    greedy = GenerationConfig(max_new_tokens=48, do_sample=False)
    with ChatInterface(onnx_dir, log_conversations=True, log_file=log_file, generation=greedy) as chat:
        for prompt in PROMPTS:
            print(f"  You: {prompt}")
            print(f"  Bot: {chat.reply(prompt)}")
            chat.reset()  # each example question stands alone
            print(f"       ({chat.last_stats.tokens_per_second:.0f} tokens/s)")
    logged = ConversationDataHandler.from_file(log_file)
    print(f"  {len(logged)} exchanges logged to {log_file}")
    print(
        f"  retrain on them: python main.py train --data-file {log_file} --model-name {model_dir}"
        + ("" if args.keep else "\n  (this run's files are deleted at exit; --keep DIR keeps them)")
    )
    print(
        f"\nDone in {time.perf_counter() - start:.0f} s. A run this short learns its "
        f"{len(conversations)} answers by heart; for a model that answers new questions, train "
        "on a few hundred conversations with python main.py train."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-name",
        default="tiny",
        help="model to fine-tune: 'tiny' (embedded, offline), a hub name or a "
        "local model directory (default: %(default)s)",
    )
    parser.add_argument("--epochs", type=int, default=50, help="training epochs (default: %(default)s)")
    parser.add_argument(
        "--conversations",
        type=int,
        default=16,
        help="how many example conversations to train on (default: %(default)s)",
    )
    parser.add_argument(
        "--keep", metavar="DIR", help="write the model, ONNX export and chat log here instead of a temp folder"
    )
    args = parser.parse_args(argv)
    try:
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            run(args, Path(args.keep))
        else:
            with tempfile.TemporaryDirectory(prefix="mtnsails-example-") as workdir:
                run(args, Path(workdir))
    except MtnsailsError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
