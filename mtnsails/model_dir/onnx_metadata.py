"""The `mtnsails.json` of an ONNX model directory: written by `convert`, read by chat and `--verify`.

It records the chat template (mtnsails' own format, or the model's Jinja template with its special
tokens and end-of-turn token), EOS id, context length, which graph file holds each precision, and
the training data's system prompt and answer lengths (chat's defaults). The reader checks every
field it hands on, so a hand-edited or damaged file is a one-line error naming the file and the
field, never a traceback deep inside generation. Only numpy-free, torch-free imports: chat reads
it at start-up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mtnsails.core.errors import MtnsailsError
from mtnsails.core.files import atomic_write_text, read_json_object
from mtnsails.model_dir.jinja_template import JinjaTemplate, template_from_dict
from mtnsails.model_dir.metadata import (
    FP32_FILE,
    INT8_FILE,
    METADATA_FILE,
    MODEL_FORMAT,
    ONNX_FORMAT,
    PYTORCH_WEIGHTS,
    context_length,
    read_metadata,
)

PRECISIONS = ("fp32", "int8", "int4")  # keys of the "files" map


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_files(source: Path, files: object, key: str = "files") -> dict:
    """The `key` map as given, once every key is a known precision and every value a plain file name."""
    if not isinstance(files, dict) or not files:
        raise MtnsailsError(
            f'{source}: "{key}" must map precisions ({", ".join(PRECISIONS)}) to file names, got {json.dumps(files)}'
        )
    for precision, name in files.items():
        if precision not in PRECISIONS:
            raise MtnsailsError(
                f'{source}: "{key}" has unknown precision {precision!r} (expected {", ".join(PRECISIONS)})'
            )
        # A path from the file must never lead outside the model directory.
        if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
            raise MtnsailsError(
                f'{source}: "{key}".{precision} must be a file name in the model directory, got {json.dumps(name)}'
            )
    return files


def _check_optimized(source: Path, optimized: object) -> None:
    """The "optimized" entry: stored graphs per precision and what they were optimised for."""
    if not isinstance(optimized, dict) or not isinstance(optimized.get("files"), dict):
        raise MtnsailsError(f'{source}: "optimized" must be an object with a "files" map')
    _check_files(source, optimized["files"], "optimized.files")
    sources = optimized.get("sources", {})  # absent in exports made before it was recorded
    if not isinstance(sources, dict) or not all(isinstance(digest, str) for digest in sources.values()):
        raise MtnsailsError(f'{source}: "optimized.sources" must map precisions to digest strings')
    flags, version = optimized.get("cpu_flags"), optimized.get("onnxruntime")
    if not isinstance(flags, list) or not all(isinstance(flag, str) for flag in flags) or not isinstance(version, str):
        raise MtnsailsError(
            f'{source}: "optimized" must record "cpu_flags" (a list of strings) and "onnxruntime" (a version string)'
        )


def check_onnx_metadata(meta: dict, source: str | os.PathLike) -> dict:
    """Return `meta` when its fields are usable; raise MtnsailsError naming `source` and the field.

    `context_length` must be a positive integer, `eos_token_id` a non-negative integer (both may
    be absent), `template` a valid chat template (mtnsails' own {"template", "separator"}, or a
    Jinja one: {"chat_template", "special_tokens", "end_of_turn"}) and `files` a map of precision
    to file name;
    `system` (the training data's system prompt) a string and `answer_tokens` (the trained
    answer lengths) an object with a positive integer `max`, `history_exchanges` (the most
    earlier exchanges a training example had) a non-negative integer and `questions` (the trained
    questions asked with nothing before them) a list of strings, where present; `optimized` the
    stored optimised graphs and the CPU flags and onnxruntime version they were made for;
    `kv_cache` "shared" where the graphs' attention appends to the past buffer in place.
    """
    source = Path(source)
    if "files" not in meta:
        raise MtnsailsError(f'{source}: no "files" map (which graph file holds which precision)')
    _check_files(source, meta["files"])
    if "optimized" in meta:
        _check_optimized(source, meta["optimized"])
    if meta.get("kv_cache") not in (None, "shared"):
        raise MtnsailsError(f'{source}: "kv_cache" must be "shared" or absent, got {json.dumps(meta["kv_cache"])}')
    length = meta.get("context_length")
    if length is not None and not (_is_integer(length) and length >= 1):
        raise MtnsailsError(f'{source}: "context_length" must be a positive integer, got {json.dumps(length)}')
    eos = meta.get("eos_token_id")
    if eos is not None and not (_is_integer(eos) and eos >= 0):
        raise MtnsailsError(f'{source}: "eos_token_id" must be a non-negative integer, got {json.dumps(eos)}')
    system = meta.get("system")
    if system is not None and not isinstance(system, str):
        raise MtnsailsError(
            f'{source}: "system" must be a string (the system prompt) or null, got {json.dumps(system)}'
        )
    lengths = meta.get("answer_tokens")
    if lengths is not None and not (
        isinstance(lengths, dict) and _is_integer(lengths.get("max")) and lengths["max"] >= 1
    ):
        raise MtnsailsError(
            f'{source}: "answer_tokens" must be an object with a positive integer '
            f'"max" (the longest trained answer) or null, got {json.dumps(lengths)}'
        )
    history = meta.get("history_exchanges")
    if history is not None and not (_is_integer(history) and history >= 0):
        raise MtnsailsError(
            f'{source}: "history_exchanges" must be a non-negative integer or null, got {json.dumps(history)}'
        )
    questions = meta.get("questions")
    if questions is not None and not (isinstance(questions, list) and all(isinstance(q, str) for q in questions)):
        raise MtnsailsError(f'{source}: "questions" must be a list of strings (the trained questions) or null')
    answers = meta.get("question_answers")
    if answers is not None and not (
        isinstance(answers, list) and all(isinstance(a, str) for a in answers) and len(answers) == len(questions or [])
    ):
        raise MtnsailsError(f'{source}: "question_answers" must be a list of strings, one per question, or null')
    template = meta.get("template")
    if template is not None:
        jinja = isinstance(template, dict) and "chat_template" in template
        if not isinstance(template, dict) or not (
            jinja or all(isinstance(template.get(key, ""), str) for key in ("template", "separator"))
        ):
            raise MtnsailsError(
                f'{source}: "template" must be an object of strings ("template", "separator") or a Jinja '
                'chat template ("chat_template", "special_tokens", "end_of_turn")'
            )
        try:
            template_from_dict(template)
        except (ValueError, MtnsailsError) as error:  # a bad field, or Jinja that does not compile
            raise MtnsailsError(f'{source}: "template": {error}') from None
    return meta


def eos_token_ids(path: str | os.PathLike) -> list[int]:
    """Every EOS id the model directory names: generation_config.json's `eos_token_id` (an id or
    a list: Qwen2.5 and Llama 3 name several) and config.json's."""
    path = Path(path)
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        value = read_json_object(path / name).get("eos_token_id")
        ids += value if isinstance(value, list) else [value]
    return [token for token in dict.fromkeys(ids) if _is_integer(token) and token >= 0]


