"""ConversationLogger: chat exchanges land on disk at once, in a file that always parses."""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO_ROOT, TINY_CONVERSATIONS

from mtnsails.core.errors import MtnsailsError
from mtnsails.data.handler import ConversationDataHandler
from mtnsails.data.logger import ConversationLogger


def read_log(path) -> list[dict]:
    """The records of a log file, parsed strictly (a torn line or array fails the test)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines()]
    return json.loads(text)


@pytest.fixture(params=["chat_history.json", "chat_history.jsonl"])
def log_path(request, tmp_path):
    return tmp_path / request.param


def test_each_exchange_is_a_training_record(log_path):
    with ConversationLogger(log_path) as logger:
        logger.log("What is ONNX?", 'An open "format" for models — portable.', model="tiny")
        logger.flush()
        assert read_log(log_path)[0]["output"] == 'An open "format" for models — portable.'
        logger.log("Thanks!", "You're welcome.")
    records = read_log(log_path)
    assert [(r["input"], r["output"]) for r in records] == [
        ("What is ONNX?", 'An open "format" for models — portable.'),
        ("Thanks!", "You're welcome."),
    ]
    assert records[0]["model"] == "tiny"
    stamp = time.strptime(records[0]["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")  # ISO-8601
    assert records[0]["timestamp"].endswith("+00:00") and stamp.tm_year >= 2024

    # the log is training data as it is: the handler loads it and keeps the timestamps
    handler = ConversationDataHandler.from_file(log_path)
    assert handler.format_for_training()[1] == "User: Thanks!\nAssistant: You're welcome."
    assert handler.conversations[0]["timestamp"] == records[0]["timestamp"]


def test_records_reach_the_disk_without_flush_or_close(log_path):
    logger = ConversationLogger(log_path, flush_interval=30)
    logger.log("hello", "Hi there.")
    deadline = time.monotonic() + 10  # generous bound for a loaded machine, not a timing assert
    while not (log_path.exists() and read_log(log_path)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r["input"] for r in read_log(log_path)] == ["hello"]
    logger.close()


def test_amend_gives_a_logged_exchange_a_new_version_and_readers_see_only_the_last(log_path):
    with ConversationLogger(log_path) as logger:
        first = logger.log("What is the capital of Germany?", "Run python main.")
        second = logger.log("Who wrote Hamlet?", "Shakespeare wrote it.")
        logger.amend(
            first, feedback="fixed", output="Berlin is the capital of Germany.", model_output="Run python main."
        )
        logger.amend(second, feedback="bad")
        assert logger.amend(second, feedback="good")["feedback"] == "good"  # the last verdict wins
        logger.flush()
        with pytest.raises(KeyError):
            logger.amend("no such exchange", feedback="bad")
        with pytest.raises(ValueError, match="does not change"):
            logger.amend(first, input="another question")
    on_disk = read_log(log_path)
    # .json: each version takes the old one's place; .jsonl: versions are appended
    assert len(on_disk) == (2 if log_path.suffix == ".json" else 5)
    assert len({r["exchange_id"] for r in on_disk}) == 2

    conversations = ConversationDataHandler.from_file(log_path).conversations
    assert [(c["input"], c["output"], c["feedback"]) for c in conversations] == [
        ("What is the capital of Germany?", "Berlin is the capital of Germany.", "fixed"),
        ("Who wrote Hamlet?", "Shakespeare wrote it.", "good"),
    ]
    assert conversations[0]["model_output"] == "Run python main."
    assert [c["exchange_id"] for c in conversations] == [first, second]


def test_amend_into_a_json_log_keeps_the_records_of_earlier_sessions(tmp_path):
    path = tmp_path / "log.json"
    path.write_text(json.dumps([{"input": "old", "output": "kept"}]), encoding="utf-8")
    with ConversationLogger(path) as logger:
        exchange = logger.log("new", "wrong")
        logger.amend(exchange, feedback="bad")
    assert [(r["input"], r.get("feedback")) for r in read_log(path)] == [("old", None), ("new", "bad")]


def test_reopening_appends_and_keeps_what_is_there(log_path):
    for round_number in range(3):
        with ConversationLogger(log_path) as logger:
            logger.log(f"question {round_number}", f"answer {round_number}")
    assert [r["input"] for r in read_log(log_path)] == ["question 0", "question 1", "question 2"]


def test_existing_jsonl_without_final_newline_gets_its_own_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"input": "old", "output": "kept"}', encoding="utf-8")
    with ConversationLogger(path) as logger:
        logger.log("new", "appended")
    assert [r["input"] for r in read_log(path)] == ["old", "new"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("log.json", '{"input": "a", "output": "b"}', "not a JSON array"),
        ("log.json", '[{"input": "a", "output": "b"},', "not valid JSON"),
        ("log.jsonl", '{"input": "a", "output": "b"}\n{"input": "bad\n{"input": "c"}\n', "line 2"),
        # valid JSON, but no conversations: appending would mix a chat log into another file
        ("log.json", "[1, 2, 3]", r"not a chat log \(record 0: expected an object, got a number\)"),
        (
            "log.jsonl",
            '{"input": "a", "output": "b"}\n{"foo": 1}\n',
            r"not a chat log \(line 2: unrecognised record with keys \['foo'\]",
        ),
    ],
)
def test_an_invalid_existing_log_is_refused_and_left_alone(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(MtnsailsError, match=message) as raised:
        ConversationLogger(path)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)
    assert path.read_text(encoding="utf-8") == content


def test_a_torn_last_line_left_by_a_crash_is_dropped_with_a_warning(tmp_path, capfd):
    path = tmp_path / "log.jsonl"
    path.write_text('{"input": "old", "output": "kept"}\n{"input": "half a rec', encoding="utf-8")
    with ConversationLogger(path) as logger:
        logger.log("new", "appended")
    assert [r["input"] for r in read_log(path)] == ["old", "new"]
    assert f"warning: {path}: line 2 is cut short" in capfd.readouterr().err


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda path: path.mkdir(), "is a directory"),
        (lambda path: path.write_bytes(b'[{"input": "caf\xe9", "output": "b"}]'), "not UTF-8"),  # Latin-1
    ],
)
def test_a_log_path_that_is_no_text_file_is_refused_and_left_alone(tmp_path, make, message):
    path = tmp_path / "log.json"
    make(path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(MtnsailsError, match=message) as raised:
        ConversationLogger(path)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)
    assert (path.read_bytes() if path.is_file() else None) == before and path.exists()


def test_missing_directories_are_created(tmp_path):
    path = tmp_path / "logs" / "today" / "chat.json"
    with ConversationLogger(path) as logger:
        logger.log("hi", "hello")
    assert read_log(path)[0]["output"] == "hello"


def test_many_threads_lose_nothing_and_keep_their_order(log_path):
    def chat(logger, name):
        for turn in range(25):
            logger.log(f"{name} {turn}", "ok")

    with ConversationLogger(log_path) as logger:
        threads = [threading.Thread(target=chat, args=(logger, f"t{n}")) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        logger.flush()
        assert logger.written == 100
    inputs = [r["input"] for r in read_log(log_path)]
    for name in ("t0", "t1", "t2", "t3"):
        assert [i for i in inputs if i.split()[0] == name] == [f"{name} {t}" for t in range(25)]


def test_a_failed_write_is_reported_and_retried(log_path, capfd):
    logger = ConversationLogger(log_path)
    logger.log("first", "saved")
    logger.flush()
    shutil.rmtree(log_path.parent)  # the disk goes away under the chat
    logger.log("second", "kept in memory")
    with pytest.raises(MtnsailsError, match="1 logged exchange"):
        logger.flush()
    assert "cannot write the chat log" in capfd.readouterr().err
    log_path.parent.mkdir()  # ... and comes back: the next batch writes what was missing
    logger.log("third", "saved too")
    logger.close()
    assert [r["input"] for r in read_log(log_path)] == ["second", "third"]  # the disk's and ours


def test_closed_logger_refuses_records(tmp_path):
    logger = ConversationLogger(tmp_path / "log.json")
    logger.close()
    logger.close()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        logger.log("late", "lost")


def test_bad_records_fail_the_caller_not_the_writer(tmp_path):
    with ConversationLogger(tmp_path / "log.jsonl") as logger:
        with pytest.raises(TypeError):
            logger.log("when?", "now", when=object())
        with pytest.raises(TypeError):
            logger.log("no answer", None)


def test_two_processes_logging_to_one_file_lose_nothing(log_path):
    code = (
        "import sys\nfrom mtnsails.data.logger import ConversationLogger\n"
        "with ConversationLogger(sys.argv[1]) as logger:\n"
        "    for i in range(100):\n        logger.log(f'{sys.argv[2]} {i}', 'ok')\n"
    )
    children = [run_child(code, str(log_path), name) for name in ("a", "b")]
    assert [child.wait(timeout=60) for child in children] == [0, 0]
    inputs = [r["input"] for r in read_log(log_path)]
    for name in ("a", "b"):
        assert [i for i in inputs if i.startswith(name)] == [f"{name} {i}" for i in range(100)]


def test_a_file_size_limit_never_leaves_half_a_record(log_path):
    """`ulimit -f` stops the writes part-way through a record; the log stays whole and valid."""
    code = (
        "import sys\nfrom mtnsails.core.errors import MtnsailsError\n"
        "from mtnsails.data.logger import ConversationLogger\n"
        "logger = ConversationLogger(sys.argv[1])\n"
        "for i in range(200):\n"
        "    logger.log(f'question {i}', 'answer ' * 40)\n"
        "    try:\n        logger.flush()\n"
        "    except MtnsailsError as error:\n        print(error)\n        break\n"
    )
    child = run_child(
        code,
        str(log_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192)),
    )
    stdout, stderr = child.communicate(timeout=60)
    assert "logged exchange(s) not saved" in stdout and "Traceback" not in stderr
    records = read_log(log_path)  # parses: no torn line, no half-written array
    assert 5 < len(records) < 40 and log_path.stat().st_size <= 8192
    assert [r["input"] for r in records] == [f"question {i}" for i in range(len(records))]


def run_child(code: str, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO_ROOT, env=env, text=True, **popen)


def test_exit_without_close_still_saves_everything(log_path):
    code = (
        "import sys\nfrom mtnsails.data.logger import ConversationLogger\n"
        "logger = ConversationLogger(sys.argv[1])\n"
        "for i in range(50):\n    logger.log(f'q{i}', f'a{i}')\n"
    )
    assert run_child(code, str(log_path)).wait(timeout=60) == 0
    assert len(read_log(log_path)) == 50


# A chat in miniature, with no model to slow it down: log each exchange, then show its answer.
CHATTING_CHILD = """
import sys
from mtnsails.data.logger import ConversationLogger
logger = ConversationLogger(sys.argv[1])
for i in range(1_000_000):
    logger.log(f"question {i}", f"answer {i} \u00e9 \\"quoted\\" " + "words " * (i % 40))
    print(i, flush=True)
