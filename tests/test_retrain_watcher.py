"""RetrainWatcher and `watch`: rounds start after enough good or fixed exchanges, continue the
model with replay, promote only when not worse, keep their state; bad input changes nothing."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT, TINY_CONVERSATIONS, assert_one_line_error, run_cli

from mtnsails.core.errors import MtnsailsError
from mtnsails.data.handler import ConversationDataHandler
from mtnsails.loop.watcher import RetrainWatcher, is_held_out
from mtnsails.model_dir.metadata import TRAINING_DATA_FILE

pytestmark = pytest.mark.slow

LOG = [
    {"input": "What colour are lemons?", "output": "Lemons are yellow.", "feedback": "good"},
    {
        "input": "What is the capital of Germany?",
        "output": "Berlin is the capital of Germany.",
        "model_output": "Run python main.",
        "feedback": "fixed",
    },
    {"input": "Who are you?", "output": "Run python main.", "feedback": "bad"},
    {"input": "Hi there", "output": "Hello! How can I help you today?"},  # no verdict: not trained
    {"input": "What do cows eat?", "output": "Cows eat grass."},  # newest, verdict may come
]


def write_log(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


@pytest.fixture
def setup(tiny_onnx_dir, tmp_path):
    """(log, live directory: a copy of the tiny ONNX model)."""
    log = tmp_path / "chat.jsonl"
    write_log(log, LOG)
    live = tmp_path / "live"
    shutil.copytree(tiny_onnx_dir, live)
    return log, live


def test_pending_counts_good_and_fixed_and_waits_for_the_newest_verdict(setup, trained_tiny_model_dir):
    log, live = setup
    watcher = RetrainWatcher(log, trained_tiny_model_dir, live, threshold=2, quiet=True)
    new, held_out, consumed = watcher.pending()
    assert is_held_out(LOG[0]) and not any(map(is_held_out, LOG[1:]))  # lemons: kept for evaluation
    assert [e["feedback"] for e in new] == ["fixed"] and held_out == [LOG[0]] and consumed == 4
    assert watcher.run_once() is None  # 1 of 2: no round, nothing written
    assert not watcher.state_file.exists() and not watcher.work_dir.exists()
    write_log(log, LOG[:-1] + [{**LOG[-1], "feedback": "good"}])  # the verdict came
    new, held_out, consumed = watcher.pending()
    assert (len(new), held_out, consumed) == (2, [LOG[0]], 5)


def test_watch_once_continues_the_model_promotes_and_resumes_from_its_state(setup, trained_tiny_model_dir, cli_here):
    log, live = setup
    before = {path.name: path.read_bytes() for path in live.iterdir()}
    # a learning rate too small to change the answers: the candidate answers as the live
    # model does, so it is "not worse" and is promoted
    args = [
        "watch",
        "--log-file",
        str(log),
        "--live",
        str(live),
        "--model-name",
        str(trained_tiny_model_dir),
        "--threshold",
        "1",
        "--once",
        "--epochs",
        "1",
        "--learning-rate",
        "1e-7",
        "--save-steps",
        "1000",
    ]
    result = cli_here(*args)
    assert result.returncode == 0, result.stderr
    assert "round 1: exchanges 1-4 of the log, 1 marked good or fixed: promoted" in result.stdout
    assert "on the 9 conversations trained on and 1 held out" in result.stdout
    state = json.loads((live.parent / "live.watch" / "state.json").read_text())
    assert (state["consumed"], state["rounds"]) == (4, 1)
    decision = state["decisions"][0]
    assert decision["promoted"] and decision["exchanges"] == [0, 4] and decision["trained"] == 1
    assert decision["held_out_examples"] == 1  # the lemons, never trained on
    model = live.parent / "live.watch" / "round-1" / "model"
    assert state["model"] == str(model)
    trained_on = ConversationDataHandler.from_file(model / TRAINING_DATA_FILE).conversations
    assert [c["input"] for c in trained_on] == [c["input"] for c in TINY_CONVERSATIONS] + [
        "What is the capital of Germany?"
    ]  # replay + the fixed answer; the lemons are held out
    assert {path.name: path.read_bytes() for path in (live.parent / "live.prev").iterdir()} == before
    assert json.loads((live / "mtnsails.json").read_text())["source_model"] == str(model)
    assert sorted(path.name for path in (live.parent / "live.watch").iterdir()) == [
        "round-1",
        "state.json",
    ]  # the candidate's ONNX copy is gone

    again = cli_here(*args)  # restart: resumes from the state, nothing new to train on
    assert again.returncode == 0 and "waiting: 0 of 1 new exchanges" in again.stdout
    assert json.loads((live.parent / "live.watch" / "state.json").read_text()) == state


def test_bad_inputs_are_one_line_errors_and_change_nothing(setup, trained_tiny_model_dir, tmp_path):
    log, live = setup
    before = sorted(path.name for path in tmp_path.iterdir())
    not_a_log = tmp_path / "notes.jsonl"
    not_a_log.write_text("this is not a log\n")
    cases = [
        (["--log-file", str(not_a_log), "--live", str(live)], "notes.jsonl: line 1: not valid JSON"),
        (
            ["--log-file", str(log), "--live", str(trained_tiny_model_dir)],
            "the live model is not an ONNX model directory",
        ),
        (
            ["--log-file", str(log), "--live", str(live), "--model-name", str(live)],
            "not a trained mtnsails model directory",
        ),
        (["--log-file", str(log), "--live", str(live)], "name the trained model"),
        (["--log-file", str(log), "--live", str(live), "--threshold", "0"], "--threshold"),
        (
            ["--log-file", str(log), "--live", str(live), "--eval-file", str(tmp_path / "gone.json")],
            "gone.json: no such file",
        ),
    ]
    for args, phrase in cases:
        model = (
            []
            if "--model-name" in args or "name the trained" in phrase
            else ["--model-name", str(trained_tiny_model_dir)]
        )
        result = run_cli("watch", *args, *model, "--once")
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0], lines
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(before + ["notes.jsonl"])
    with pytest.raises(MtnsailsError, match="fewer than the 9 already consumed"):
        watcher = RetrainWatcher(log, trained_tiny_model_dir, live, threshold=1, quiet=True)
        watcher.state["consumed"] = 9
        watcher.pending()


@pytest.mark.parametrize("interval", ["0", "-1"])
def test_an_interval_that_is_not_above_zero_is_refused_before_anything(tmp_path, interval):
    result = run_cli(
        "watch", "--log-file", str(tmp_path / "chat.jsonl"), "--live", str(tmp_path / "live"), "--interval", interval
    )
    assert_one_line_error(result, "--interval must be above 0 seconds")
    assert list(tmp_path.iterdir()) == []


def test_a_log_not_there_yet_is_said_once_and_one_in_a_missing_folder_is_refused(
    setup, trained_tiny_model_dir, tmp_path
):
    _, live = setup
    missing = tmp_path / "later.jsonl"
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "main.py"),
            "watch",
            "--log-file",
            str(missing),
            "--live",
            str(live),
            "--model-name",
            str(trained_tiny_model_dir),
            "--interval",
            "0.05",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().startswith("watching")
    assert "later.jsonl (it does not exist yet)" in process.stdout.readline()
    time.sleep(1)  # some 20 more looks at the log
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0 and stdout.count("waiting") == 0, stdout  # said once, above
    result = run_cli(
        "watch",
        "--log-file",
        str(tmp_path / "nodir" / "chat.jsonl"),
        "--live",
        str(live),
        "--model-name",
        str(trained_tiny_model_dir),
        "--once",
    )
    assert_one_line_error(result, "nodir", "does not exist")


def test_sigterm_stops_the_watch_loop_cleanly(setup, trained_tiny_model_dir):
    log, live = setup
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "main.py"),
            "watch",
            "--log-file",
            str(log),
            "--live",
            str(live),
            "--model-name",
            str(trained_tiny_model_dir),
            "--threshold",
            "50",
            "--interval",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().startswith("watching")
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "stopping after the current step" in stderr and "Traceback" not in stderr
