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
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per approach")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--approach", choices=("original", "mtnsails"), help=argparse.SUPPRESS)
    args = parser.parse_args()
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
