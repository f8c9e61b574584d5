"""Is a training checkpoint whole? A save cut short (disk full, a kill) or a file damaged later
must not stop `--resume`: it goes back to the newest checkpoint that is complete.

Checks the files transformers' Trainer writes, without torch: `trainer_state.json` parses, every
`.safetensors` file is as long as its header says, every torch file (`.pt`, `.pth`, `.bin`,
zip archives) passes its CRC check.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
TRAINER_STATE = "trainer_state.json"


def checkpoint_problem(directory: Path) -> str | None:
    """Why the checkpoint in `directory` cannot be resumed from, or None when it is complete."""
    try:
        json.loads((directory / TRAINER_STATE).read_text("utf-8"))
    except FileNotFoundError:
        return f"no {TRAINER_STATE}"
    except (OSError, ValueError):
        return f"{TRAINER_STATE} is damaged"
    for path in sorted(directory.iterdir()):
        try:
            if path.suffix == ".safetensors" and not _safetensors_whole(path):
                return f"{path.name} is cut short"
            if path.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(path) as archive:
                    if archive.testzip() is not None:
                        return f"{path.name} is damaged"
        except (OSError, ValueError, zipfile.BadZipFile, struct.error):
            return f"{path.name} is cut short or damaged"
    return None


def _safetensors_whole(path: Path) -> bool:
    """True when the file holds the 8-byte header length, the JSON header and all tensor bytes."""
    with open(path, "rb") as handle:
        (header_length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_length))
    end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    return path.stat().st_size == 8 + header_length + end


def checkpoints(directory: Path) -> list[Path]:
    """The `checkpoint-<step>` folders in `directory`, newest (highest step) first."""
    found = [
        (int(match.group(1)), path)
        for path in directory.iterdir()
        if path.is_dir() and (match := _CHECKPOINT.fullmatch(path.name))
    ]
    return [path for _, path in sorted(found, reverse=True)]


def newest_complete(directory: Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint in `directory` (None if there is none), and a note for
    each newer one passed over."""
    skipped = []
    for path in checkpoints(directory):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append(f"{path.name} is incomplete ({problem})")
    return None, skipped
