"""Continuing a trained model on new data without forgetting: replay and continued-training settings.

    flock /tmp/mtnsails-big.lock python bench/retrain_bench.py [--variants default,no-replay]
    flock /tmp/mtnsails-big.lock python bench/retrain_bench.py --variants all   # the grid

Data (bench/data, written for this bench, in no training set of the repository):
retrain_base.jsonl, 40 single-turn pairs; retrain_new.jsonl, 10 new pairs on the same topics.
The embedded model is trained on the 40 with default flags, then continued from that directory
on the 10 with each variant's settings. Every model is converted to ONNX and asked each question
alone, greedily (`Evaluator`); a question counts as answered when the answer contains the first
sentence of the trained answer. Figures: old kept = base questions answered after continuing /
answered before; new learned = new questions answered; train seconds of each run (a ratio to
the base run, as the machine is shared). Prints the CPU model and flags.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
DATA = Path(__file__).resolve().parent / "data"

# name -> TrainingConfig overrides for the continued run (None: the continued-training default)
VARIANTS = {
    "default": {},
    "no-replay": {"no_replay": True},
    "replay-1e-3-40": {"learning_rate": 1e-3, "num_epochs": 40},  # the from-scratch settings
    "no-replay-1e-3-40": {"no_replay": True, "learning_rate": 1e-3, "num_epochs": 40},
    "replay-5e-4-20": {"learning_rate": 5e-4, "num_epochs": 20},
    "replay-2e-4-20": {"learning_rate": 2e-4, "num_epochs": 20},
    "replay-5e-4-10": {"learning_rate": 5e-4, "num_epochs": 10},
    "replay-1e-3-10": {"learning_rate": 1e-3, "num_epochs": 10},
    "replay-1e-3-20": {"learning_rate": 1e-3, "num_epochs": 20},
    "replay-1e-3-30": {"learning_rate": 1e-3, "num_epochs": 30},
}


def cpu_description() -> str:
    """CPU model and the vector flags that matter for the kernels."""
    from mtnsails.core.cpu import cpu_model, vector_flags

    return f"{cpu_model()}; flags: {' '.join(vector_flags()) or 'none of avx2/avx512f/avx512_vnni/amx'}"


def train(model_name: str, output: Path, conversations: list[dict], **overrides) -> float:
    """Train and save; return the seconds spent."""
    from mtnsails.train.config import TrainingConfig
    from mtnsails.train.trainer import LLMTrainer

    start = time.perf_counter()
    config = TrainingConfig(model_name=model_name, output_dir=str(output), quiet=True, save_steps=100000, **overrides)
    trainer = LLMTrainer(config=config)
    trainer.train_conversations(conversations)
    trainer.save_model()
    return time.perf_counter() - start


def answered(model_dir: Path, conversations: list[dict]) -> list[bool]:
    """Convert `model_dir` to ONNX and say which questions it answers (first sentence)."""
    from mtnsails.export.converter import ONNXConverter
    from mtnsails.loop.evaluator import Evaluator

    onnx_dir = model_dir.with_name(model_dir.name + "-onnx")
    ONNXConverter(model_dir, quiet=True).convert_to_onnx(onnx_dir)
    report = Evaluator(onnx_dir).evaluate(conversations)
    return [result.first_sentence_match for result in report.results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", default="default,no-replay", help="comma-separated names, or 'all' (default: default,no-replay)"
    )
    args = parser.parse_args()
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")

    from mtnsails.data.handler import ConversationDataHandler

    base = ConversationDataHandler.from_file(DATA / "retrain_base.jsonl").conversations
    new = ConversationDataHandler.from_file(DATA / "retrain_new.jsonl").conversations
    print(f"CPU: {cpu_description()}")
    print(f"data: {len(base)} base pairs, {len(new)} new pairs")
    with tempfile.TemporaryDirectory(prefix="retrain-bench-") as work:
        work = Path(work)
        base_seconds = train("tiny", work / "base", base)
        before = answered(work / "base", base)
        print(
            f"base model (tiny, default flags): {sum(before)}/{len(base)} base questions "
            f"answered; trained in {base_seconds:.0f} s"
        )
        print(f"\n{'variant':20}{'old kept':>12}{'new learned':>14}{'train time':>12}")
        for index, name in enumerate(names):
            output = work / f"continued-{index}"
            seconds = train(str(work / "base"), output, new, **VARIANTS[name])
            after = answered(output, base + new)
            kept = sum(a and b for a, b in zip(after, before))
            learned = sum(after[len(base) :])
            print(
                f"{name:20}{f'{kept}/{sum(before)}':>7} {kept / max(1, sum(before)):4.0%}"
                f"{f'{learned}/{len(new)}':>9} {learned / len(new):4.0%}"
                f"{seconds / base_seconds:>10.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
