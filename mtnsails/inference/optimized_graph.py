"""Graphs stored as onnxruntime optimised them, so chat starts without optimising again.

Loading an exported graph spends most of its time in onnxruntime's graph optimisation.
`convert` therefore also saves each graph after that optimisation (`<name>.optimized.onnx`) and
records, in mtnsails.json, the CPU vector flags and onnxruntime version it was made with (the
fully optimised graph may use kernels and layouts of this CPU) and a digest of the portable graph
it was made from. Chat loads it with optimisation switched off only where all three still match
(a `model.onnx` copied over from another export must never run as the old model), and falls back
to the portable graph otherwise or when it cannot be loaded.

Its weights sit in a side file (`<name>.optimized.onnx_data`, large tensors page-aligned), which
onnxruntime memory-maps instead of parsing them out of the protobuf and copying them: it
loads several times faster (bench/chat_bench.py's cold start; docs/performance.md).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mtnsails.core.cpu import vector_flags

OPTIMIZED_SUFFIX = ".optimized.onnx"
DATA_SUFFIX = "_data"
EXTERNAL_DATA_MIN_BYTES = 1024  # tensors above this go to the side file (the weights; shapes stay inline)
# `graph_digest` reads this many blocks of this size spread over a graph (4 MiB in all): hashing a
# whole 300 MB fp32 graph would add a third of a second to every chat's start.
DIGEST_BLOCKS, DIGEST_BLOCK_BYTES = 64, 1 << 16


def fingerprint() -> dict:
    """What a stored optimised graph depends on: this CPU's vector flags and onnxruntime's version."""
    import onnxruntime as ort

    return {"cpu_flags": vector_flags(), "onnxruntime": ort.__version__}


def graph_digest(path: str | os.PathLike) -> str:
    """A cheap fingerprint of a graph file and its external weights (if any): their sizes and
    blocks spread over them. Another export, a copy of another model or a file cut short all
    differ, since their weights differ throughout."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (Path(path), Path(str(path) + DATA_SUFFIX)):
        if not part.is_file():
            continue
        size = part.stat().st_size
        digest.update(f"{part.name}:{size};".encode())
        with open(part, "rb") as handle:
            if size <= DIGEST_BLOCKS * DIGEST_BLOCK_BYTES:
                digest.update(handle.read())
                continue
            step = (size - DIGEST_BLOCK_BYTES) // (DIGEST_BLOCKS - 1)
            for block in range(DIGEST_BLOCKS):
                handle.seek(block * step)
                digest.update(handle.read(DIGEST_BLOCK_BYTES))
    return digest.hexdigest()


def optimized_name(file_name: str) -> str:
    """ "model_int8.onnx" -> "model_int8.optimized.onnx"."""
    return file_name.removesuffix(".onnx") + OPTIMIZED_SUFFIX


def store_optimized_graphs(directory: str | os.PathLike, files: dict) -> dict:
    """Save every graph of `files` (precision -> name in `directory`) as onnxruntime optimises it
    for this CPU, its weights in a side file (`<target>_data`); return the "optimized" entry of
    mtnsails.json (file names, the digests of the graphs they were made from, `fingerprint()`)."""
    import onnxruntime as ort

    from mtnsails.inference.generation import session_options

    directory = Path(directory)
    stored, sources = {}, {}
    for precision, name in files.items():
        target = optimized_name(name)
        options = session_options()
        options.optimized_model_filepath = str(directory / target)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", target + DATA_SUFFIX
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", str(EXTERNAL_DATA_MIN_BYTES)
        )
        ort.InferenceSession(str(directory / name), options, providers=["CPUExecutionProvider"])
        stored[precision] = target
        sources[precision] = graph_digest(directory / name)
    return {"files": stored, "sources": sources, **fingerprint()}


def stored_graph(directory: str | os.PathLike, meta: dict, precision: str) -> Path | None:
    """The stored optimised graph of `precision` when it was made for this CPU and onnxruntime
    from the portable graph now in the directory (and exists); None when the portable graph must
    be used (an export older than the recorded digests included)."""
    optimized = meta.get("optimized")
    if not optimized or precision not in optimized["files"]:
        return None
    if {key: optimized.get(key) for key in ("cpu_flags", "onnxruntime")} != fingerprint():
        return None
    path = Path(directory) / optimized["files"][precision]
    portable = Path(directory) / meta["files"][precision]
    if not path.is_file() or not portable.is_file():
        return None
    return path if (optimized.get("sources") or {}).get(precision) == graph_digest(portable) else None
