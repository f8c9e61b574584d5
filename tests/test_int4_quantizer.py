"""int4 weights: `convert --quantize int4 --verify`, then chat with the int4 file, on the tiny model."""

from __future__ import annotations

import json

import onnx
import pytest
from conftest import TINY_CONVERSATIONS, run_cli

pytestmark = pytest.mark.slow


def test_int4_round_trip_through_convert_verify_and_chat(trained_tiny_model_dir, tmp_path, cli_here):
    output = tmp_path / "onnx"
    converted = cli_here(
        "convert",
        "--model-path",
        str(trained_tiny_model_dir),
        "--onnx-output",
        str(output),
        "--quantize",
        "int4",
        "--verify",
    )
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
    answered = run_cli(
        "chat",
        "--model-path",
        str(output),
        "--precision",
        "int4",
        "--temperature",
        "0",
        "--prompt",
        conversation["input"],
    )
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout == conversation["output"] + "\n"


def test_gemm_becomes_matmul_plus_bias_on_the_same_weight(tmp_path):
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from mtnsails.export.int4 import gemm_to_matmul

    # convert already multiplies GPT-2's activations without Gemm (see unflatten_linears): a
    # 2-D linear layer of another export still reaches the quantizer as Gemm.
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="linear")],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 3])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    weights = sum(tensor.ByteSize() for tensor in model.graph.initializer)
    assert gemm_to_matmul(model.graph) == 1
    assert [node.op_type for node in model.graph.node] == ["MatMul", "Add"]
    assert sum(tensor.ByteSize() for tensor in model.graph.initializer) == weights  # nothing copied
    onnx.save(model, str(tmp_path / "linear.onnx"))
    x = rng.standard_normal((5, 8)).astype(np.float32)
    (y,) = ort.InferenceSession(str(tmp_path / "linear.onnx")).run(None, {"x": x})
    assert np.allclose(y, x @ weight + bias, atol=1e-5)
    # A transposed weight is not a plain MatMul of it: left as it is.
    del graph.node[:]
    graph.node.append(helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="linear", transB=1))
    assert gemm_to_matmul(graph) == 0 and [node.op_type for node in graph.node] == ["Gemm"]


def test_a_converted_directory_quantizes_its_untransposed_head_too(tiny_onnx_dir, tmp_path):
    from mtnsails.export.int4 import quantize_int4

    # convert leaves the fp32 head as FusedMatMul(x, wte, transB=1): it is still the tied head.
    quantize_int4(tiny_onnx_dir / "model.onnx", tmp_path / "model_int4.onnx")
    ops = [node.op_type for node in onnx.load(str(tmp_path / "model_int4.onnx")).graph.node]
    assert "FusedMatMul" not in ops and ops.count("GatherBlockQuantized") == 1