def template_record(recorded: dict | None, tokenizer_dir: str | os.PathLike) -> dict:
    """The "template" record of an ONNX directory: what the trained model recorded, else the
    chat template its tokenizer carries (a hub model converted as it is), else mtnsails' own
    format."""
    if recorded:
        return template_from_dict(recorded).to_dict()
    jinja = JinjaTemplate.from_tokenizer_files(tokenizer_dir)
    return jinja.to_dict() if jinja else template_from_dict(None).to_dict()


def read_onnx_directory(path: str | os.PathLike) -> dict:
    """Check `path` is an ONNX model directory and return its checked mtnsails.json.

    A directory without mtnsails.json (a plain optimum export) gets defaults: EOS and context
    length from config.json, model.onnx (and model_int8.onnx when present). Raises MtnsailsError
    with a one-line hint for the usual mistakes: a missing path, a PyTorch model directory that
    was never converted, missing tokenizer files, a damaged mtnsails.json.
    """
    path = Path(path)
    if not path.exists():
        raise MtnsailsError(f"model path {path} does not exist")
    if not path.is_dir():
        raise MtnsailsError(f"model path {path} is not a directory (give the ONNX model directory)")
    meta = read_metadata(path)
    if meta.get("format") == MODEL_FORMAT or (
        not (path / FP32_FILE).exists() and any((path / name).exists() for name in PYTORCH_WEIGHTS)
    ):
        raise MtnsailsError(
            f"{path} is a PyTorch model, not an ONNX model directory: run `mtnsails convert --model-path {path}` first"
        )
    if meta:
        check_onnx_metadata(meta, path / METADATA_FILE)
    else:
        meta = {"files": {"fp32": FP32_FILE}}
        if (path / INT8_FILE).exists():
            meta["files"]["int8"] = INT8_FILE
        jinja = JinjaTemplate.from_tokenizer_files(path)  # a plain export of a model with a template
        if jinja is not None:
            meta["template"] = jinja.to_dict()
    if not any((path / name).exists() for name in meta["files"].values()):
        raise MtnsailsError(f"{path} is not an ONNX model directory (no {' or '.join(meta['files'].values())})")
    if not (path / "tokenizer.json").exists():
        raise MtnsailsError(
            f"{path / 'tokenizer.json'} is missing: the tokenizer files must sit "
            "beside the model (re-run `mtnsails convert`)"
        )
    config = read_json_object(path / "config.json")
    if meta.get("eos_token_id") is None:
        eos = read_json_object(path / "generation_config.json").get("eos_token_id", config.get("eos_token_id"))
        meta["eos_token_id"] = eos[0] if isinstance(eos, list) else eos
    if meta.get("context_length") is None:
        meta["context_length"] = context_length(config)
    return meta


