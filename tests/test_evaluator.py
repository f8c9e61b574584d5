"""Evaluator: the tiny trained model's answers scored against its data, alone and in one session,
against a baseline; the `evaluate` command's report, JSON and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, TINY_CONVERSATIONS, run_cli

from mtnsails.core.errors import MtnsailsError
from mtnsails.inference.chat import ChatInterface
from mtnsails.inference.generation_config import GenerationConfig
from mtnsails.loop.evaluator import (
    Comparison,
    Evaluator,
    ExampleResult,
    first_sentence_match,
    format_report,
    normalize_answer,
    token_f1,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("evaluate") / "tiny.json"
    path.write_text(json.dumps(TINY_CONVERSATIONS))
    return path


def test_squad_normalisation_and_token_f1():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert token_f1("the cat sat", "A cat sat down.") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("dog", "cat") == 0.0


def test_first_sentence_match_ignores_case_spacing_quotes_and_the_final_stop():
    reference = "It’s the  capital of France. It is big."
    assert first_sentence_match("it's the capital of france, and more.", reference)
    assert first_sentence_match("Yes. It's the capital of France", reference)
    assert not first_sentence_match("It's the capital of Frances.", reference)  # whole words only
    assert not first_sentence_match("It is big.", reference)
    assert first_sentence_match("", "") and not first_sentence_match("anything", " ")


def test_trained_answers_score_full_marks_alone(tiny_onnx_dir, data_file):
    seen = []
    report = Evaluator(tiny_onnx_dir, progress=lambda done, total: seen.append((done, total))).evaluate_file(data_file)
    assert report.examples == len(TINY_CONVERSATIONS) and seen[-1] == (8, 8)
    assert (report.exact_match, report.first_sentence_match, report.token_f1) == (1.0, 1.0, 1.0)
    last = report.results[-1]  # multi-turn: the final answer, with the record's history in context
    assert (last.history, last.answer) == (1, TINY_CONVERSATIONS[-1]["output"])
    assert last.answer_tokens > 0 and not last.truncated and report.worst() == []
    summary = report.to_dict()
    assert summary["examples"] == 8 and len(summary["results"]) == 8
    assert summary["results"][0]["answer"] == TINY_CONVERSATIONS[0]["output"]


def test_session_asks_the_questions_in_one_conversation(tiny_onnx_dir):
    report = Evaluator(tiny_onnx_dir, session=True).evaluate(TINY_CONVERSATIONS)
    chat = ChatInterface(tiny_onnx_dir, generation=GenerationConfig(temperature=0, repetition_penalty=1.0))
    for conversation, result in zip(TINY_CONVERSATIONS, report.results):
        chat.history += [(turn["input"], turn["output"]) for turn in conversation.get("history", [])]
        assert result.answer == chat.reply(conversation["input"])
    # The conversation grew to every exchange: each answer was given with all before it.
    assert len(chat.history) == len(TINY_CONVERSATIONS) + 1 and report.session


def test_a_token_limit_marks_answers_truncated(tiny_onnx_dir):
    report = Evaluator(tiny_onnx_dir, max_new_tokens=3).evaluate(TINY_CONVERSATIONS[:2])
    assert all(result.truncated and result.answer_tokens == 3 for result in report.results)
    assert report.truncated == 2 and report.first_sentence_match == 0.0


def test_comparison_with_a_baseline(tiny_onnx_dir, worse_onnx_dir, data_file):
    good = Evaluator(tiny_onnx_dir).evaluate_file(data_file)
    bad = Evaluator(worse_onnx_dir).evaluate_file(data_file)
    assert bad.first_sentence_match < good.first_sentence_match - 0.5
    assert Comparison(good, bad).passed and Comparison(good, bad).worse == []
    regression = Comparison(bad, good, tolerance=0.02)
    assert not regression.passed and len(regression.worse) >= 4
    assert Comparison(bad, good, tolerance=1.0).passed
    data = regression.to_dict()
    assert data["baseline"]["first_sentence_match"] == 1.0 and len(data["baseline"]["results"]) == 8
    assert {item["index"] for item in data["baseline"]["worse"]} == {new.index for new, _ in regression.worse}
    text = format_report(bad, regression)
    assert "baseline" in text and "WORSE than the baseline" in text and "Worst" in text


def test_not_an_onnx_directory_fails_before_any_work(trained_tiny_model_dir, tmp_path):
    with pytest.raises(MtnsailsError, match="is a PyTorch model, not an ONNX model directory"):
        Evaluator(trained_tiny_model_dir)
    with pytest.raises(MtnsailsError, match="does not exist"):
        Evaluator(tmp_path / "missing")


def test_example_result_scores():
    result = ExampleResult.score(0, "q", "Paris is in France. Lovely.", "paris is in france", 5, False)
    assert result.first_sentence_match and not result.exact_match and 0 < result.token_f1 < 1


# -- the `evaluate` command ------------------------------------------------------------------


def test_cli_json_report_and_exit_codes_against_a_baseline(tiny_onnx_dir, worse_onnx_dir, data_file):
    result = run_cli("evaluate", "--model-path", str(tiny_onnx_dir), "--data-file", str(data_file), "--json", "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    data = json.loads(result.stdout)
    assert {"model", "examples", "exact_match", "first_sentence_match", "token_f1", "results"} <= data.keys()
    assert (data["model"], data["examples"], data["first_sentence_match"]) == (str(tiny_onnx_dir), 8, 1.0)
    assert "baseline" not in data and len(data["results"]) == 8

    better = run_cli(
        "evaluate",
        "--model-path",
        str(tiny_onnx_dir),
        "--data-file",
        str(data_file),
        "--baseline",
        str(worse_onnx_dir),
        "--json",
        "--quiet",
    )
    assert better.returncode == 0, better.stderr
    assert json.loads(better.stdout)["baseline"]["worse"] == []

    worse = run_cli(
        "evaluate",
        "--model-path",
        str(worse_onnx_dir),
        "--data-file",
        str(data_file),
        "--baseline",
        str(tiny_onnx_dir),
        "--json",
        "--quiet",
    )
    assert worse.returncode == 1, worse.stderr
    data = json.loads(worse.stdout)
    baseline = data["baseline"]
    assert {
        "model",
        "examples",
        "exact_match",
        "first_sentence_match",
        "token_f1",
        "results",
        "worse",
    } <= baseline.keys()
    assert baseline["model"] == str(tiny_onnx_dir) and baseline["first_sentence_match"] == 1.0
    assert data["first_sentence_match"] < 1.0 and baseline["worse"] and not data["passed"]


def test_cli_text_report_in_one_session(tiny_onnx_dir, tmp_path):
    data = tmp_path / "openai.jsonl"  # any format validate reads
    data.write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": c["input"]}, {"role": "assistant", "content": c["output"]}]}
            )
            + "\n"
            for c in TINY_CONVERSATIONS[:3]
        )
    )
    result = run_cli("evaluate", "--model-path", str(tiny_onnx_dir), "--data-file", str(data), "--session")
    assert result.returncode == 0, result.stderr
    table = result.stdout.splitlines()
    assert table[0].split() == ["examples", "first", "sentence", "exact", "token", "F1", "mean", "tokens", "truncated"]
    assert table[1].split()[:2] == ["model", "3"] and "(one session;" in result.stdout
    assert f"evaluating {tiny_onnx_dir} on 3 question(s)" in result.stderr


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing data", "no such file"),
        ("bad data", "not valid JSON"),
        ("pytorch model", "is a PyTorch model, not an ONNX model directory"),
        ("empty directory", "is not an ONNX model directory"),
        ("bad baseline", "is not an ONNX model directory"),
        ("bad tolerance", "--tolerance = 2.0 must be between 0 and 1"),
        ("tolerance without baseline", "--tolerance compares with a baseline: give --baseline"),
    ],
)
def test_cli_bad_input_is_a_one_line_error(
    case, message, tiny_onnx_dir, trained_tiny_model_dir, data_file, tmp_path, cli_here
):
    (tmp_path / "bad.json").write_text('[{"input": "Hi", "output": "Hello."},')
    (tmp_path / "empty").mkdir()
    model, data, extra = str(tiny_onnx_dir), str(data_file), []
    if case == "missing data":
        data = str(tmp_path / "missing.json")
    elif case == "bad data":
        data = str(tmp_path / "bad.json")
    elif case == "pytorch model":
        model = str(trained_tiny_model_dir)
    elif case == "empty directory":
        model = str(tmp_path / "empty")
    elif case == "bad baseline":
        extra = ["--baseline", str(tmp_path / "empty")]
    elif case == "bad tolerance":
        extra = ["--baseline", str(tiny_onnx_dir), "--tolerance", "2"]
    else:
        extra = ["--tolerance", "0.5"]
    result = cli_here("evaluate", "--model-path", model, "--data-file", data, *extra)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


def test_evaluate_never_imports_torch_or_transformers(tiny_onnx_dir, data_file):
    code = f"""
import sys, runpy
sys.argv = ["main.py", "evaluate", "--model-path", {str(tiny_onnx_dir)!r}, "--data-file", {str(data_file)!r},
            "--quiet"]
try:
    runpy.run_path({str(REPO_ROOT / "main.py")!r}, run_name="__main__")
except SystemExit as done:
    assert not done.code, done.code
print(sorted(name for name in ("torch", "transformers", "optimum") if name in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]" and "model" in result.stdout
