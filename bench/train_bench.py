"""Training throughput of mtnsails' trainer vs the original approach, on a distilgpt2-sized model.

    python bench/train_bench.py [--steps 10] [--batch-size 4]

Model: GPT2Config(n_layer=6, n_embd=768, n_head=12, vocab_size=50257), random weights (no
download); tokenizer: the embedded byte-level BPE trained on the data (ids fit the 50257 vocab).
Data: the packaged example_conversations.json. Each approach runs in its own process (so each
peak RSS is its own) for one warm-up step plus --steps timed optimizer steps of AdamW:

- original: every example padded to 256 tokens, labels = input ids with padding -100 (the stock
  DataCollatorForLanguageModeling with pad = eos, which also unlearns EOS), random order;
- mtnsails: prompt tokens -100, EOS after each answer learned, batches padded to their longest
  example and grouped by length (transformers' LengthGroupedSampler, what group_by_length uses).

Figures: trained tokens/s = non-padding tokens fed per second; useful tokens/s = answer tokens
that carry a loss per second (the answer's text tokens, plus the EOS that ends it where it is
learned); peak RSS from getrusage. Prints both and the ratio of useful tokens/s.

    nice -n 10 python bench/train_bench.py --memory [--shapes qwen2.5-0.5b smollm2-360m qwen2.5-1.5b]
        [--modes full lora] [--batch-size 2] [--seq-len 128] [--steps 2] [--gradient-checkpointing]

--memory: full fine-tuning vs LoRA r=16 (alpha 32, dropout 0.05, all linear layers: what
`train --lora-r 16` trains, through mtnsails.train.lora) on models of a real model's shape with
random weights (no download): Qwen2.5-0.5B (Qwen2Config, 494M parameters), SmolLM2-360M
(LlamaConfig, 362M), Qwen2.5-1.5B (Qwen2Config, 1.54B). Each (shape, mode) runs in its own
process: the model in fp32, one warm-up step plus --steps timed AdamW steps (fused, on the
trainable parameters, as Trainer) on a fixed batch of random token ids, every token learned.
Figures: seconds per step and peak RSS. Before a process starts, what its weights, gradients
and AdamW moments take (4 + 4 + 8 bytes per trained parameter, 4 per frozen one) plus what the
smaller shapes measured beyond that is compared with MemAvailable: a run that cannot fit is
not started (the shared machine is never driven out of memory) and the table says why.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

ORIGINAL_LENGTH = 256


def batches(approach: str, tokenizer, batch_size: int, steps: int, seed: int = 0):
    """Yield (batch, useful token count) for `steps` batches of `approach`."""
    from transformers import DataCollatorForLanguageModeling
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from mtnsails.data.handler import ConversationDataHandler
    from mtnsails.train.collator import PaddingCollator, encode_segments
    from mtnsails.train.trainer import packaged_example_data

    handler = ConversationDataHandler.from_file(packaged_example_data())
    rng = random.Random(seed)
    if approach == "original":
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        texts = handler.format_for_training()
        answers = [
            len(tokenizer(" " + c["output"], add_special_tokens=False)["input_ids"]) for c in handler.conversations
        ]  # the last answer's tokens (it ends the text)
        while True:
            order = list(range(len(texts)))
            rng.shuffle(order)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                chosen = order[start : start + batch_size]
                encoded = tokenizer(
                    [texts[i] for i in chosen], padding="max_length", truncation=True, max_length=ORIGINAL_LENGTH
                )
                batch = collator(
                    [
                        {"input_ids": ids, "attention_mask": mask}
                        for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])
                    ]
                )
                yield batch, sum(answers[i] for i in chosen)
                steps -= 1
                if steps == 0:
                    return
    examples = [encode_segments(tokenizer, segments, 256) for segments in handler.training_segments()]
    collator = PaddingCollator(tokenizer.pad_token_id)
    import torch

    generator = torch.Generator().manual_seed(seed)
    while True:
        sampler = LengthGroupedSampler(batch_size, lengths=[e["length"] for e in examples], generator=generator)
        order = list(sampler)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            chosen = [examples[i] for i in order[start : start + batch_size]]
            batch = collator(chosen)
            yield batch, int((batch["labels"] != -100).sum())
            steps -= 1
            if steps == 0:
                return


def run(approach: str, steps: int, batch_size: int) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from mtnsails.data.handler import ConversationDataHandler
    from mtnsails.train.models import build_embedded_tokenizer
    from mtnsails.train.trainer import packaged_example_data

    texts = ConversationDataHandler.from_file(packaged_example_data()).format_for_training()
    tokenizer = build_embedded_tokenizer(texts)
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=6,
        n_embd=768,
        n_head=12,
        vocab_size=50257,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    model.train()
    # what Trainer uses here (adamw_torch_fused, no weight decay), the same for both approaches
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0, fused=True)
    seconds = fed = useful = 0.0
    for index, (batch, useful_tokens) in enumerate(batches(approach, tokenizer, batch_size, steps + 1)):
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index:  # the first step warms up allocators and kernels
            seconds += time.perf_counter() - start
            fed += int(batch["attention_mask"].sum())
            useful += useful_tokens
    return {
        "approach": approach,
        "steps": steps,
        "seconds": seconds,
        "trained_tokens_per_s": fed / seconds,
        "useful_tokens_per_s": useful / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# -- --memory: full fine-tuning vs LoRA on real model shapes ---------------------------------------

# (config class, its arguments): the shapes of the published configs, weights random
SHAPES = {
    "qwen2.5-0.5b": (
        "Qwen2Config",
        dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
             num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
             rope_theta=1000000.0),
    ),
    "smollm2-360m": (
        "LlamaConfig",
        dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
             num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
             rope_theta=100000.0),
    ),
    "qwen2.5-1.5b": (
        "Qwen2Config",
        dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
             num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
             rope_theta=1000000.0),
    ),
}  # fmt: skip
GIB = 1 << 30


def shape_model(shape: str):
    """A random-weight model of `shape` in fp32."""
    import torch
    import transformers

    class_name, arguments = SHAPES[shape]
    config = getattr(transformers, class_name)(**arguments)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def parameter_count(shape: str) -> int:
    """Parameters of `shape`, counted on the meta device (no memory)."""
    import torch

    with torch.device("meta"):
        model = shape_model(shape)
    return sum(p.numel() for p in model.parameters())


def state_bytes(parameters: int, trainable: int) -> int:
    """Weights (4 bytes each) plus, per trained parameter, its gradient (4) and AdamW's two moments (8)."""
    return 4 * parameters + 12 * trainable