def write_onnx_metadata(
    onnx_dir: str | os.PathLike,
    model_path: str | os.PathLike,
    files: dict,
    opset_version: int,
    optimized: dict | None = None,
    kv_cache: str | None = None,
) -> dict:
    """Write onnx_dir/mtnsails.json for a fresh export of `model_path` and return it.

    `files` maps precisions to graph files; `optimized` is `store_optimized_graphs`' record;
    `kv_cache` "shared" when the graphs' attention was fused (see fused_attention).
    The template (see `template_record`) and (for configs without one) the context length come
    from the trained model's own mtnsails.json; EOS from config.json, else the tokenizer's first
    special token.
    """
    onnx_dir, model_path = Path(onnx_dir), Path(model_path)
    config = read_json_object(onnx_dir / "config.json")
    eos = config.get("eos_token_id")
    if eos is None:
        tokenizer = read_json_object(onnx_dir / "tokenizer.json")
        eos = next((token["id"] for token in tokenizer.get("added_tokens", []) if token.get("special")), None)
    source = read_metadata(model_path)
    meta = {
        "format": ONNX_FORMAT,
        "version": 1,
        "template": template_record(source.get("template"), onnx_dir),
        "source_model": str(model_path.resolve()),
        "eos_token_id": eos[0] if isinstance(eos, list) else eos,
        "context_length": context_length(config) or source.get("context_length"),
        "files": files,
        "opset": opset_version,
        # chat's defaults: the system prompt and the token limit the training data implies
        "system": source.get("system"),
        "answer_tokens": source.get("answer_tokens"),
        "history_exchanges": source.get("history_exchanges"),
        "questions": source.get("questions"),
        "question_answers": source.get("question_answers"),
    }
    if optimized:
        meta["optimized"] = optimized
    if kv_cache:
        meta["kv_cache"] = kv_cache
    check_onnx_metadata(meta, onnx_dir / METADATA_FILE)
    atomic_write_text(onnx_dir / METADATA_FILE, json.dumps(meta, indent=2) + "\n")
    return meta
