"""int4 weights: `convert --quantize int4 --verify`, then chat with the int4 file, on the tiny model."""

from __future__ import annotations

import json

import onnx
import pytest
from conftest import TINY_CONVERSATIONS, run_cli

pytestmark = pytest.mark.slow


def test_int4_round_trip_through_convert_verify_and_chat(trained_tiny_model_dir, tmp_path,
                                                         cli_here):
    output = tmp_path / "onnx"
    converted = cli_here("convert", "--model-path", str(trained_tiny_model_dir),
                         "--onnx-output", str(output), "--quantize", "int4", "--verify")
    assert converted.returncode == 0, converted.stderr
    assert "int4 greedy token agrees with fp32 PyTorch on" in converted.stdout
    meta = json.loads((output / "mtnsails.json").read_text())
    assert meta["files"] == {"fp32": "model.onnx", "int4": "model_int4.onnx"}

    # Every weight matrix became MatMulNBits (4 per layer + the head); the embedding reads the
    # head's int4 blocks, so no fp32 copy of it is left: the file is about 1/5 of fp32.
    graph = onnx.load(str(output / "model_int4.onnx")).graph
    ops = [node.op_type for node in graph.node]
    layers = json.loads((output / "config.json").read_text())["n_layer"]
    assert ops.count("MatMulNBits") == 4 * layers + 1 and "Gemm" not in ops
    assert ops.count("GatherBlockQuantized") == 1
    assert not any(tensor.name == "transformer.wte.weight" for tensor in graph.initializer)
    assert (output / "model_int4.onnx").stat().st_size < (output / "model.onnx").stat().st_size / 4

    conversation = TINY_CONVERSATIONS[0]
    answered = run_cli("chat", "--model-path", str(output), "--precision", "int4", "--temperature", "0",
                       "--prompt", conversation["input"])
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout == conversation["output"] + "\n"


def test_gemm_becomes_matmul_plus_bias_on_the_same_weight(tiny_onnx_dir):
    from mtnsails.int4_quantizer import gemm_to_matmul

    model = onnx.load(str(tiny_onnx_dir / "model.onnx"))
    weights = sum(tensor.ByteSize() for tensor in model.graph.initializer)
    gemms = [node for node in model.graph.node if node.op_type == "Gemm"]
    assert gemm_to_matmul(model.graph) == len(gemms) > 0
    assert not any(node.op_type == "Gemm" for node in model.graph.node)
    assert sum(tensor.ByteSize() for tensor in model.graph.initializer) == weights  # nothing copied


def test_a_converted_directory_quantizes_its_untransposed_head_too(tiny_onnx_dir, tmp_path):
    from mtnsails.int4_quantizer import quantize_int4

    # convert leaves the fp32 head as FusedMatMul(x, wte, transB=1): it is still the tied head.
    quantize_int4(tiny_onnx_dir / "model.onnx", tmp_path / "model_int4.onnx")
    ops = [node.op_type for node in onnx.load(str(tmp_path / "model_int4.onnx")).graph.node]
    assert "FusedMatMul" not in ops and ops.count("GatherBlockQuantized") == 1
