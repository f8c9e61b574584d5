"""Graphs stored optimised at convert time: used where they fit this CPU, the portable graph elsewhere."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import TINY_CONVERSATIONS, run_cli

from mtnsails.core.errors import MtnsailsError
from mtnsails.inference.chat import ChatInterface
from mtnsails.inference.generation_config import GenerationConfig
from mtnsails.inference.optimized_graph import fingerprint

pytestmark = pytest.mark.slow
GREEDY = GenerationConfig(temperature=0, max_new_tokens=20)
QUESTION, ANSWER = TINY_CONVERSATIONS[4]["input"], TINY_CONVERSATIONS[4]["output"]


def _record(directory, **changes) -> None:
    meta_file = directory / "mtnsails.json"
    meta = json.loads(meta_file.read_text())
    meta["optimized"].update(changes)
    meta_file.write_text(json.dumps(meta))


def test_convert_stores_an_optimised_graph_per_precision_for_this_cpu(tiny_onnx_dir):
    optimized = json.loads((tiny_onnx_dir / "mtnsails.json").read_text())["optimized"]
    assert optimized["files"] == {"fp32": "model.optimized.onnx", "int8": "model_int8.optimized.onnx"}
    assert {key: optimized[key] for key in ("cpu_flags", "onnxruntime")} == fingerprint()
    for precision in ("fp32", "int8"):
        chat = ChatInterface(tiny_onnx_dir, precision=precision, generation=GREEDY)
        assert chat.graph_file.name == optimized["files"][precision]
        assert chat.reply(QUESTION) == ANSWER


@pytest.mark.parametrize(
    "change", [{"cpu_flags": ["avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8", "x"]}, {"onnxruntime": "0.0.1"}]
)
def test_a_graph_optimised_for_another_cpu_or_onnxruntime_is_not_used(editable_onnx_dir, change):
    _record(editable_onnx_dir, **change)
    chat = ChatInterface(editable_onnx_dir, precision="int8", generation=GREEDY)
    assert chat.graph_file.name == "model_int8.onnx"
    assert chat.reply(QUESTION) == ANSWER


def test_a_corrupt_optimised_graph_falls_back_to_the_portable_one(editable_onnx_dir):
    (editable_onnx_dir / "model_int8.optimized.onnx").write_bytes(b"\x08garbage" * 100)
    chat = ChatInterface(editable_onnx_dir, precision="int8", generation=GREEDY)
    assert chat.graph_file.name == "model_int8.onnx"
    result = run_cli(
        "chat",
        "--model-path",
        str(editable_onnx_dir),
        "--precision",
        "int8",
        "--temperature",
        "0",
        "--prompt",
        QUESTION,
    )
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == ANSWER + "\n"


def test_a_model_onnx_copied_over_from_another_export_runs_as_itself(editable_onnx_dir, system_tiny_onnx_dir):
    """The stored graph was made from the old model.onnx: it must not answer for the new one."""
    old = ChatInterface(editable_onnx_dir, precision="fp32", generation=GREEDY).reply(QUESTION)
    shutil.copy(system_tiny_onnx_dir / "model.onnx", editable_onnx_dir / "model.onnx")
    chat = ChatInterface(editable_onnx_dir, precision="fp32", generation=GREEDY)
    assert chat.graph_file.name == "model.onnx" and chat.reply(QUESTION) != old


@pytest.mark.parametrize("keep", [0.5, 0])
def test_a_model_onnx_cut_short_or_emptied_is_refused_naming_it(editable_onnx_dir, keep):
    graph = editable_onnx_dir / "model.onnx"
    graph.write_bytes(graph.read_bytes()[: int(graph.stat().st_size * keep)])
    with pytest.raises(MtnsailsError, match="model.onnx"):
        ChatInterface(editable_onnx_dir, precision="fp32")
    result = run_cli("chat", "--model-path", str(editable_onnx_dir), "--precision", "fp32", "--prompt", QUESTION)
    assert result.returncode == 2 and "model.onnx" in result.stderr and "Traceback" not in result.stderr


def test_a_missing_optimised_graph_falls_back_to_the_portable_one(editable_onnx_dir):
    (editable_onnx_dir / "model.optimized.onnx").unlink()
    assert ChatInterface(editable_onnx_dir, precision="fp32").graph_file.name == "model.onnx"


def test_the_optimised_graph_keeps_its_weights_in_a_side_file_and_falls_back_without_it(editable_onnx_dir):
    graph, weights = (
        editable_onnx_dir / "model_int8.optimized.onnx",
        editable_onnx_dir / "model_int8.optimized.onnx_data",
    )
    assert weights.stat().st_size > graph.stat().st_size  # onnxruntime maps the weights, not parses them
    weights.unlink()
    chat = ChatInterface(editable_onnx_dir, precision="int8", generation=GREEDY)
    assert chat.graph_file.name == "model_int8.onnx"
    assert chat.reply(QUESTION) == ANSWER