def lora_trainable(shape: str, r: int = 16) -> int:
    """Adapter parameters of LoRA r on every linear layer but the head: r x (in + out) each."""
    _, a = SHAPES[shape]
    head = a["hidden_size"] // a["num_attention_heads"]
    kv = a["num_key_value_heads"] * head
    h, i = a["hidden_size"], a["intermediate_size"]
    per_layer = (h + h) + (h + kv) + (h + kv) + (h + h) + 2 * (h + i) + (i + h)
    return r * per_layer * a["num_hidden_layers"]


def memory_run(shape: str, mode: str, batch_size: int, seq_len: int, steps: int, checkpointing: bool) -> dict:
    """Child process: time `steps` AdamW steps of `mode` on `shape`; seconds/step, peak RSS."""
    import torch

    from mtnsails.train.lora import LoraSettings, add_adapters, parameter_counts

    start = time.perf_counter()
    model = shape_model(shape)
    _, parameters = parameter_counts(model)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if mode == "lora":
        model = add_adapters(model, LoraSettings(r=16, alpha=32.0, dropout=0.05, targets="all-linear"))
    model.train()
    trainable, _ = parameter_counts(model)
    built = time.perf_counter() - start
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0, fused=True
    )
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=generator)
    seconds = 0.0
    for step in range(steps + 1):
        begin = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step warms up allocators and kernels
            seconds += time.perf_counter() - begin
    return {
        "shape": shape,
        "mode": mode,
        "gradient_checkpointing": checkpointing,
        "parameters": parameters,  # the model's own, adapters not counted
        "trainable": trainable,
        "build_s": round(built, 1),
        "s_per_step": seconds / steps,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
        "loss": float(loss),
    }


