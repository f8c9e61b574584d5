"""`GenerationConfig`: how answers are sampled. A module of its own so the CLI can declare the
flags without importing onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass

from mtnsails.core.errors import MtnsailsError
from mtnsails.core.settings import MAX_SEED, flag_of, non_finite, option_fields, setting


@dataclass
class GenerationConfig:
    """How answers are generated. Defaults are the original `generate_response` defaults."""

    # None: chat derives the limit from the answer lengths the model was trained on
    # (`mtnsails.model_dir.answer_lengths.token_limit`), 50 for a model without that record.
    max_new_tokens: int | None = setting(
        None,
        "new tokens per answer at most (default: the longest trained answer plus a margin, "
        "50 for models without that record)",
        flag="--max-tokens",
    )
    temperature: float = setting(0.7, "sampling temperature; 0 = greedy")
    # transformers' default top_k is 50 too
    top_k: int = setting(50, "sample among the k likeliest tokens; 0 = all")
    top_p: float = setting(0.9, "nucleus sampling probability mass")
    # 1.2 is the CTRL paper's value
    repetition_penalty: float = setting(1.2, "discourage tokens already in the conversation; 1 = off")
    no_repeat_ngram_size: int = setting(0, "never repeat an n-gram of this many tokens; 0 = off")
    do_sample: bool = True  # False = greedy whatever the temperature
    seed: int | None = setting(None, "random seed for reproducible sampling (default: none)")

    @property
    def greedy(self) -> bool:
        """True when every step takes the most likely token (no sampling)."""
        return not self.do_sample or self.temperature <= 0

    def validate(self) -> None:
        """Raise MtnsailsError naming the first setting out of range (its flag and field)."""
        bad = non_finite(self)
        if bad is not None:
            raise MtnsailsError(f"{setting_label(bad.name)} = {getattr(self, bad.name)} must be a finite number")
        checks = (
            ("max_new_tokens", self.max_new_tokens is None or self.max_new_tokens >= 1, "at least 1"),
            ("temperature", self.temperature >= 0, "0 (greedy) or more"),
            ("top_k", self.top_k >= 0, "0 (off) or more"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "above 0"),
            ("no_repeat_ngram_size", self.no_repeat_ngram_size >= 0, "0 (off) or more"),
            ("seed", self.seed is None or 0 <= self.seed <= MAX_SEED, f"from 0 to {MAX_SEED}"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise MtnsailsError(f"{setting_label(name)} = {getattr(self, name)} must be {expected}")


# The `chat` flag that sets each setting, so an error names what the user typed.
CHAT_FLAGS = {
    **{f.name: flag_of(f) for f in option_fields(GenerationConfig)},
    "threads": "--threads",
    "max_length": "--max-length",
}


def setting_label(name: str) -> str:
    """How errors name a setting: its `chat` flag and its Python name, e.g. "--max-tokens (max_new_tokens)"."""
    return f"{CHAT_FLAGS[name]} ({name})" if name in CHAT_FLAGS else name
