"""What a model directory holds: its file names, the `mtnsails.json` that marks it as an
mtnsails output, and where outputs go unless told otherwise."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from mtnsails.core.files import read_json_object

METADATA_FILE = "mtnsails.json"
# The "format" recorded in mtnsails.json by `train` and by `convert`.
MODEL_FORMAT = "mtnsails-model"
ONNX_FORMAT = "mtnsails-onnx"
GGUF_FORMAT = "mtnsails-gguf"  # `convert --format gguf`: a .gguf file and its Ollama Modelfile
# File names inside the model directories: `convert` writes the ONNX ones, chat reads them.
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
INT4_FILE = "model_int4.onnx"
PYTORCH_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
# Where `convert` writes and `chat` logs unless told otherwise (the original CLI's defaults).
DEFAULT_ONNX_DIR = "./onnx_model"
DEFAULT_OPSET = 14
DEFAULT_GGUF_DIR = "./gguf_model"
DEFAULT_LOG_FILE = "./chat_history.json"
# `serve` logs many exchanges a minute: JSON Lines appends each with one write and fsync, where a
# JSON array is read and rewritten whole.
DEFAULT_SERVE_LOG_FILE = "./chat_history.jsonl"
# The conversations a trained model directory was trained on (JSON Lines, written by `train`):
# its lineage, and what continued training mixes back in.
TRAINING_DATA_FILE = "training_data.jsonl"


def context_length(config: dict) -> int | None:
    """The context window in a model's config.json (GPT-2 names it n_positions, most others
    max_position_embeddings); None when it has neither."""
    return config.get("n_positions") or config.get("max_position_embeddings")


def read_metadata(directory: str | os.PathLike) -> dict:
    """The directory's `mtnsails.json` as a dict ({} when there is none)."""
    return read_json_object(Path(directory) / METADATA_FILE)


def describe_training(directory: str | os.PathLike) -> str | None:
    """When and on what the mtnsails model in `directory` was trained, from its `mtnsails.json`
    (written last when the model was saved, so its time is the training's end), e.g.
    "trained 2025-06-01 14:03 on data.json (58 examples) from tiny"; None when `directory` holds
    no mtnsails model. A run about to replace that model says so with it."""
    metadata = read_metadata(directory)
    if metadata.get("format") != MODEL_FORMAT:
        return None
    trained = datetime.fromtimestamp((Path(directory) / METADATA_FILE).stat().st_mtime)
    text = f"trained {trained:%Y-%m-%d %H:%M}"
    files = metadata.get("data_file")
    files = [files] if isinstance(files, str) else files if isinstance(files, list) else []
    if files:
        text += " on " + ", ".join(Path(str(file)).name for file in files)
    examples = (metadata.get("settings") or {}).get("examples")
    if examples:
        text += f" ({examples} examples)"
    if metadata.get("base_model"):
        text += f" from {metadata['base_model']}"
    return text
