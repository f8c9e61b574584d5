"""encode_segments: a text of any size costs tokens for the window only."""

from __future__ import annotations

from transformers import AutoTokenizer

from mtnsails.model_dir.template import ChatTemplate
from mtnsails.train import collator
from mtnsails.train.collator import encode_segments


class RecordingTokenizer:
    """The real tokenizer, noting the length of every text it is given."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.lengths = tokenizer, []
        self.eos_token_id = tokenizer.eos_token_id

    def __call__(self, text: str, **kwargs):
        self.lengths.append(len(text))
        return self.tokenizer(text, **kwargs)


def test_a_huge_answer_is_cut_before_tokenizing_to_what_the_window_can_keep(untrained_tiny_model_dir, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(untrained_tiny_model_dir)
    answer = "Pack a warm layer and a rain shell. " * 8_000  # 290 kB, far past the bound
    segments = list(
        ChatTemplate().segments([("What should I bring?", answer + "The end."), ("And food?", "Bring snacks.")])
    )
    recording = RecordingTokenizer(tokenizer)
    item = encode_segments(recording, segments, max_length=64)
    assert max(recording.lengths) <= 2 * 64 * collator.MAX_TOKEN_CHARS
    monkeypatch.setattr(collator, "MAX_TOKEN_CHARS", 10**9)  # no cut: the reference
    assert item == encode_segments(tokenizer, segments, max_length=64)
