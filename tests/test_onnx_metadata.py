"""mtnsails.json of an ONNX directory: what the converter writes, and what the reader refuses."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_CONVERSATIONS, run_cli

from mtnsails.core.errors import MtnsailsError
from mtnsails.inference.engine import ChatEngine
from mtnsails.inference.question_matcher import ANSWERS_THRESHOLD
from mtnsails.model_dir.onnx_metadata import read_onnx_directory


def _edit(directory, **changes) -> None:
    meta_file = directory / "mtnsails.json"
    meta = json.loads(meta_file.read_text())
    meta.update(changes)
    meta_file.write_text(json.dumps({key: value for key, value in meta.items() if value is not ...}))


def test_reader_returns_what_the_converter_wrote(tiny_onnx_dir):
    meta = read_onnx_directory(tiny_onnx_dir)
    assert meta["format"] == "mtnsails-onnx"
    assert meta["files"] == {"fp32": "model.onnx", "int8": "model_int8.onnx"}
    assert isinstance(meta["eos_token_id"], int) and meta["context_length"] >= 1
    assert meta["system"] is None and meta["answer_tokens"]["max"] >= 1  # from the training data
    # each question asked with nothing before it (stand-alone, or a history's first that is a
    # question) with its answer
    openings = [c for c in TINY_CONVERSATIONS if not c.get("history")]
    openings += [
        c["history"][0] for c in TINY_CONVERSATIONS if c.get("history") and c["history"][0]["input"].endswith("?")
    ]
    assert meta["questions"] == [c["input"] for c in openings] and "Which country is Paris in?" in meta["questions"]
    assert meta["question_answers"] == [c["output"] for c in openings]
    matcher = ChatEngine(tiny_onnx_dir).matcher  # matches on both
    assert matcher.threshold == ANSWERS_THRESHOLD and matcher.match("Who is the author of Hamlet?")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"context_length": 0}, '"context_length" must be a positive integer, got 0'),
        ({"context_length": -5}, '"context_length" must be a positive integer, got -5'),
        ({"context_length": 12.5}, '"context_length" must be a positive integer, got 12.5'),
        ({"context_length": "1024"}, '"context_length" must be a positive integer, got "1024"'),
        ({"eos_token_id": "eos"}, '"eos_token_id" must be a non-negative integer, got "eos"'),
        ({"eos_token_id": True}, '"eos_token_id" must be a non-negative integer, got true'),
        ({"files": ...}, 'no "files" map'),
        ({"files": ["model.onnx"]}, '"files" must map precisions'),
        ({"files": {}}, '"files" must map precisions'),
        ({"files": {"fp16": "model.onnx"}}, "\"files\" has unknown precision 'fp16'"),
        ({"files": {"fp32": "../model.onnx"}}, '"files".fp32 must be a file name in the model directory'),
        ({"files": {"fp32": 3}}, '"files".fp32 must be a file name in the model directory, got 3'),
        ({"template": {"template": "no placeholders"}}, "must contain '{input}' once"),
        ({"template": "User: {input}"}, '"template" must be an object of strings'),
        ({"system": 3}, '"system" must be a string (the system prompt) or null, got 3'),
        ({"answer_tokens": {"max": 0}}, '"answer_tokens" must be an object with a positive integer "max"'),
        ({"answer_tokens": [40]}, '"answer_tokens" must be an object with a positive integer "max"'),
        ({"kv_cache": "ring"}, '"kv_cache" must be "shared" or absent, got "ring"'),
        ({"history_exchanges": -1}, '"history_exchanges" must be a non-negative integer or null, got -1'),
        ({"questions": "What?"}, '"questions" must be a list of strings'),
        ({"questions": [1, 2]}, '"questions" must be a list of strings'),
        ({"question_answers": ["only one"]}, '"question_answers" must be a list of strings, one per question'),
        ({"optimized": {"cpu_flags": []}}, '"optimized" must be an object with a "files" map'),
        (
            {"optimized": {"files": {"fp32": "/etc/passwd"}, "cpu_flags": [], "onnxruntime": "1"}},
            '"optimized.files".fp32 must be a file name in the model directory',
        ),
        (
            {"optimized": {"files": {"fp32": "model.optimized.onnx"}, "cpu_flags": "avx2", "onnxruntime": "1"}},
            '"optimized" must record "cpu_flags" (a list of strings)',
        ),
    ],
)
def test_reader_refuses_bad_metadata_naming_file_and_field(editable_onnx_dir, changes, message):
    _edit(editable_onnx_dir, **changes)
    with pytest.raises(MtnsailsError) as error:
        read_onnx_directory(editable_onnx_dir)
    assert str(error.value).startswith(f"{editable_onnx_dir / 'mtnsails.json'}: ")
    assert message in str(error.value)


def test_files_map_listing_no_existing_file_is_refused(editable_onnx_dir):
    _edit(editable_onnx_dir, files={"fp32": "elsewhere.onnx"})
    with pytest.raises(MtnsailsError, match="not an ONNX model directory \\(no elsewhere.onnx\\)"):
        read_onnx_directory(editable_onnx_dir)


def test_pytorch_model_directory_is_pointed_to_convert(trained_tiny_model_dir):
    with pytest.raises(MtnsailsError, match="is a PyTorch model, not an ONNX model directory"):
        read_onnx_directory(trained_tiny_model_dir)


def test_chat_reports_bad_metadata_in_one_line_with_exit_2(editable_onnx_dir):
    _edit(editable_onnx_dir, context_length=0)
    result = run_cli("chat", "--model-path", str(editable_onnx_dir), "--prompt", "Hello!")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        f'error: {editable_onnx_dir / "mtnsails.json"}: "context_length" must be a positive integer, got 0\n'
    )
