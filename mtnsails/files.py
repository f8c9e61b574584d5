"""Crash-safe writes: a file or a whole directory appears complete or not at all.

Also the one reader of `mtnsails.json`, the metadata file that marks a directory as an mtnsails
output: only such a directory (of the same kind) is ever replaced by a new output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from mtnsails.errors import MtnsailsError

METADATA_FILE = "mtnsails.json"
# The "format" recorded in mtnsails.json by `train` and by `convert`.
MODEL_FORMAT = "mtnsails-model"
ONNX_FORMAT = "mtnsails-onnx"
# File names inside the model directories: `convert` writes the ONNX ones, chat reads them.
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
PYTORCH_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
# Where `convert` writes and `chat` logs unless told otherwise (the original CLI's defaults).
DEFAULT_ONNX_DIR = "./onnx_model"
DEFAULT_OPSET = 14
DEFAULT_LOG_FILE = "./chat_history.json"


def _default_mode(kind: int) -> int:
    """The mode a plain `open`/`mkdir` would give (temp files are created private)."""
    umask = os.umask(0)
    os.umask(umask)
    return kind & ~umask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` via a temp file in the same directory, fsync, then `os.replace`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else _default_mode(0o666))
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object stored in `path` ({} when there is no such file).

    Raises MtnsailsError naming the file when it cannot be read or holds no JSON object.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text("utf-8"))
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError; deep nesting recurses
        raise MtnsailsError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:
        raise MtnsailsError(f"{path}: cannot be read ({error.strerror})") from None
    if not isinstance(data, dict):
        raise MtnsailsError(f"{path}: expected a JSON object")
    return data


def context_length(config: dict) -> int | None:
    """The context window in a model's config.json (GPT-2 names it n_positions, most others
    max_position_embeddings); None when it has neither."""
    return config.get("n_positions") or config.get("max_position_embeddings")


def read_metadata(directory: str | os.PathLike) -> dict:
    """The directory's `mtnsails.json` as a dict ({} when there is none)."""
    return read_json_object(Path(directory) / METADATA_FILE)


def check_replaceable(path: str | os.PathLike, kind: str | None = None) -> None:
    """Raise MtnsailsError unless a new output directory may take the place of `path`.

    Allowed: nothing there, an empty directory, or an earlier mtnsails output whose
    `mtnsails.json` "format" is `kind` (any mtnsails output when `kind` is None). Anything else
    (a file, the working directory or one above it, a folder of the user's) is never replaced.
    """
    path = Path(path).resolve()
    if not path.exists():
        return
    if not path.is_dir():
        raise MtnsailsError(f"{path}: exists and is not a directory; choose another output directory")
    cwd = Path.cwd().resolve()
    if path == cwd or path in cwd.parents:
        raise MtnsailsError(f"{path}: is the current directory or contains it; "
                            "choose an output directory of its own")
    if not any(path.iterdir()):
        return
    found = read_metadata(path).get("format")
    if found is None or (kind is not None and found != kind):
        what = f"an mtnsails output of another kind ({found})" if found else "not an mtnsails output"
        raise MtnsailsError(f"{path}: exists and is {what}; it is never overwritten: "
                            "choose another output directory or remove it yourself")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, kind: str | None = None) -> Iterator[Path]:
    """Yield a fresh staging directory that replaces `path` only if the block succeeds.

    `path` must pass `check_replaceable(path, kind)`. A failed or interrupted block leaves
    whatever was at `path` untouched. The swap is two renames, so at every instant `path`
    holds either the complete old or the complete new tree.
    """
    path = Path(path).resolve()
    check_replaceable(path, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.staging-", dir=path.parent))
    staging.chmod(_default_mode(0o777))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Some writers (safetensors among them) create files private to their owner.
    for written in staging.rglob("*"):
        if written.is_file() and not written.is_symlink():
            written.chmod(_default_mode(0o666))
    previous = None
    if path.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{path.name}.previous-", dir=path.parent))
        previous.rmdir()
        os.replace(path, previous)
    os.replace(staging, path)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (recorded with a model so its data can be traced)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
