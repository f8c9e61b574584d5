"""ONNXConverter: a real optimum export of the embedded model, checked against PyTorch."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import nan_copy, read_only_directory, run_cli

from mtnsails.core.errors import MtnsailsError
from mtnsails.export.converter import ONNXConverter
from mtnsails.inference.generation import OnnxDecoder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def untrained_onnx_dir(untrained_tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("untrained_onnx") / "onnx"
    ONNXConverter(untrained_tiny_model_dir, quiet=True).convert_to_onnx(path)
    return path


def test_export_writes_a_complete_chat_directory(untrained_onnx_dir):
    names = {path.name for path in untrained_onnx_dir.iterdir()}
    assert {"model.onnx", "tokenizer.json", "config.json", "generation_config.json", "mtnsails.json"} <= names
    assert "model_int8.onnx" not in names
    meta = json.loads((untrained_onnx_dir / "mtnsails.json").read_text())
    assert meta["format"] == "mtnsails-onnx" and meta["version"] == 1
    assert meta["files"] == {"fp32": "model.onnx"}
    assert meta["context_length"] == 512 and meta["eos_token_id"] == 0
    assert meta["template"] == {"template": "User: {input}\nAssistant: {output}", "separator": "\n"}
    # One graph with a KV cache: past_key_values.* in, present.* out.
    session = ort.InferenceSession(str(untrained_onnx_dir / "model.onnx"))
    inputs = {value.name for value in session.get_inputs()}
    outputs = {value.name for value in session.get_outputs()}
    assert {"input_ids", "attention_mask", "position_ids", "past_key_values.0.key"} <= inputs
    assert {"logits", "present.0.key", "present.3.value"} <= outputs
    # Tied embedding / LM head stored once (accelerate installed): about the safetensors size.
    info = ONNXConverter.get_model_info(untrained_onnx_dir)
    assert info["format"] == "onnx" and info["files"]["model.onnx"] < 1.1 * 4 * 3_521_536 + 1e6


def test_linear_layers_multiply_the_activations_as_they_are(untrained_onnx_dir):
    # No Gemm between a flattening Reshape and one back, with the ten shape nodes computing them
    # at every step: MatMul + Add on [batch, positions, hidden] (the logits test checks the result).
    graph = onnx.load(str(untrained_onnx_dir / "model.onnx"), load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    layers = json.loads((untrained_onnx_dir / "config.json").read_text())["n_layer"]
    assert "Gemm" not in ops and ops.count("MatMul") == 4 * layers
    matmul_inputs = {node.input[0] for node in graph.node if node.op_type == "MatMul"}
    assert not any(node.op_type == "Reshape" and node.output[0] in matmul_inputs for node in graph.node)


def test_onnx_logits_match_pytorch_within_1e_4(untrained_tiny_model_dir, untrained_onnx_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(untrained_tiny_model_dir).eval()
    ids = list(range(10, 40))
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].numpy()
    decoder = OnnxDecoder(untrained_onnx_dir / "model.onnx")
    # The first half as a prompt in one pass, then the rest one token at a time through the KV
    # cache. The exported graph returns the last position's logits only.
    logits = np.concatenate([decoder.forward(ids[:15])] + [decoder.forward([token]) for token in ids[15:]])
    assert logits.shape == reference[14:].shape == (16, 902)
    assert np.abs(logits - reference[14:]).max() < 1e-4


def test_verify_reports_agreement(untrained_tiny_model_dir, untrained_onnx_dir):
    report = ONNXConverter(untrained_tiny_model_dir, quiet=True).verify(untrained_onnx_dir)
    assert report.ok, report.problems
    assert report.max_logit_diff < 1e-4 and report.greedy_match and report.prompts == 3
    assert report.int8_agreement is None


def test_verify_fails_when_onnx_is_another_model(untrained_onnx_dir, tmp_path):
    from mtnsails.train.models import EmbeddedModelSpec, build_embedded_model

    # Same tokenizer, other random weights: the ONNX file no longer matches this model.
    model, tokenizer = build_embedded_model(
        ["User: hello\nAssistant: Hello! How can I help?"], EmbeddedModelSpec(seed=1)
    )
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    report = ONNXConverter(tmp_path, quiet=True).verify(untrained_onnx_dir)
    assert not report.ok
    assert any("max logit difference" in problem for problem in report.problems)


def test_verify_fails_on_a_model_that_computes_nan(untrained_tiny_model_dir, untrained_onnx_dir, tmp_path):
    model = nan_copy(untrained_tiny_model_dir, tmp_path / "model")
    onnx_dir = nan_copy(untrained_onnx_dir, tmp_path / "onnx")  # as convert exports such a model
    with pytest.raises(MtnsailsError, match="non-finite logits"):
        ONNXConverter(model, quiet=True).verify(onnx_dir)


def test_int8_file_exists_and_agrees_on_argmax(trained_tiny_model_dir, tiny_onnx_dir):
    meta = json.loads((tiny_onnx_dir / "mtnsails.json").read_text())
    assert meta["files"] == {"fp32": "model.onnx", "int8": "model_int8.onnx"}
    fp32_size = (tiny_onnx_dir / "model.onnx").stat().st_size
    assert (tiny_onnx_dir / "model_int8.onnx").stat().st_size < fp32_size / 3
    # Every weight MatMul became an integer MatMul (4 layers x 4, the LM head too); attention
    # (fused, its cache growing in place) is not quantized.
    import onnx

    ops = [node.op_type for node in onnx.load(str(tiny_onnx_dir / "model_int8.onnx")).graph.node]
    assert "MatMul" not in ops and ops.count("MatMulInteger") == 4 * 4 + 1
    assert ops.count("GroupQueryAttention") == 4 and meta["kv_cache"] == "shared"
    report = ONNXConverter(trained_tiny_model_dir, quiet=True).verify(tiny_onnx_dir)
    assert report.ok, report.problems
    assert report.int8_agreement >= 0.9


def test_template_comes_from_the_trained_model(trained_tiny_model_dir, tiny_onnx_dir):
    trained = json.loads((trained_tiny_model_dir / "mtnsails.json").read_text())
    exported = json.loads((tiny_onnx_dir / "mtnsails.json").read_text())
    assert exported["template"] == trained["template"]
    assert exported["source_model"] == str(trained_tiny_model_dir.resolve())


def test_failed_export_leaves_the_old_directory_untouched(untrained_tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(untrained_tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    output = tmp_path / "onnx"
    output.mkdir()
    (output / "mtnsails.json").write_text(json.dumps({"format": "mtnsails-onnx"}))  # an earlier export
    with pytest.raises(MtnsailsError, match="cannot export"):
        ONNXConverter(broken, quiet=True).convert_to_onnx(output)
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".onnx")] == []
    assert [path.name for path in output.iterdir()] == ["mtnsails.json"]


def test_export_never_overwrites_a_folder_of_the_users(untrained_tiny_model_dir, tmp_path):
    output = tmp_path / "docs"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    with pytest.raises(MtnsailsError, match="not an mtnsails output"):
        ONNXConverter(untrained_tiny_model_dir, quiet=True).convert_to_onnx(output)
    assert (output / "notes.txt").read_text() == "mine"


def test_cli_convert_never_replaces_an_export_holding_a_chat_log(
    untrained_tiny_model_dir, untrained_onnx_dir, tmp_path
):
    output = tmp_path / "onnx"
    shutil.copytree(untrained_onnx_dir, output)
    (output / "chat_history.json").write_text("[]")
    result = run_cli("convert", "--model-path", str(untrained_tiny_model_dir), "--onnx-output", str(output))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {output}: holds files mtnsails did not write (chat_history.json)"), (
        result.stderr
    )
    assert (output / "chat_history.json").read_text() == "[]"


def test_cli_convert_refuses_a_read_only_output_folder(untrained_tiny_model_dir, tmp_path):
    read_only = read_only_directory(tmp_path)
    result = run_cli("convert", "--model-path", str(untrained_tiny_model_dir), "--onnx-output", str(read_only / "onnx"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {read_only}: cannot be written"), result.stderr


def test_original_api(untrained_tiny_model_dir, untrained_onnx_dir):
    converter = ONNXConverter(untrained_tiny_model_dir, quiet=True)
    assert converter.verify_onnx_model(untrained_onnx_dir, test_text="Hello, how are you?") is True
    info = ONNXConverter.get_model_info(untrained_tiny_model_dir)
    assert info["format"] == "pytorch" and info["parameters"] == 3_521_536 and info["layers"] == 4


def test_cli_convert_quantize_and_verify(untrained_tiny_model_dir, tmp_path, cli_here):
    result = cli_here(
        "convert",
        "--model-path",
        str(untrained_tiny_model_dir),
        "--onnx-output",
        str(tmp_path / "onnx"),
        "--quantize",
        "int8",
        "--verify",
    )
    assert result.returncode == 0, result.stderr
    assert "exported model.onnx" in result.stdout and "quantized model_int8.onnx" in result.stdout
    assert (
        "greedy continuations agree" in result.stdout and "int8 greedy token agrees with fp32 PyTorch" in result.stdout
    )
    assert (tmp_path / "onnx" / "model_int8.onnx").exists()


def test_cli_convert_quiet_prints_nothing(untrained_tiny_model_dir, tmp_path):
    # a process of its own: a warning shown once per process would not show in this one
    result = run_cli(
        "convert", "--model-path", str(untrained_tiny_model_dir), "--onnx-output", str(tmp_path / "onnx"), "--quiet"
    )
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    assert (tmp_path / "onnx" / "model.onnx").exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist or is not a directory"),
        ("onnx_dir", "is already an ONNX model directory"),
        ("not_a_model", "is not a trained model directory"),
        ("inside_model", "must not be the model directory or inside it"),
        ("pickle_only", "pytorch_model.bin: not a PyTorch weights file"),  # and no TensorFlow noise
    ],
)
def test_cli_convert_errors(case, message, untrained_tiny_model_dir, untrained_onnx_dir, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"model_type": "gpt2"}')
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps({"not": "weights"}))
    model, output = {
        "pickle_only": (pickled, tmp_path / "out"),
        "missing": (tmp_path / "nowhere", tmp_path / "out"),
        "onnx_dir": (untrained_onnx_dir, tmp_path / "out"),
        "not_a_model": (tmp_path, tmp_path / "out"),
        "inside_model": (untrained_tiny_model_dir, untrained_tiny_model_dir / "onnx"),
    }[case]
    result = run_cli("convert", "--model-path", str(model), "--onnx-output", str(output))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr, result.stderr
    assert not output.exists()


def test_a_damaged_tokenizer_is_named_with_its_parse_error(untrained_tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(untrained_tiny_model_dir, model)
    (model / "tokenizer.json").write_text('{"version": "1.0", "model": ', encoding="utf-8")  # cut short
    with pytest.raises(MtnsailsError, match=r"tokenizer\.json: cannot be read as a tokenizer \(.*EOF"):
        ONNXConverter(model)


def test_converter_rejects_bad_quantize(untrained_tiny_model_dir, tmp_path):
    with pytest.raises(MtnsailsError, match="quantize"):
        ONNXConverter(untrained_tiny_model_dir).convert_to_onnx(tmp_path / "x", quantize="int5")


def test_model_info_of_a_broken_config_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(MtnsailsError, match=r"config\.json: not valid JSON"):
        ONNXConverter.get_model_info(tmp_path)
