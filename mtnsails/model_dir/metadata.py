"""What a model directory holds: its file names, the `mtnsails.json` that marks it as an
mtnsails output, and where outputs go unless told otherwise."""

from __future__ import annotations

import os
from pathlib import Path

from mtnsails.core.files import read_json_object

METADATA_FILE = "mtnsails.json"
# The "format" recorded in mtnsails.json by `train` and by `convert`.
MODEL_FORMAT = "mtnsails-model"
ONNX_FORMAT = "mtnsails-onnx"
# File names inside the model directories: `convert` writes the ONNX ones, chat reads them.
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
INT4_FILE = "model_int4.onnx"
PYTORCH_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
# Where `convert` writes and `chat` logs unless told otherwise (the original CLI's defaults).
DEFAULT_ONNX_DIR = "./onnx_model"
DEFAULT_OPSET = 14
DEFAULT_LOG_FILE = "./chat_history.json"
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
