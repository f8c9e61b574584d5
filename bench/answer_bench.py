"""How often a trained embedded model gives its trained answer, asked the ways people ask.

    python bench/answer_bench.py --data-file bench/data/heldout_qa.json \\
        --reworded bench/data/heldout_reworded.json --system-data bench/data/heldout_system.json

Trains the embedded model ("tiny", default flags) on --data-file, converts it to ONNX (default
flags) and asks it with `mtnsails.loop.evaluator.Evaluator` (greedy, the model's recorded system prompt).
An answer is right when the reference answer's first sentence appears in it
(`first_sentence_match`). Figures:

- alone: each trained question in a fresh conversation;
- session: the trained questions one after another in one conversation (history in the prompt);
- session_penalty: the same with chat's default repetition penalty 1.2 (greedy), which also
  penalises every token of the history;
- reworded: each --reworded question (same answer, other words) in a fresh conversation;
- system: a second model trained on --system-data (records that carry a system prompt), chatted
  with the default settings (no system prompt given).

Prints the CPU model and flags, the training wall time of each model, and the figures.
`--augment` trains with the varied examples of mtnsails.train.augment (`train --augment`; shares below).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from mtnsails.data.handler import ConversationDataHandler  # noqa: E402
from mtnsails.train.augment import AugmentConfig  # noqa: E402


def train_and_convert(
    data: list[dict], workdir: Path, augment: AugmentConfig, epochs: int | None
) -> tuple[Path, float]:
    """Train tiny on `data`, export it; return the ONNX directory and the training seconds."""
    from mtnsails.export.converter import ONNXConverter
    from mtnsails.train.config import TrainingConfig
    from mtnsails.train.trainer import LLMTrainer

    model_dir = workdir / "model"
    config = TrainingConfig(
        model_name="tiny", output_dir=str(model_dir), quiet=True, num_epochs=epochs, augment=augment
    )
    start = time.perf_counter()
    trainer = LLMTrainer(config=config)
    trainer.train_conversations(data)
    seconds = time.perf_counter() - start
    trainer.save_model()
    onnx_dir = workdir / "onnx"
    ONNXConverter(model_dir, quiet=True).convert_to_onnx(onnx_dir)
    return onnx_dir, seconds


def score(onnx_dir: Path, pairs: list[dict], session: bool, penalty: float | None = None) -> tuple[int, list[str]]:
    """Right answers of `pairs` (Evaluator, greedy; one conversation when `session`; with chat's
    `repetition_penalty` when `penalty` is given); the misses."""
    from mtnsails.inference.generation_config import GenerationConfig
    from mtnsails.loop.evaluator import Evaluator

    generation = None if penalty is None else GenerationConfig(temperature=0, repetition_penalty=penalty)
    report = Evaluator(onnx_dir, session=session, generation=generation).evaluate(pairs)
    misses = [
        f"{result.question!r} -> {result.answer!r}" for result in report.results if not result.first_sentence_match
    ]
    return len(report.results) - len(misses), misses


CHAT_PENALTY = 1.2  # chat's default repetition penalty (the Evaluator's greedy answers use none)


def load(path: str) -> list[dict]:
    return ConversationDataHandler.from_file(path).conversations


def cpu_line() -> str:
    from mtnsails.core.cpu import cpu_flags

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    flags = [flag for flag in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if flag in cpu_flags()]
    return f"CPU: {model} ({os.cpu_count()} cores; {' '.join(flags) or 'no avx2'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-file", required=True, help="single-turn pairs to train on")
    parser.add_argument("--reworded", help="rewordings of trained questions with their answers")
    parser.add_argument("--system-data", help="records carrying a system prompt (a second model)")
    parser.add_argument("--augment", action="store_true", help="train with mtnsails.train.augment")
    parser.add_argument("--history-share", type=float, help="override AugmentConfig.history_share")
    parser.add_argument("--max-history", type=int, help="override AugmentConfig.max_history")
    parser.add_argument("--reworded-share", type=float, help="override AugmentConfig.reworded_share")
    parser.add_argument("--epochs", type=int, help="override the embedded model's epochs")
    parser.add_argument("--show-misses", action="store_true", help="print each wrong answer")
    parser.add_argument("--keep", help="directory to keep the trained and exported models in")
    args = parser.parse_args()

    overrides = {
        name: getattr(args, name)
        for name in ("history_share", "max_history", "reworded_share")
        if getattr(args, name) is not None
    }
    augment = replace(AugmentConfig(), enabled=args.augment, **overrides)
    print(cpu_line())
    print(f"augment: {augment}")
    data = load(args.data_file)
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.keep or tmp
        onnx_dir, seconds = train_and_convert(data, Path(tmp) / "main", augment, args.epochs)
        print(f"training {Path(args.data_file).name} ({len(data)} conversations): {seconds:.1f} s")
        checks = [
            ("alone", data, False, None),
            ("session", data, True, None),
            ("session_penalty", data, True, CHAT_PENALTY),
        ]
        if args.reworded:
            checks.append(("reworded", load(args.reworded), False, None))
        for name, pairs, session, penalty in checks:
            right, misses = score(onnx_dir, pairs, session, penalty)
            figures[name] = (right, len(pairs))
            if args.show_misses:
                print("\n".join(f"  {name} miss: {miss}" for miss in misses))
        if args.system_data:
            system_data = load(args.system_data)
            onnx_dir, seconds = train_and_convert(system_data, Path(tmp) / "system", augment, args.epochs)
            print(f"training {Path(args.system_data).name} ({len(system_data)} conversations): {seconds:.1f} s")
            right, misses = score(onnx_dir, system_data, False)
            figures["system"] = (right, len(system_data))
            if args.show_misses:
                print("\n".join(f"  system miss: {miss}" for miss in misses))
    for name, (right, total) in figures.items():
        print(f"{name:9s} {right:3d}/{total:<3d} {right / total:6.1%}")
    print("json:", json.dumps({name: right / total for name, (right, total) in figures.items()}))


if __name__ == "__main__":
    main()
