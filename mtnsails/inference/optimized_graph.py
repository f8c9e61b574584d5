"""Graphs stored as onnxruntime optimised them, so chat starts without optimising again.

Loading an exported graph spends most of its time in onnxruntime's graph optimisation.
`convert` therefore also saves each graph after that optimisation (`<name>.optimized.onnx`) and
records, in mtnsails.json, the CPU vector flags and onnxruntime version it was made with: the
fully optimised graph may use kernels and layouts of this CPU. Chat loads it with optimisation
switched off only where both still match, and falls back to the portable graph otherwise or when
it cannot be loaded.

Its weights sit in a side file (`<name>.optimized.onnx_data`, large tensors page-aligned), which
onnxruntime memory-maps instead of parsing them out of the protobuf and copying them: it
loads several times faster (bench/chat_bench.py's cold start; docs/performance.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from mtnsails.core.cpu import vector_flags

OPTIMIZED_SUFFIX = ".optimized.onnx"
DATA_SUFFIX = "_data"
EXTERNAL_DATA_MIN_BYTES = 1024  # tensors above this go to the side file (the weights; shapes stay inline)


def fingerprint() -> dict:
    """What a stored optimised graph depends on: this CPU's vector flags and onnxruntime's version."""
    import onnxruntime as ort

    return {"cpu_flags": vector_flags(), "onnxruntime": ort.__version__}


def optimized_name(file_name: str) -> str:
    """"model_int8.onnx" -> "model_int8.optimized.onnx"."""
    return file_name.removesuffix(".onnx") + OPTIMIZED_SUFFIX


def store_optimized_graphs(directory: str | os.PathLike, files: dict) -> dict:
    """Save every graph of `files` (precision -> name in `directory`) as onnxruntime optimises it
    for this CPU, its weights in a side file (`<target>_data`); return the "optimized" entry of
    mtnsails.json (file names + `fingerprint()`)."""
    import onnxruntime as ort

    from mtnsails.inference.generation import session_options

    directory = Path(directory)
    stored = {}
    for precision, name in files.items():
        target = optimized_name(name)
        options = session_options()
        options.optimized_model_filepath = str(directory / target)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         target + DATA_SUFFIX)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                         str(EXTERNAL_DATA_MIN_BYTES))
        ort.InferenceSession(str(directory / name), options, providers=["CPUExecutionProvider"])
        stored[precision] = target
    return {"files": stored, **fingerprint()}


def stored_graph(directory: str | os.PathLike, meta: dict, precision: str) -> Path | None:
    """The stored optimised graph of `precision` when it was made for this CPU and onnxruntime
    (and exists); None when the portable graph must be used."""
    optimized = meta.get("optimized")
    if not optimized or precision not in optimized["files"]:
        return None
    if {key: optimized.get(key) for key in ("cpu_flags", "onnxruntime")} != fingerprint():
        return None
    path = Path(directory) / optimized["files"][precision]
    return path if path.is_file() else None
