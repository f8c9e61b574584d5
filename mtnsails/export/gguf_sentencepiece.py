"""A SentencePiece tokenizer (Gemma, Phi-3, Llama 2) as llama.cpp reads it from a GGUF file.

llama.cpp's "llama" tokenizer merges neighbouring pieces by the scores of a SentencePiece BPE
model, so the scores come from the model file itself (tokenizer.model), read here with a few
lines of protobuf decoding instead of the sentencepiece package. The tokens and their types are
the model's pieces, the added tokens of tokenizer.json on top (special ones CONTROL, others
USER_DEFINED), as llama.cpp's converter writes them. Whether a text starts with a space marker,
the one normalisation llama.cpp applies, is read from tokenizer.json: that is how training
tokenized. A unigram model, whose pieces llama.cpp's merging would not reproduce, is refused.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import gguf

from mtnsails.core.errors import MtnsailsError

SPACE = "\u2581"  # SentencePiece's visible space
BPE_MODEL_TYPE = 2  # TrainerSpec.model_type: UNIGRAM 1, BPE 2, WORD 3, CHAR 4
ADDED_SCORE = -1000.0  # llama.cpp's converter gives added tokens this score
UNUSED_SCORE = -10000.0


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: varints as ints, everything else as bytes."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 2:
            length, position = _varint(data, position)
            value, position = data[position : position + length], position + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, position = data[position : position + size], position + size
        else:
            raise ValueError(f"protobuf wire type {wire} is not used by SentencePiece models")
        yield number, value


def read_model(path: Path) -> tuple[list[tuple[str, float, int]], int]:
    """([(piece, score, type)], model type) of a SentencePiece tokenizer.model. Piece types are
    SentencePiece's, which GGUF's token types number alike (NORMAL 1 ... BYTE 6)."""
    try:
        pieces, model_type = [], 1  # TrainerSpec's default model type is unigram
        for number, value in _fields(path.read_bytes()):
            if number == 1:  # ModelProto.pieces
                fields = dict(_fields(value))
                score = struct.unpack("<f", fields[2])[0] if 2 in fields else 0.0
                pieces.append((fields.get(1, b"").decode("utf-8"), score, int(fields.get(3, 1))))
            elif number == 2:  # ModelProto.trainer_spec
                model_type = int(dict(_fields(value)).get(3, 1))
    except (OSError, ValueError, IndexError, struct.error, UnicodeDecodeError) as error:
        raise MtnsailsError(f"{path}: cannot be read as a SentencePiece model ({error})") from None
    return pieces, model_type


def _steps(part: dict | None, key: str) -> list[dict]:
    """The steps of a tokenizer.json normalizer or pre-tokenizer, Sequences flattened."""
    if not part:
        return []
    if part.get("type") == "Sequence":
        return [step for inner in part.get(key, []) for step in _steps(inner, key)]
    return [part]


def adds_space_prefix(tokenizer: dict) -> bool:
    """Does tokenizer.json put "▁" before every text (a Prepend normalizer)? llama.cpp's
    add_space_prefix does the same. Refused: what llama.cpp's SentencePiece tokenizer cannot do
    alike, a normalizer beyond spaces to "▁" (NFKC, a precompiled map) and a Metaspace that
    prepends "▁" only where a text has none (llama.cpp prepends it always)."""
    prepends = False
    for step in _steps(tokenizer.get("normalizer"), "normalizers"):
        kind = step.get("type")
        if kind == "Prepend" and step.get("prepend") == SPACE:
            prepends = True
        elif not (kind == "Replace" and step.get("pattern") == {"String": " "} and step.get("content") == SPACE):
            raise MtnsailsError(f"cannot write the tokenizer as GGUF: its {kind} normalizer has no llama.cpp twin")
    for step in _steps(tokenizer.get("pre_tokenizer"), "pretokenizers"):
        kind = step.get("type")
        if kind == "Metaspace" and step.get("prepend_scheme", "always") == "never":
            continue
        if kind == "Split" and step.get("pattern") == {"String": " "}:
            continue  # Gemma's: spaces are "▁" by then, so it splits nothing
        detail = f" (prepend_scheme {step.get('prepend_scheme', 'always')})" if kind == "Metaspace" else ""
        raise MtnsailsError(
            f"cannot write the tokenizer as GGUF: its {kind} pre-tokenizer{detail} splits or marks text "
            "unlike llama.cpp's SentencePiece tokenizer"
        )
    return prepends


def sentencepiece_tokens(model_path: Path, tokenizer: dict, n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, types) for `n_vocab` ids: the model's pieces, then tokenizer.json's added
    tokens over them, then "[PAD<id>]" UNUSED placeholders for ids no tokenizer produces."""
    pieces, model_type = read_model(model_path)
    if model_type != BPE_MODEL_TYPE:
        raise MtnsailsError(
            f"cannot write the tokenizer as GGUF: {model_path.name} is a unigram SentencePiece model, "
            "which llama.cpp's SentencePiece tokenizer (BPE merges by score) does not reproduce"
        )
    if len(pieces) > n_vocab:
        raise MtnsailsError(
            f"cannot write the tokenizer as GGUF: it has {len(pieces)} pieces, the embedding only {n_vocab} rows"
        )
    tokens = [piece for piece, _, _ in pieces] + [f"[PAD{i}]" for i in range(len(pieces), n_vocab)]
    scores = [score for _, score, _ in pieces] + [UNUSED_SCORE] * (n_vocab - len(pieces))
    types = [kind for _, _, kind in pieces] + [int(gguf.TokenType.UNUSED)] * (n_vocab - len(pieces))
    for added in tokenizer.get("added_tokens", []):
        index, text = added["id"], added["content"]
        if index >= n_vocab:
            raise MtnsailsError(
                f"cannot write the tokenizer as GGUF: added token {text!r} has id {index}, beyond the "
                f"embedding's {n_vocab} rows"
            )
        if added.get("special"):
            types[index] = int(gguf.TokenType.CONTROL)
        else:
            text = text.replace(SPACE, " ")  # llama.cpp expects user-defined tokens with plain spaces
            types[index] = int(gguf.TokenType.USER_DEFINED)
        tokens[index], scores[index] = text, ADDED_SCORE
    return tokens, scores, types
