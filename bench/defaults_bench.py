"""Which training defaults keep a user's answers: the held-out split, the kept checkpoint, the
learning rate per mode (full fine-tuning vs LoRA).

    nice -n 10 python bench/defaults_bench.py [--models tiny qwen2-random qwen2-pretrained]
        [--runs split-best split-last no-split] [--lora-rates 2e-4 5e-4 1e-3] [--json out.json]

Data: bench/data/heldout_qa.json (40 houseplant pairs) to train on, heldout_reworded.json (20
rewordings of them by another person). Models, all built here (no download):

- tiny: the embedded model (4 layers, 256 wide GPT-2, random start), its defaults;
- qwen2-random: a Qwen2-shaped model (Qwen2Config: RMSNorm, SwiGLU, rotary, grouped-query
  attention, tied embeddings, as Qwen2.5-0.5B; 4 layers, 256 wide) with random weights and the
  embedded byte-level BPE tokenizer, a local model directory, as a hub model is one;
- qwen2-pretrained: qwen2-random first trained (40 epochs at 1e-3) on the packaged corpus, the
  58 packaged examples and the 40 bicycle pairs of bench/data/tuning_qa.json as conversations,
  and the 40 houseplant answers as plain text without their questions; a plain model directory
  afterwards. It starts from weights that know the template, the words and the answers' text,
  as a pretrained model has read about the world, but not which question each answer belongs to.

Runs (the same epochs and learning rate within a model):

- split-best: --eval-split 0.1, the checkpoint with the best eval loss kept (what train did for
  a non-tiny model with >= 20 conversations; here through --early-stopping-patience = epochs,
  which keeps the best and never stops);
- split-last: --eval-split 0.1, the last checkpoint kept;
- no-split: --eval-split 0.

Each kept model answers every trained question and every rewording greedily, alone, in the
trained template (PyTorch generate, up to 64 new tokens). Right = the reference's first
sentence appears in the answer (`first_sentence_match`, as bench/answer_bench.py). Reworded
questions are asked as typed and as chat asks them (the closest trained question when
`QuestionMatcher` finds one, chat's default). Prints one row per run; --json writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The models are small: on a CPU that other jobs share, a second thread only waits (as the tests)
os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

DATA = REPO_ROOT / "bench" / "data"
RUNS = ("split-best", "split-last", "no-split")
MODELS = ("tiny", "qwen2-random", "qwen2-pretrained")
# Epochs and learning rate of the full fine-tuning runs: the embedded model's defaults for the
# two models that start from random weights; for the pretrained-shaped one, what teaches it the
# 40 answers (its own sweep: --rates).
FULL = {"tiny": (40, 1e-3), "qwen2-random": (40, 1e-3), "qwen2-pretrained": (20, 2e-4)}


def load(name: str) -> list[dict]:
    """The conversations of bench/data/`name` (or of the path `name`)."""
    from mtnsails.data.handler import ConversationDataHandler

    return ConversationDataHandler.from_file(DATA / name).conversations


def qwen2_directory(path: Path, texts: list[str]) -> Path:
    """A random-weight Qwen2-shaped model with the embedded tokenizer, saved as a model directory."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mtnsails.train.models import build_embedded_tokenizer

    tokenizer = build_embedded_tokenizer(texts)
    eos = tokenizer.eos_token_id
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def train(model: str, output: Path, data: list[dict], **settings) -> tuple[dict, float]:
    """Train `model` on `data` into `output` with TrainingConfig `settings`; (mtnsails.json, s)."""
    from mtnsails.train.config import TrainingConfig
    from mtnsails.train.trainer import LLMTrainer

    config = TrainingConfig(model_name=model, output_dir=str(output), quiet=True, save_steps=10_000, **settings)
    start = time.perf_counter()
    trainer = LLMTrainer(config=config)
    trainer.train_conversations(data)
    seconds = time.perf_counter() - start
    trainer.save_model()
    return json.loads((output / "mtnsails.json").read_text()), seconds


def pretrained(workdir: Path, texts: list[str]) -> Path:
    """qwen2-random trained first on text, left as a plain model directory: the packaged corpus,
    the packaged examples and the bicycle pairs as conversations, and the houseplant answers as
    plain text (no questions): it has read what it is then asked about, as a pretrained model has
    read about the world, and knows the words, but not which question each answer belongs to."""
    from mtnsails.train.config import TrainingConfig
    from mtnsails.train.models import packaged_corpus
    from mtnsails.train.trainer import LLMTrainer

    base = qwen2_directory(workdir / "qwen2-base", texts)
    pairs = load("tuning_qa.json") + load(str(REPO_ROOT / "example_conversations.json"))
    documents = packaged_corpus() + [f"User: {p['input']}\nAssistant: {p['output']}" for p in pairs]
    documents += [pair["output"] for pair in load("heldout_qa.json")]
    path = workdir / "qwen2-pretrained"
    config = TrainingConfig(model_name=str(base), output_dir=str(path), quiet=True, eval_split=0.0, seed=0)
    trainer = LLMTrainer(config=config)
    trainer.train(documents, num_epochs=40, learning_rate=1e-3, save_steps=10_000)
    trainer.save_model()
    for name in ("mtnsails.json", "training_data.jsonl", "loss.png"):
        (path / name).unlink(missing_ok=True)  # a plain model directory, not an mtnsails model
    return path


