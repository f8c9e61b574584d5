"""`main.py review LOG --output FILE` driven through stdin, as a script (or a patient user) does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, assert_one_line_error, read_only_directory, run_cli

from mtnsails.data.handler import ConversationDataHandler
from mtnsails.loop.review import LogReview

# A chat log as `chat --log-conversations --log-file log.jsonl` writes it: the verdict on the
# Germany question came after the exchange, as a new version of it (same exchange_id).
LOG = [
    {"input": "What is the capital of France?", "output": "The capital of France is Paris.", "exchange_id": "a"},
    {"input": "What is the capital of Germany?", "output": "Run python main.", "exchange_id": "b"},
    {"input": "What do bees make?", "output": "Bees make honey and wax.", "exchange_id": "c"},
    {"input": "What is the capital of Germany?", "output": "Run python main.", "exchange_id": "b", "feedback": "bad"},
    {"input": "Who wrote Hamlet?", "output": "Hamlet is a play.", "exchange_id": "d"},
    {
        "input": "And when?",
        "output": "Around 1600.",
        "exchange_id": "e",
        "system": "Be brief.",
        "history": [{"input": "Who wrote Hamlet?", "output": "Shakespeare."}],
    },
]


def write_log(path, records=LOG):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def review(log, output, script: str):
    return run_cli("review", str(log), "--output", str(output), input=script)


def test_review_keeps_drops_edits_and_goes_on_where_it_stopped(tmp_path):
    log = write_log(tmp_path / "chat.jsonl")
    output = tmp_path / "reviewed.json"
    # 1: Enter keeps; 2 (marked bad): an unknown answer is asked again, then e + the text on the
    # next line corrects it; 3: d drops; then q stops at 4/5.
    first = review(log, output, "\nx\ne\nThe capital of Germany is Berlin.\nd\nq\n")
    assert first.returncode == 0, first.stderr
    shown = first.stdout
    assert "[1/5]" in shown and "[2/5] marked bad in chat" in shown and "[4/5]" in shown
    assert "[5/5]" not in shown and "'x' is no answer here" in shown
    assert "Stopped at 4/5. Kept 4 of 5 (1 edited, 2 not reviewed)" in shown
    records = json.loads(output.read_text(encoding="utf-8"))  # not reviewed yet: kept by default
    assert [r["exchange_id"] for r in records] == ["a", "b", "d", "e"]
    assert records[1] == {
        **LOG[3],
        "output": "The capital of Germany is Berlin.",
        "feedback": "fixed",
        "model_output": "Run python main.",
    }
    assert records[3]["history"] == LOG[5]["history"] and records[3]["system"] == "Be brief."

    # the same command goes on at 4/5; the end of input stops it like q
    second = review(log, output, "e Shakespeare wrote Hamlet.\n")
    assert second.returncode == 0, second.stderr
    assert "[1/5]" not in second.stdout and "[4/5]" in second.stdout and "Stopped at 5/5" in second.stdout
    # the chat goes on logging; the next review walks only what is new
    write_log(log, LOG + [{"input": "Hi!", "output": "Hello! How can I help?", "exchange_id": "f"}])
    third = review(log, output, "\n\n")
    assert "[5/6]" in third.stdout and "[6/6]" in third.stdout and "Reviewed all 6" in third.stdout
    final = ConversationDataHandler(output).conversations  # training data as it is
    assert [(c["exchange_id"], c["output"], c.get("feedback")) for c in final] == [
        ("a", "The capital of France is Paris.", None),
        ("b", "The capital of Germany is Berlin.", "fixed"),
        ("d", "Shakespeare wrote Hamlet.", "fixed"),
        ("e", "Around 1600.", None),
        ("f", "Hello! How can I help?", None),
    ]


def test_unreviewed_bad_marks_are_dropped_and_a_kept_one_becomes_good(tmp_path):
    log = write_log(tmp_path / "chat.jsonl")
    output = tmp_path / "reviewed.jsonl"
    assert review(log, output, "q\n").returncode == 0
    assert [json.loads(line)["exchange_id"] for line in output.read_text().splitlines()] == ["a", "c", "d", "e"]
    # for a bad mark Enter drops, k keeps (the reviewer overrides the mark)
    assert "Enter = drop, k = keep" in review(log, output, "\nk\n").stdout
    kept = {record["exchange_id"]: record for record in LogReview(log, output).kept()}
    assert kept["b"]["feedback"] == "good" and "a" in kept


def test_a_finished_review_says_so_and_writes_the_output_again(tmp_path):
    log = write_log(tmp_path / "chat.jsonl", LOG[:2])
    output = tmp_path / "reviewed.json"
    review(log, output, "\n\n")
    output.unlink()
    again = review(log, output, "")
    assert again.returncode == 0 and "Reviewed all 2 exchanges" in again.stdout
    assert len(json.loads(output.read_text())) == 2


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: (tmp / "notes.json", tmp / "out.json"), "no such file"),
        (lambda tmp: (write_text(tmp / "notes.json", "just some notes"), tmp / "out.json"), "not valid JSON"),
        (lambda tmp: (write_text(tmp / "notes.json", '{"name": "x"}'), tmp / "out.json"), "expected a JSON array"),
        (lambda tmp: (write_log(tmp / "chat.jsonl"), tmp / "chat.jsonl"), "is the log itself"),
        (
            lambda tmp: (write_log(tmp / "chat.jsonl"), write_text(tmp / "mine.json", "[]")),
            "exists and is not a review of",
        ),
        (lambda tmp: (write_log(tmp / "chat.jsonl"), tmp / "missing" / "out.json"), "does not exist"),
    ],
)
def test_bad_inputs_are_one_line_errors_and_nothing_is_lost(tmp_path, make, message):
    log, output = make(tmp_path)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    result = review(log, output, "\n")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


def test_an_output_folder_that_takes_no_files_is_a_one_line_error(tmp_path):
    result = review(write_log(tmp_path / "chat.jsonl"), read_only_directory(tmp_path) / "rv.json", "q\n")
    assert_one_line_error(result, "rv.json", "cannot write into")


@pytest.mark.parametrize("stdin_errors", ["strict", "surrogateescape"])
def test_piped_answers_that_are_not_utf8_are_asked_again_never_written(tmp_path, stdin_errors):
    log, output = write_log(tmp_path / "chat.jsonl"), tmp_path / "reviewed.json"
    script = b"e caf\xe9 au lait\nd\nd\nq\n"  # Latin-1 bytes, as a terminal in another encoding sends
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "main.py"), "review", str(log), "--output", str(output)],
        input=script,
        capture_output=True,
        timeout=120,
        env={**os.environ, "PYTHONIOENCODING": f"utf-8:{stdin_errors}"},  # a UTF-8 locale reads strictly
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"not valid UTF-8" in result.stdout and b"Traceback" not in result.stderr
    assert b"Stopped at 3/5" in result.stdout  # both answers after the bad line were taken
    kept = [record["input"] for record in json.loads(output.read_text("utf-8"))]
    assert kept == ["What do bees make?", "Who wrote Hamlet?", "And when?"]  # France and Germany dropped


def test_a_state_file_of_another_log_is_refused(tmp_path):
    output = tmp_path / "reviewed.json"
    review(write_log(tmp_path / "one.jsonl"), output, "q\n")
    result = review(write_log(tmp_path / "two.jsonl"), output, "q\n")
    assert result.returncode == 2 and "is the review of another log" in result.stderr


def write_text(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path
