"""`main.py pipeline`: train -> convert -> a short chat demo, with the flags of all three."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_CONVERSATIONS, assert_one_line_error, run_cli

from mtnsails.cli import build_parser
from mtnsails.commands.pipeline import demo_prompts
from mtnsails.data.handler import ConversationDataHandler
from mtnsails.data.logger import ConversationLogger


def test_pipeline_takes_every_flag_once_and_derives_the_model_paths():
    args = build_parser().parse_args(
        ["pipeline", "--epochs", "2", "--quantize", "int8", "--temperature", "0", "--log-conversations"]
    )
    assert (args.num_epochs, args.quantize, args.temperature, args.log_conversations) == (2, "int8", 0, True)
    assert (args.model_name, args.output_dir, args.onnx_output) == ("distilgpt2", "./trained_model", "./onnx_model")
    assert not hasattr(args, "model_path")  # the trained model feeds convert, its ONNX the chat


def test_demo_asks_standalone_questions_spread_over_the_data(tmp_path):
    data = tmp_path / "data.json"
    data.write_text(
        json.dumps(
            [
                *TINY_CONVERSATIONS,
                {
                    "input": "And then?",
                    "output": "Then it rained.",
                    "history": [{"input": "What happened?", "output": "It got dark."}],
                },
            ]
        )
    )
    prompts = demo_prompts(ConversationDataHandler.from_file(data).conversations)
    assert len(prompts) == 3 and "And then?" not in prompts
    assert prompts[0] == TINY_CONVERSATIONS[0]["input"]


@pytest.mark.slow
def test_pipeline_end_to_end(tmp_path):
    data = tmp_path / "chat_history.json"  # a chat log trains as it is (timestamps and all)
    with ConversationLogger(data) as logger:
        for conversation in TINY_CONVERSATIONS:
            logger.log(conversation["input"], conversation["output"])
    result = run_cli(
        "pipeline",
        "--model-name",
        "tiny",
        "--data-file",
        str(data),
        "--epochs",
        "2",
        "--output-dir",
        "model",
        "--onnx-output",
        "onnx",
        "--max-tokens",
        "8",
        "--eval-split",
        "0.25",
        "--log-conversations",
        "--log-file",
        "demo.jsonl",
        "--promote-to",
        "live",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    stages = [out.index(f"=== [{n}/3]") for n in (1, 2, 3)] + [out.index("=== Summary ===")]
    assert stages == sorted(stages)
    assert f"=== [1/3] train tiny (embedded) on {data} ===" in out
    assert json.loads((tmp_path / "model" / "mtnsails.json").read_text())["data_file"] == str(data)
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    summary = out[stages[-1] :]
    assert f"Trained model: {tmp_path / 'model'} (train loss " in summary
    assert f"python main.py chat --model-path {tmp_path / 'onnx'}" in summary
    assert "Next: python main.py convert" not in out  # the pipeline converts by itself
    # It ends with the scores of the new model on the data it trained on and on the held-out part.
    held_out = json.loads((tmp_path / "model" / "mtnsails.json").read_text())["held_out"]
    assert len(held_out) == 2 and all(0 <= index < 8 for index in held_out)
    assert "Evaluation on the training data: 6 examples: first sentence " in summary
    assert "Evaluation on the eval split: 2 examples: first sentence " in summary
    assert "promoted: first deploy" in out and (tmp_path / "live" / "model.onnx").is_file()

    # The demo's questions and answers show under its own header, not again in the summary.
    demo = out[stages[2] : stages[3]].splitlines()
    asked = [line.split("You:", 1)[1].strip() for line in demo if "You:" in line]
    answered = [line.split("Assistant:", 1)[1].strip() for line in demo if "Assistant:" in line]
    assert "You:" not in summary and "Assistant:" not in summary
    assert asked == demo_prompts(ConversationDataHandler.from_file(data).conversations)
    assert len(answered) == 3
    logged = [json.loads(line) for line in (tmp_path / "demo.jsonl").read_text().splitlines()]
    assert [record["input"] for record in logged] == asked
    assert [record["output"] or "(empty answer)" for record in logged] == answered
    assert any(record["output"] for record in logged)  # the model said something


@pytest.mark.parametrize(
    "data_text, problem",
    [
        (None, "no such file"),
        ('[{"input": "Hi", "output": "Hello."},', "not valid JSON"),
    ],
)
def test_a_bad_data_file_stops_the_pipeline_with_one_line(tmp_path, data_text, problem, cli_here):
    data = tmp_path / "data.json"
    if data_text is not None:
        data.write_text(data_text, encoding="utf-8")
    result = cli_here(
        "pipeline",
        "--model-name",
        "tiny",
        "--data-file",
        str(data),
        "--output-dir",
        "model",
        "--onnx-output",
        "onnx",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {data}") and problem in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "model").exists() and not (tmp_path / "onnx").exists()


@pytest.mark.parametrize(
    "flags, problem",
    [
        (["--top-p", "1.5"], "--top-p (top_p) = 1.5 must be in (0, 1]"),
        (["--max-tokens", "0"], "--max-tokens (max_new_tokens) = 0 must be at least 1"),
        (["--temperature", "nan"], "--temperature: 'nan' is not a finite number"),
        (["--threads", "0"], "--threads (threads) = 0 must be at least 1"),
        (["--log-conversations", "--log-file", "."], "is a directory, expected a chat log file"),
        (["--onnx-output", "model"], "must be separate folders"),
        (["--onnx-output", "model/onnx"], "must be separate folders"),
        (["--precision", "int8", "--quantize", "int4"], "--precision int8 needs --quantize int8"),
        (["--opset-version", "13"], "--opset-version 13 must be from 14 to 20"),
    ],
)
def test_every_stage_setting_is_checked_before_any_work(tmp_path, flags, problem, cli_here):
    args = ["pipeline", "--model-name", "tiny", "--output-dir", "model", "--onnx-output", "onnx", *flags]
    result = cli_here(*args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert problem in result.stderr.splitlines()[-1], result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written


def test_pipeline_refuses_a_live_directory_that_is_not_a_model_before_training(tmp_path, cli_here):
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "notes.txt").write_text("mine")
    result = cli_here("pipeline", "--model-name", "tiny", "--promote-to", "live", "--output-dir", "model", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "not an ONNX model directory" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["live"]  # nothing trained


def test_a_bad_opset_fails_at_once_without_training(tmp_path):
    result = run_cli(
        "pipeline",
        "--model-name",
        "tiny",
        "--output-dir",
        "model",
        "--onnx-output",
        "onnx",
        "--opset-version",
        "99",
        cwd=tmp_path,
    )
    assert_one_line_error(result, "--opset-version 99 must be from 14 to 20")
    assert result.stdout == "" and list(tmp_path.iterdir()) == []  # no stage began, nothing written


def test_the_first_stage_names_the_model_really_trained(tmp_path, cli_here):
    """Offline, the default distilgpt2 falls back to the embedded model: the stage header says
    so (the quality gate then stops this run before any training)."""
    data = tmp_path / "bad.json"
    data.write_text(json.dumps([{"input": f"Question {i}?", "output": "ok ok ok ok ok ok ok ok"} for i in range(10)]))
    result = cli_here(
        "pipeline", "--data-file", str(data), "--output-dir", "model", "--onnx-output", "onnx", cwd=tmp_path
    )
    assert result.returncode == 2 and "--force" in result.stderr.splitlines()[-1]
    header = result.stdout.strip().splitlines()[0]
    assert header == f"=== [1/3] train tiny (embedded; distilgpt2 needs the network) on {data} ==="
