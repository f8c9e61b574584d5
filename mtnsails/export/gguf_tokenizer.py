"""The tokenizer as llama.cpp reads it from a GGUF file: tokens, their types, merges, the
pre-tokenizer's name and the special token ids, taken from tokenizer.json (no transformers);
SentencePiece tokenizers take their pieces and scores from tokenizer.model (gguf_sentencepiece).

llama.cpp re-implements each tokenizer it knows in C++ and picks the one named by
`tokenizer.ggml.pre`; its own converter guesses that name from a hash of token ids, which a
tokenizer trained here (the embedded `tiny` one) never matches. This module reads what the
tokenizer actually does instead: its pre-tokenizer steps, compared with the steps of each
llama.cpp pre-tokenizer written below, so a tokenizer whose splitting llama.cpp does not share
is refused rather than written to tokenize differently.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from mtnsails.core.errors import MtnsailsError
from mtnsails.core.files import read_json_object
from mtnsails.export.gguf_sentencepiece import adds_space_prefix, sentencepiece_tokens

# The regexes of tokenizer.json files that llama.cpp's pre-tokenizers re-implement (its comments
# quote them as "original regex from tokenizer.json").
# The two differ only in how digits group: one at a time (Qwen2) or up to three (Llama 3).
_BPE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|DIGITS| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = _BPE_REGEX.replace("DIGITS", r"\p{N}")
LLAMA3_REGEX = _BPE_REGEX.replace("DIGITS", r"\p{N}{1,3}")
# llama.cpp pre-tokenizer name -> the steps of a tokenizer.json pre-tokenizer that splits the same
# way, and whether its BPE model ignores merges for whole words in the vocabulary (Llama 3 does).
PRE_TOKENIZERS: dict[str, tuple[tuple, bool]] = {
    "gpt-2": ((("ByteLevel", True),), False),  # GPT-2, distilgpt2, the embedded tiny model
    "smollm": ((("Digits", True), ("ByteLevel", True)), False),  # SmolLM / SmolLM2
    "qwen2": ((("Split", QWEN2_REGEX), ("ByteLevel", False)), False),  # Qwen2, Qwen2.5, Qwen3
    "llama-bpe": ((("Split", LLAMA3_REGEX), ("ByteLevel", False)), True),  # Llama 3
}
# Normalizers that change no text llama.cpp tokenizes in practice (Qwen2 declares NFC).
HARMLESS_NORMALIZERS = (None, "NFC")


def pre_tokenizer_steps(pre_tokenizer: dict | None) -> tuple:
    """The splitting steps of a tokenizer.json pre-tokenizer, as `PRE_TOKENIZERS` lists them:
    ("ByteLevel", uses GPT-2's regex), ("Digits", one digit apart), ("Split", regex)."""
    if not pre_tokenizer:
        return ()
    kind = pre_tokenizer.get("type")
    if kind == "Sequence":
        return tuple(step for part in pre_tokenizer.get("pretokenizers", []) for step in pre_tokenizer_steps(part))
    if kind == "ByteLevel":
        if pre_tokenizer.get("add_prefix_space"):
            return (("ByteLevel+prefix-space",),)  # llama.cpp adds no space before a BPE text
        return (("ByteLevel", bool(pre_tokenizer.get("use_regex", True))),)
    if kind == "Digits":
        return (("Digits", bool(pre_tokenizer.get("individual_digits"))),)
    if kind == "Split":
        pattern = pre_tokenizer.get("pattern") or {}
        if pre_tokenizer.get("invert") or pre_tokenizer.get("behavior") != "Isolated" or "Regex" not in pattern:
            return (("Split", json.dumps(pre_tokenizer, sort_keys=True)),)
        return (("Split", pattern["Regex"]),)
    return ((kind,),)


def pre_tokenizer_name(tokenizer: dict) -> str:
    """The llama.cpp pre-tokenizer that splits text as this tokenizer.json does; MtnsailsError
    when none does."""
    steps = pre_tokenizer_steps(tokenizer.get("pre_tokenizer"))
    ignores_merges = bool((tokenizer.get("model") or {}).get("ignore_merges"))
    for name, (known_steps, known_ignore) in PRE_TOKENIZERS.items():
        if steps == known_steps and ignores_merges == known_ignore:
            return name
    shown = " + ".join(step[0] for step in steps) or "none"
    raise MtnsailsError(
        f"cannot write the tokenizer as GGUF: its pre-tokenizer ({shown}) splits text unlike every "
        f"llama.cpp pre-tokenizer this export knows ({', '.join(PRE_TOKENIZERS)})"
    )


@dataclass
class Vocabulary:
    """What `write` puts into the GGUF file's tokenizer.ggml.* keys."""

    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int] = field(default_factory=dict)  # "bos", "eos", "unk", "pad"
    add_bos: bool = False
    model: str = "gpt2"  # llama.cpp's names: "gpt2" byte-level BPE, "llama" SentencePiece
    scores: list[float] | None = None  # SentencePiece: the merge order
    add_space_prefix: bool | None = None  # SentencePiece: "▁" before a text

    def token_id(self, text: str) -> int | None:
        """The id of a token by its text (None when the vocabulary has none)."""
        try:
            return self.tokens.index(text)
        except ValueError:
            return None

    def write(self, writer: gguf.GGUFWriter, eot_id: int | None = None) -> None:
        """Add the tokenizer keys; `eot_id` is the token that ends a chat turn."""
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges:
            writer.add_token_merges(self.merges)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
            writer.add_remove_extra_whitespaces(False)  # tokenizer.json, which training used, keeps them
        adders = {
            "bos": writer.add_bos_token_id,
            "eos": writer.add_eos_token_id,
            "unk": writer.add_unk_token_id,
            "pad": writer.add_pad_token_id,
        }
        for role, token in self.special_ids.items():
            adders[role](token)
        if eot_id is not None:
            writer.add_eot_token_id(eot_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(False)


def _token_text(value: object) -> str | None:
    """A tokenizer_config token entry: a string, or an AddedToken dict with "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _config_id(config: dict, key: str) -> int | None:
    value = config.get(key)
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_vocabulary(model_dir: str | os.PathLike, n_vocab: int) -> Vocabulary:
    """The vocabulary of `model_dir`'s tokenizer.json, padded to the embedding's `n_vocab` rows.

    Tokens are the byte-level strings of the BPE vocabulary plus the added tokens (special ones
    CONTROL, others USER_DEFINED); ids the model has rows for but the tokenizer never produces
    become "[PAD<id>]" UNUSED tokens, as llama.cpp's converter writes them.
    """
    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    tokenizer = read_json_object(path)
    if not tokenizer:
        raise MtnsailsError(f"{path} is missing: the GGUF export needs the fast tokenizer file")
    model = tokenizer.get("model") or {}
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return _read_sentencepiece(model_dir, tokenizer, n_vocab)
    decoder = (tokenizer.get("decoder") or {}).get("type")
    if model.get("type") != "BPE" or decoder not in ("ByteLevel", None):
        raise MtnsailsError(
            f"cannot write the tokenizer as GGUF: it is {model.get('type')}; this export writes byte-level "
            "BPE (GPT-2, SmolLM2, Qwen, Llama 3 style) and SentencePiece BPE (Gemma, Phi-3, Llama 2) tokenizers"
        )
    normalizer = (tokenizer.get("normalizer") or {}).get("type")
    if normalizer not in HARMLESS_NORMALIZERS:
        raise MtnsailsError(f"cannot write the tokenizer as GGUF: its normalizer {normalizer} has no llama.cpp twin")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise MtnsailsError("cannot write the tokenizer as GGUF: its BPE marks word pieces, which llama.cpp's does not")
    pre = pre_tokenizer_name(tokenizer)

    by_id: dict[int, tuple[str, int]] = {
        index: (text, gguf.TokenType.NORMAL) for text, index in model.get("vocab", {}).items()
    }
    for added in tokenizer.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[added["id"]] = (added["content"], kind)
    if by_id and max(by_id) >= n_vocab:
        raise MtnsailsError(
            f"cannot write the tokenizer as GGUF: it has token id {max(by_id)}, but the model's "
            f"embedding has only {n_vocab} rows"
        )
    tokens, types = [], []
    for index in range(n_vocab):
        text, kind = by_id.get(index, (f"[PAD{index}]", gguf.TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]

    vocabulary = Vocabulary(pre=pre, tokens=tokens, token_types=types, merges=merges)
    _check_unique(tokens)
    _add_special_ids(vocabulary, model_dir, tokenizer)
    return vocabulary


def _read_sentencepiece(model_dir: Path, tokenizer: dict, n_vocab: int) -> Vocabulary:
    """The vocabulary of a SentencePiece BPE tokenizer (see gguf_sentencepiece)."""
    model_file = model_dir / "tokenizer.model"
    if not model_file.is_file():
        raise MtnsailsError(
            f"cannot write the tokenizer as GGUF: it is SentencePiece BPE, and {model_file} (whose "
            "scores llama.cpp merges by) is missing"
        )
    tokens, scores, types = sentencepiece_tokens(model_file, tokenizer, n_vocab)
    vocab = (tokenizer.get("model") or {}).get("vocab") or {}
    moved = next((text for index, text in enumerate(tokens) if vocab.get(text, index) != index), None)
    if moved is not None:
        raise MtnsailsError(
            f"cannot write the tokenizer as GGUF: tokenizer.json and tokenizer.model give {moved!r} "
            "different ids; save the tokenizer again so the two agree"
        )
    vocabulary = Vocabulary(
        pre="default",
        tokens=tokens,
        token_types=types,
        merges=[],
        model="llama",
        scores=scores,
        add_space_prefix=adds_space_prefix(tokenizer),
    )
    _check_unique(tokens)
    _add_special_ids(vocabulary, model_dir, tokenizer)
    return vocabulary


def _check_unique(tokens: list[str]) -> None:
    """llama.cpp aborts on a vocabulary holding one text twice: refuse it here instead."""
    seen: dict[str, int] = {}
    for index, text in enumerate(tokens):
        if text in seen:
            raise MtnsailsError(
                f"cannot write the tokenizer as GGUF: token {text!r} has two ids ({seen[text]} and {index}), "
                "which llama.cpp cannot load"
            )
        seen[text] = index


def _add_special_ids(vocabulary: Vocabulary, model_dir: Path, tokenizer: dict) -> None:
    """BOS/EOS/UNK/PAD ids and whether a text starts with BOS. Each id comes from the model's
    config.json first (its EOS is the id training appended after every answer and chat stops
    on), then generation_config.json, then the token named in tokenizer_config.json."""
    configs = [read_json_object(model_dir / name) for name in ("config.json", "generation_config.json")]
    tokenizer_config = read_json_object(model_dir / "tokenizer_config.json")
    for role in ("bos", "eos", "unk", "pad"):
        token = next(
            (found for config in configs if (found := _config_id(config, f"{role}_token_id")) is not None), None
        )
        if token is None:
            text = _token_text(tokenizer_config.get(f"{role}_token"))
            token = vocabulary.token_id(text) if text is not None else None
        if token is not None and 0 <= token < len(vocabulary.tokens):
            vocabulary.special_ids[role] = token
    vocabulary.add_bos = _adds_bos(tokenizer, vocabulary.special_ids.get("bos"))


def _adds_bos(tokenizer: dict, bos_id: int | None) -> bool:
    """Does encoding a text (special tokens on, as transformers does) put BOS first?"""
    from tokenizers import Tokenizer

    if bos_id is None:
        return False
    encoded = Tokenizer.from_str(json.dumps(tokenizer)).encode("a", add_special_tokens=True).ids
    return bool(encoded) and encoded[0] == bos_id