def answer(model, tokenizer, question: str) -> str:
    import torch

    from mtnsails.model_dir.template import ChatTemplate
    from mtnsails.train.collator import encode_segments

    segments = list(ChatTemplate().segments([(question, None)]))
    ids = encode_segments(tokenizer, segments, max_length=512)["input_ids"]
    with torch.no_grad():
        output = model.generate(
            torch.tensor([ids]), max_new_tokens=64, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    return tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True).strip()


def score(path: Path, pairs: list[dict], reworded: list[dict], held_out: list[int]) -> dict:
    """Right answers of the kept model: trained questions (held-out ones apart), rewordings."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtnsails.inference.question_matcher import QuestionMatcher
    from mtnsails.loop.evaluator import first_sentence_match

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    right = [first_sentence_match(answer(model, tokenizer, p["input"]), p["output"]) for p in pairs]
    matcher = QuestionMatcher([p["input"] for p in pairs], answers=[p["output"] for p in pairs])
    typed = matched = 0
    for pair in reworded:
        found = matcher.match(pair["input"])
        typed_answer = answer(model, tokenizer, pair["input"])
        typed += first_sentence_match(typed_answer, pair["output"])
        asked = answer(model, tokenizer, found.question) if found else typed_answer
        matched += first_sentence_match(asked, pair["output"])
    return {
        "trained": sum(right),
        "held_out_right": sum(right[i] for i in held_out),
        "held_out": len(held_out),
        "reworded_typed": typed,
        "reworded_chat": matched,
    }


def kept_epoch(meta: dict) -> str:
    """The epoch the kept model is from (under split-best: the one with the best eval loss)."""
    evaluations = [entry for entry in meta["loss_history"] if "eval_loss" in entry]
    if meta["settings"]["early_stopping_patience"] and evaluations:
        best = min(evaluations, key=lambda entry: entry["eval_loss"])
        return f"{best['epoch']:.0f} (eval loss {best['eval_loss']:.2f}, last {evaluations[-1]['eval_loss']:.2f})"
    return f"{meta['settings']['num_epochs']} (last)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--runs", nargs="*", choices=RUNS, default=list(RUNS))
    parser.add_argument(
        "--rates", nargs="*", type=float, default=[], help="full fine-tuning rates to try too (no split)"
    )
    parser.add_argument("--lora-rates", nargs="*", type=float, default=[], help="LoRA r=16 rates to try (no split)")
    parser.add_argument("--epochs", type=int, help="override the epochs of every run")
    parser.add_argument("--warmup", type=float, default=0.0, help="--warmup-ratio of every run")
    parser.add_argument("--models-dir", help="keep the built models here and reuse them in later runs")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()

    pairs, reworded = load("heldout_qa.json"), load("heldout_reworded.json")
    texts = [f"{p['input']} {p['output']}" for p in pairs + load("tuning_qa.json")]
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="defaults_bench_"))
    try:
        names = {"tiny": "tiny"}
        built = Path(args.models_dir) if args.models_dir else workdir
        if "qwen2-random" in args.models:
            path = built / "qwen2-random"
            names["qwen2-random"] = str(path if path.is_dir() else qwen2_directory(path, texts))
        if "qwen2-pretrained" in args.models:
            path = built / "qwen2-pretrained"
            names["qwen2-pretrained"] = str(path if path.is_dir() else pretrained(built, texts))
        for model in args.models:
            epochs, rate = FULL[model]
            epochs = args.epochs or epochs
            runs = [(run, "full", rate) for run in args.runs]
            runs += [("no-split", "full", r) for r in args.rates]
            runs += [("no-split", "LoRA r=16", r) for r in args.lora_rates]
            for run, mode, learning_rate in runs:
                settings = {
                    "num_epochs": epochs,
                    "learning_rate": learning_rate,
                    "warmup_ratio": args.warmup,
                    "seed": 0,
                }
                settings["eval_split"] = 0.0 if run == "no-split" else 0.1
                if run == "split-best":
                    settings["early_stopping_patience"] = epochs  # keeps the best, never stops
                if mode != "full":
                    settings["lora_r"] = 16
                output = workdir / f"{model}-{run}-{mode}-{learning_rate}".replace(" ", "").replace("=", "")
                meta, seconds = train(names[model], output, pairs, **settings)
                row = {
                    "model": model,
                    "run": run,
                    "mode": mode,
                    "epochs": epochs,
                    "learning_rate": learning_rate,
                    "warmup_ratio": args.warmup,
                    "kept_epoch": kept_epoch(meta),
                    "train_loss": meta["train_loss"],
                    "seconds": round(seconds, 1),
                    **score(output, pairs, reworded, meta["held_out"]),
                }
                rows.append(row)
                print(
                    f"{model:<17} {run:<10} {mode:<9} lr {learning_rate:<6g} {epochs:>3} ep, warm-up {args.warmup:g}: "
                    f"trained {row['trained']}/{len(pairs)} (held out {row['held_out_right']}/{row['held_out']}), "
                    f"reworded {row['reworded_typed']}/{len(reworded)} typed, {row['reworded_chat']}/{len(reworded)} "
                    f"as chat asks; kept epoch {row['kept_epoch']}; train loss {row['train_loss']:.3f}; "
                    f"{seconds:.0f} s",
                    flush=True,
                )
                shutil.rmtree(output, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
