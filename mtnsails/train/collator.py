"""From conversation segments to training batches: token ids with labels, padded per batch.

Training builds token ids exactly as chat does: each segment is tokenized on its own and every
answer is followed by EOS. Only the answers (and their EOS) are learned.
"""

from __future__ import annotations

from mtnsails.model_dir.template import Segment, segment_ids

# Characters a token spans at most (byte-level BPE tokens are a word or a run of symbols). Of a
# segment the window keeps only tokens from its start or its end, so its first and last
# `max_length * MAX_TOKEN_CHARS` characters hold all it can keep: the middle of a longer text is
# dropped before tokenizing, and a 50 MB answer costs megabytes, not gigabytes.
MAX_TOKEN_CHARS = 64


def encode_segments(tokenizer, segments: list[Segment], max_length: int) -> dict:
    """Token ids and labels of one conversation, built segment by segment as chat builds them.

    Prompt tokens get label -100; each response is followed by EOS, which keeps its label
    (a response that is not `learned` is context: -100, its EOS too).
    Longer than `max_length`: the context is cut from the left. `truncated` is 0 (fits),
    1 (context cut) or 2 (even the last prompt + answer did not fit: the answer's end was cut).
    """
    input_ids: list[int] = []
    labels: list[int] = []
    last_prompt_start = 0
    bound = max_length * MAX_TOKEN_CHARS

    def encode(text: str) -> list[int]:
        if len(text) > 2 * bound:
            text = text[:bound] + text[-bound:]
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    for segment, ids in segment_ids(encode, segments, tokenizer.eos_token_id):
        if segment.is_response and segment.learned:
            labels += ids
        else:
            if not segment.is_response:
                last_prompt_start = len(input_ids)
            labels += [-100] * len(ids)
        input_ids += ids
    truncated = 0
    if len(input_ids) > max_length:
        start = len(input_ids) - max_length
        truncated = 1
        if start > last_prompt_start:
            # Keep the question the answer belongs to (at most half the window) and cut the answer.
            prompt_length = _last_prompt_length(labels, last_prompt_start)
            start = last_prompt_start + prompt_length - min(prompt_length, max_length // 2)
            input_ids = input_ids[start : start + max_length]
            labels = labels[start : start + max_length]
            truncated = 2
        else:
            input_ids, labels = input_ids[start:], labels[start:]
    return {"input_ids": input_ids, "labels": labels, "length": len(input_ids), "truncated": truncated}


def _last_prompt_length(labels: list[int], start: int) -> int:
    length = 0
    while start + length < len(labels) and labels[start + length] == -100:
        length += 1
    return length


class PaddingCollator:
    """Pads a batch to its own longest example (right side); padding is masked and unlearned."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        """Tensors `input_ids`, `attention_mask` and `labels` of shape (batch, longest)."""
        import torch

        longest = max(len(feature["input_ids"]) for feature in features)
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for feature in features:
            padding = longest - len(feature["input_ids"])
            batch["input_ids"].append(list(feature["input_ids"]) + [self.pad_token_id] * padding)
            batch["attention_mask"].append([1] * len(feature["input_ids"]) + [0] * padding)
            batch["labels"].append(list(feature["labels"]) + [-100] * padding)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
