"""A whole output directory appears complete or not at all, and replaces only an earlier one.

Only a directory that `mtnsails.json` marks as an mtnsails output (of the same kind) is ever
replaced by a new output; the swap survives a crash at any point (`recover_swap`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mtnsails.core.errors import MtnsailsError
from mtnsails.core.files import _default_mode, atomic_write_text
from mtnsails.model_dir.metadata import FP32_FILE, INT8_FILE, METADATA_FILE, read_metadata

# What mtnsails wrote into an output made before it recorded its files in mtnsails.json
# ("written_files"): the transformers and ONNX files of a model directory, and its own.
_EARLIER_OUTPUT_FILES = (
    METADATA_FILE,
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "loss.png",
    FP32_FILE,
    INT8_FILE,
    "*.onnx_data",
)
_STAGING, _PREVIOUS = "staging", "previous"


def _written_files(directory: Path) -> list[str]:
    """Every file below `directory` (symlinks included), as sorted relative POSIX paths."""
    return sorted(
        path.relative_to(directory).as_posix() for path in directory.rglob("*") if path.is_file() or path.is_symlink()
    )


def _foreign_files(directory: Path, metadata: dict) -> list[str]:
    """The files in an earlier output that mtnsails did not write there."""
    recorded = metadata.get("written_files")
    if isinstance(recorded, list):
        return [name for name in _written_files(directory) if name not in recorded]
    return [
        name
        for name in _written_files(directory)
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in _EARLIER_OUTPUT_FILES)
    ]


def check_replaceable(path: str | os.PathLike, kind: str | None = None) -> None:
    """Raise MtnsailsError unless a new output directory may take the place of `path`.

    Allowed: nothing there, an empty directory, or an earlier mtnsails output whose
    `mtnsails.json` "format" is `kind` (any mtnsails output when `kind` is None) and that holds
    only files mtnsails wrote. Anything else (a file, the working directory or one above it, a
    folder of the user's, a data file or notes put into an earlier output) is never replaced.
    First finishes what a run killed during a swap left behind (see `recover_swap`).
    """
    path = Path(path).resolve()
    recover_swap(path)
    parent = next(folder for folder in path.parents if folder.exists())  # created when missing
    for folder in ((path,) if path.is_dir() else ()) + (parent,):
        _check_writable(folder, path)
    if not path.exists():
        return
    if not path.is_dir():
        raise MtnsailsError(f"{path}: exists and is not a directory; choose another output directory")
    cwd = Path.cwd().resolve()
    if path == cwd or path in cwd.parents:
        raise MtnsailsError(f"{path}: is the current directory or contains it; choose an output directory of its own")
    if not any(path.iterdir()):
        return
    metadata = read_metadata(path)
    found = metadata.get("format")
    if found is None or (kind is not None and found != kind):
        what = f"an mtnsails output of another kind ({found})" if found else "not an mtnsails output"
        raise MtnsailsError(
            f"{path}: exists and is {what}; it is never overwritten: "
            "choose another output directory or remove it yourself"
        )
    foreign = _foreign_files(path, metadata)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise MtnsailsError(
            f"{path}: holds files mtnsails did not write ({shown}); it is never "
            "overwritten: move them out or choose another output directory"
        )


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike, kind: str | None = None, keep_previous: str | os.PathLike | None = None
) -> Iterator[Path]:
    """Yield a fresh staging directory that replaces `path` only if the block succeeds.

    `path` must pass `check_replaceable(path, kind)`. A failed or interrupted block leaves
    whatever was at `path` untouched. When the block wrote an `mtnsails.json`, the list of files
    it wrote is added to it (so a later replace knows what it may drop). On Linux the new tree
    and the old one trade places in one `renameat2(RENAME_EXCHANGE)`, so `path` always holds one
    complete tree; elsewhere the swap is two renames, and a run killed between them is finished
    by the next one (`recover_swap`).
    With `keep_previous` the replaced tree is not deleted but moved there (what was there,
    which must pass the same check, is deleted), so it can be rolled back.
    """
    path = Path(path).resolve()
    check_replaceable(path, kind)
    if keep_previous is not None:
        keep_previous = Path(keep_previous).resolve()
        check_replaceable(keep_previous, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _swap_directory(path, _STAGING)
    staging.chmod(_default_mode(0o777))
    try:
        yield staging
        metadata = read_metadata(staging)
        if metadata:
            metadata["written_files"] = sorted({*_written_files(staging), METADATA_FILE})
            atomic_write_text(staging / METADATA_FILE, json.dumps(metadata, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Some writers (safetensors among them) create files private to their owner.
    for written in staging.rglob("*"):
        if written.is_file() and not written.is_symlink():
            written.chmod(_default_mode(0o666))
    if path.exists() and _exchange(staging, path):
        _discard(staging, keep_previous)  # it now holds the old tree
        return
    previous = None
    if path.exists():
        previous = _swap_directory(path, _PREVIOUS)
        previous.rmdir()
        os.replace(path, previous)
    os.replace(staging, path)
    if previous is not None:
        _discard(previous, keep_previous)


def _discard(old: Path, keep: Path | None) -> None:
    """Delete the replaced tree `old`; with `keep`, move it there instead (deleting what was
    there: after an exchange that is what `old` holds)."""
    if keep is not None:
        if not keep.exists():
            os.replace(old, keep)
            return
        if not _exchange(old, keep):
            earlier = _swap_directory(keep, _PREVIOUS)
            earlier.rmdir()
            os.replace(keep, earlier)
            os.replace(old, keep)
            old = earlier
    shutil.rmtree(old, ignore_errors=True)


def recover_swap(path: str | os.PathLike) -> None:
    """Clean up after runs that were killed while replacing `path`.

    Their staging directories (a half-written new tree, or the old tree after an exchange) and
    previous trees are removed once `path` is there; if a kill came between the two renames of
    a swap, leaving no `path`, the previous tree is moved back first. Directories of a process
    that is still running are left alone: it may be writing them now.
    """
    path = Path(path).resolve()
    leftovers = {_STAGING: [], _PREVIOUS: []}
    if not path.parent.is_dir():
        return
    for entry in path.parent.iterdir():
        for role, found in leftovers.items():
            prefix = _swap_prefix(path, role)
            if entry.name.startswith(prefix) and entry.is_dir() and not entry.is_symlink():
                owner = entry.name[len(prefix) :].split("-", 1)[0]
                if owner.isdigit() and not _process_alive(int(owner)):
                    found.append(entry)
    if not path.exists() and leftovers[_PREVIOUS]:
        newest = max(leftovers[_PREVIOUS], key=lambda entry: entry.stat().st_mtime)
        os.replace(newest, path)
        leftovers[_PREVIOUS].remove(newest)
    if path.exists():
        for leftover in leftovers[_STAGING] + leftovers[_PREVIOUS]:
            shutil.rmtree(leftover, ignore_errors=True)


def _check_writable(folder: Path, path: Path) -> None:
    """Raise MtnsailsError unless a folder can be made in `folder` (the surest test: a read-only
    mount, missing permissions and file systems that refuse even root all show)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mtnsails-probe-", dir=folder))
    except OSError as error:
        raise MtnsailsError(
            f"{folder}: cannot be written ({error.strerror}), so {path} cannot be "
            "made there; choose another output directory"
        ) from None


def _swap_prefix(path: Path, role: str) -> str:
    """Name prefix of the staging/previous directories beside `path`."""
    return f".{path.name}.{role}-"


def _swap_directory(path: Path, role: str) -> Path:
    """A new empty staging/previous directory beside `path`, named after this process so that
    a later run can tell a killed run's leftovers from a live run's."""
    return Path(tempfile.mkdtemp(prefix=f"{_swap_prefix(path, role)}{os.getpid()}-", dir=path.parent))


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _exchange(first: Path, second: Path) -> bool:
    """Swap two directories in one step with Linux's renameat2(RENAME_EXCHANGE); False where
    that is not available (another OS, an old kernel or C library, a file system without it)."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), str(second))
