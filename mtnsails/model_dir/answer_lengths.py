"""How long the trained answers were, and the token limit chat derives from that.

Training records the answer lengths it saw (tokens, EOS or end-of-turn not counted) in the model's
mtnsails.json as `answer_tokens` ({"count", "max", "p95", "mean"}); `convert` copies the record
into the ONNX directory. When the user sets no limit, chat allows the longest trained answer plus
a margin, so a model trained on long answers is not cut at 50 tokens and one trained on short
answers does not ramble on for 50.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable

IGNORED_LABEL = -100  # the label of prompt tokens (not learned)
DEFAULT_MAX_NEW_TOKENS = 50  # the limit for models that carry no length record


def answer_lengths(labels: Iterable[int], eos_token_id: int | Collection[int] | None) -> list[int]:
    """Lengths of the answers in one example's labels: each run of learned labels is an answer
    (followed by its EOS, or the chat template's end-of-turn token: any id of `eos_token_id`,
    which is not counted)."""
    ends = set(eos_token_id) if isinstance(eos_token_id, Collection) else {eos_token_id}
    lengths, run = [], []
    for label in [*labels, IGNORED_LABEL]:
        if label != IGNORED_LABEL:
            run.append(label)
        elif run:
            lengths.append(len(run) - (run[-1] in ends))
            run = []
    return lengths


def length_record(lengths: list[int]) -> dict | None:
    """{"count", "max", "p95", "mean"} of answer lengths in tokens (None for no answers)."""
    if not lengths:
        return None
    ordered = sorted(lengths)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]  # nearest-rank percentile
    return {"count": len(ordered), "max": ordered[-1], "p95": p95, "mean": round(sum(ordered) / len(ordered), 2)}


def token_limit(record: dict | None, context_length: int) -> int:
    """New tokens chat allows per answer: the longest trained answer, plus a quarter of it (at
    least 8 tokens) and one for EOS, at most three quarters of the context (the rest is left for
    the prompt); `DEFAULT_MAX_NEW_TOKENS` without a record."""
    if not record:
        return DEFAULT_MAX_NEW_TOKENS
    longest = record["max"]
    return max(1, min(longest + max(8, longest // 4) + 1, context_length * 3 // 4))
