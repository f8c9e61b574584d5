"""Crash-safe writes: a file appears complete or not at all; reading JSON objects and hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from mtnsails.core.errors import MtnsailsError

# How a `torch.save` file opens: a zip archive (PyTorch >= 1.6) or a pickle of torch's magic number.
TORCH_SAVE_HEADS = (b"PK\x03\x04", b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19")


def _default_mode(kind: int) -> int:
    """The mode a plain `open`/`mkdir` would give (temp files are created private)."""
    umask = os.umask(0)
    os.umask(umask)
    return kind & ~umask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` via a temp file in the same directory, fsync, then `os.replace`."""
    with atomic_writer(path) as handle:
        handle.write(text)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[TextIO]:
    """A UTF-8 text handle on a temp file beside `path`; when the block succeeds the file is
    fsynced and replaces `path`, otherwise it is removed and `path` stays as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else _default_mode(0o666))
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def is_torch_save_file(path: str | os.PathLike) -> bool:
    """Does the file open as `torch.save` writes? Any other *.bin (a plain pickle, a TensorFlow
    checkpoint) would send transformers down paths that print noise before failing."""
    with open(path, "rb") as handle:
        head = handle.read(max(map(len, TORCH_SAVE_HEADS)))
    return any(head.startswith(start) for start in TORCH_SAVE_HEADS)


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


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (recorded with a model so its data can be traced)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