def meminfo_gib(key: str) -> float:
    """A /proc/meminfo figure ("MemTotal", "MemAvailable") in GiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / GIB
    return math.nan


def memory_main(args) -> None:
    """Run each (shape, mode) that fits in its own process; print the table."""
    rows, overheads = [], []
    for shape in args.shapes:
        parameters = parameter_count(shape)
        for mode in args.modes:
            trainable = parameters if mode == "full" else lora_trainable(shape)
            static = state_bytes(parameters, trainable)
            # what the measured runs needed beyond their static state (activations, logits, runtime)
            extra = max(overheads, default=2 * GIB)
            needed, free = static + extra, meminfo_gib("MemAvailable") * GIB
            row = {"shape": shape, "mode": mode, "parameters": parameters, "trainable": trainable,
                   "static_gib": static / GIB, "needed_gib": needed / GIB, "available_gib": free / GIB}  # fmt: skip
            if needed > free - GIB:  # a GiB left for the others on this machine
                row["skipped"] = (
                    f"not run: needs about {needed / GIB:.1f} GiB ({static / GIB:.1f} GiB weights, "
                    f"gradients and AdamW state + {extra / GIB:.1f} GiB measured beyond them), "
                    f"{free / GIB:.1f} GiB available of {meminfo_gib('MemTotal'):.1f} GiB"
                )
                print(f"{shape} {mode}: {row['skipped']}", flush=True)
                rows.append(row)
                continue
            command = [sys.executable, __file__, "--memory-child", shape, mode, "--batch-size", str(args.batch_size),
                       "--seq-len", str(args.seq_len), "--steps", str(args.steps)]  # fmt: skip
            if args.gradient_checkpointing:
                command.append("--gradient-checkpointing")
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            row.update(json.loads(output.strip().splitlines()[-1]))
            overheads.append(row["peak_rss_gib"] * GIB - static)
            print(f"{shape} {mode}: {row['s_per_step']:.2f} s/step, peak RSS {row['peak_rss_gib']:.2f} GiB", flush=True)
            rows.append(row)
    print(
        f"\nbatch {args.batch_size} x {args.seq_len} tokens, {args.steps} timed AdamW steps after one warm-up, fp32, "
        f"{os.cpu_count()} cores, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}"
    )
    print(f"{'shape':<13} {'params':>7} {'mode':<5} {'trained':>8} {'state GiB':>9} {'s/step':>7} {'peak RSS GiB':>12}")
    for row in rows:
        measured = (
            f"{row['s_per_step']:>7.2f} {row['peak_rss_gib']:>12.2f}"
            if "s_per_step" in row
            else "  (not run: does not fit)"
        )
        print(
            f"{row['shape']:<13} {row['parameters'] / 1e6:>6.0f}M {row['mode']:<5} {row['trainable'] / 1e6:>7.1f}M "
            f"{row['static_gib']:>9.2f} {measured}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="timed steps per approach (default: 10; --memory: 2)")
    parser.add_argument("--batch-size", type=int, help="(default: 4; --memory: 2)")
    parser.add_argument("--approach", choices=("original", "mtnsails"), help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help="full fine-tuning vs LoRA on real model shapes")
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--modes", nargs="+", choices=("full", "lora"), default=["full", "lora"])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--json", help="--memory: write the rows here")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    memory = args.memory or args.memory_child
    args.batch_size, args.steps = args.batch_size or (2 if memory else 4), args.steps or (2 if memory else 10)
    if args.memory_child:  # child process: one shape and mode, one JSON line
        shape, mode = args.memory_child
        print(
            json.dumps(memory_run(shape, mode, args.batch_size, args.seq_len, args.steps, args.gradient_checkpointing))
        )
        return
    if args.memory:
        memory_main(args)
        return
    if args.approach:  # child process: one approach, one JSON line
        print(json.dumps(run(args.approach, args.steps, args.batch_size)))
        return
    results = {}
    for approach in ("original", "mtnsails"):
        output = subprocess.run(
            [
                sys.executable,
                __file__,
                "--approach",
                approach,
                "--steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        results[approach] = json.loads(output.strip().splitlines()[-1])
    print(
        f"distilgpt2-sized GPT-2 (81.9M params, random weights), batch {args.batch_size}, "
        f"{args.steps} timed AdamW steps each, {os.cpu_count()} cores"
    )
    print(f"{'approach':<10} {'s/step':>7} {'trained tok/s':>14} {'useful tok/s':>13} {'peak RSS MB':>12}")
    for name, result in results.items():
        print(
            f"{name:<10} {result['seconds'] / result['steps']:>7.2f} "
            f"{result['trained_tokens_per_s']:>14.0f} {result['useful_tokens_per_s']:>13.0f} "
            f"{result['peak_rss_mb']:>12.0f}"
        )
    ratio = results["mtnsails"]["useful_tokens_per_s"] / results["original"]["useful_tokens_per_s"]
    print(f"useful tokens/s ratio mtnsails/original: {ratio:.1f}x (target >= 3x)")


if __name__ == "__main__":
    main()