"""


# Twice per format: each run kills the writer at another moment of a write. Seeded, so a
# failure names its delay (the seed is in the test id); where in a write that delay lands
# still depends on the machine's load.
KILL_SEEDS = pytest.mark.parametrize("seed", [1, 2], ids=lambda seed: f"seed{seed}")


@KILL_SEEDS
def test_kill_9_while_logging_loses_at_most_the_exchange_in_flight(log_path, seed):
    old = [{"input": "from yesterday", "output": "still here"}]
    log_path.write_text(
        "\n".join(json.dumps(r) for r in old) + "\n" if log_path.suffix == ".jsonl" else json.dumps(old),
        encoding="utf-8",
    )
    child = run_child(CHATTING_CHILD, str(log_path), stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == "0"
    time.sleep(random.Random(seed).uniform(0.02, 0.4))  # usually in the middle of a write
    child.send_signal(signal.SIGKILL)
    printed = [int(line) for line in child.stdout.read().split()]  # what was shown, all of it
    child.wait(timeout=30)
    last = printed[-1] if printed else 0

    records = read_log(log_path)  # parses: no torn line, no half-written array
    assert records[:1] == old
    logged = [r["input"] for r in records[1:]]
    kept = len(logged)
    assert logged == [f"question {i}" for i in range(kept)]  # in order, nothing duplicated
    assert last <= kept <= last + 2  # every answer shown before the last one is in the log


def test_kill_9_during_a_scripted_chat_keeps_every_answered_exchange(log_path, tiny_onnx_dir):
    prompts = [f"{c['input']} ({n})" for n in range(6) for c in TINY_CONVERSATIONS]
    child = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "main.py"),
            "chat",
            "--model-path",
            str(tiny_onnx_dir),
            "--max-tokens",
            "12",
            "--log-conversations",
            "--log-file",
            str(log_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=log_path.parent,
    )
    child.stdin.write("".join(prompt + "\n" for prompt in prompts))
    child.stdin.flush()  # stdin stays open: the chat is killed, it does not run out of prompts
    rng = random.Random(0)  # seeded: a failure can be rerun with the same kill moment
    answers = [child.stdout.readline() for _ in range(rng.randint(2, 8))]
    time.sleep(rng.uniform(0, 0.2))
    child.send_signal(signal.SIGKILL)
    answers += child.stdout.read().splitlines(keepends=True)
    child.wait(timeout=30)
    answers = [answer.rstrip("\n") for answer in answers]

    records = read_log(log_path)
    assert [r["input"] for r in records] == prompts[: len(records)]
    assert len(answers) - 1 <= len(records) <= len(answers) + 1
    for record, answer in zip(records, answers):  # the log holds what the user was shown
        assert record["output"].replace("\n", " ") == answer


# A chat in miniature that marks every answer bad and says so once the verdict is saved.
VERDICT_CHILD = """
import sys
from mtnsails.data.logger import ConversationLogger
logger = ConversationLogger(sys.argv[1])
for i in range(1_000_000):
    exchange = logger.log(f"question {i}", f"answer {i}")
    logger.amend(exchange, feedback="bad")
    logger.flush()
    print(i, flush=True)
"""


@KILL_SEEDS
def test_kill_9_after_a_verdict_was_acknowledged_loses_no_verdict(log_path, seed):
    child = run_child(VERDICT_CHILD, str(log_path), stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == "0"
    time.sleep(random.Random(seed).uniform(0.02, 0.3))
    child.send_signal(signal.SIGKILL)
    acknowledged = [int(line) for line in child.stdout.read().split()]
    child.wait(timeout=30)
    last = acknowledged[-1] if acknowledged else 0

    conversations = ConversationDataHandler.from_file(log_path).conversations
    verdicts = {c["input"]: c.get("feedback") for c in conversations}
    assert all(verdicts[f"question {i}"] == "bad" for i in range(last + 1))
    assert len(conversations) == len(verdicts)  # one record per exchange
