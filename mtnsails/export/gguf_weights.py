"""A model directory's weights as numpy arrays, read straight from its safetensors files.

The GGUF export needs no torch: the safetensors format is an 8-byte header length, a JSON header
(name -> dtype, shape, byte offsets) and the raw little-endian data, so numpy maps it directly.
bfloat16, which numpy lacks, is widened to float32 bit for bit (its 16 bits are float32's top 16).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mtnsails.core.errors import MtnsailsError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# safetensors dtype names -> how numpy reads their bytes (BF16 as raw 16-bit words, widened on read)
DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of `model_dir`: model.safetensors, or the shards its index names."""
    if (model_dir / SINGLE_FILE).is_file():
        return [model_dir / SINGLE_FILE]
    if (model_dir / INDEX_FILE).is_file():
        try:
            index = json.loads((model_dir / INDEX_FILE).read_text("utf-8"))
            shards = sorted(set(index["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise MtnsailsError(f"{model_dir / INDEX_FILE}: not a safetensors index (no weight_map)") from None
        # A shard name from the file must never lead outside the model directory.
        if any(Path(name).name != name for name in shards):
            raise MtnsailsError(f"{model_dir / INDEX_FILE}: shard names must be plain file names")
        return [model_dir / name for name in shards]
    raise MtnsailsError(
        f"{model_dir} has no model.safetensors: the GGUF export reads safetensors weights only "
        "(save the model with save_pretrained, which writes them)"
    )


class SafetensorsWeights:
    """Every tensor of a model directory by name, read lazily as float32 numpy arrays.

    >>> weights = SafetensorsWeights(Path("./trained_model"))
    >>> weights["transformer.wte.weight"].shape
    (4096, 256)
    """

    def __init__(self, model_dir: str | os.PathLike) -> None:
        self._where: dict[str, tuple[Path, str, list[int], int]] = {}
        for path in weight_files(Path(model_dir)):
            header, start = _read_header(path)
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                dtype = entry.get("dtype")
                if dtype not in DTYPES:
                    raise MtnsailsError(
                        f"{path}: tensor {name} is stored as {dtype}; the GGUF export reads "
                        f"{', '.join(DTYPES)} weights (a quantized checkpoint cannot be converted)"
                    )
                begin, _ = entry["data_offsets"]
                self._where[name] = (path, dtype, list(entry["shape"]), start + begin)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._where))

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name][2])

    def __getitem__(self, name: str) -> np.ndarray:
        """The tensor as a float32 array (a copy: the file is not held open)."""
        path, dtype, shape, offset = self._where[name]
        count = int(np.prod(shape)) if shape else 1
        data = np.fromfile(path, dtype=np.dtype(DTYPES[dtype]).newbyteorder("<"), count=count, offset=offset)
        if dtype == "BF16":
            data = (data.astype(np.uint32) << 16).view(np.float32)
        return data.astype(np.float32, copy=False).reshape(shape)


def _read_header(path: Path) -> tuple[dict, int]:
    """(header, offset of the data) of one safetensors file; MtnsailsError for a damaged one."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > path.stat().st_size:
                raise ValueError("header longer than the file")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as error:
        raise MtnsailsError(f"{path}: cannot be read as safetensors ({error})") from None
    if not isinstance(header, dict):
        raise MtnsailsError(f"{path}: cannot be read as safetensors (its header is not an object)")
    return header, 8 + length
