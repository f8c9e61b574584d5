"""`main.py chat` as a user runs it: one prompt, piped prompts, a terminal session, bad inputs.
Real subprocesses, but for refused settings and model directories, which run through `cli.main`
in this process."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import pexpect
import pytest
from conftest import REPO_ROOT, TINY_CONVERSATIONS, nan_copy, run_cli

pytestmark = pytest.mark.slow


def test_prompt_answers_once_with_the_trained_answer(tiny_onnx_dir):
    conversation = TINY_CONVERSATIONS[3]
    result = run_cli(
        "chat", "--model-path", str(tiny_onnx_dir), "--prompt", conversation["input"], "--temperature", "0"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == conversation["output"] + "\n"


def test_directory_without_mtnsails_json_uses_the_default_template(tiny_onnx_dir, tmp_path):
    model = tmp_path / "plain_optimum_export"
    shutil.copytree(tiny_onnx_dir, model)
    (model / "mtnsails.json").unlink()  # EOS and context length then come from config.json
    result = run_cli("chat", "--model-path", str(model), "--prompt", "What do bees make?", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Bees make honey and wax.\n"


def test_piped_stdin_answers_one_prompt_per_line_keeping_history(tiny_onnx_dir, tmp_path):
    prompts = "Which country is Paris in?\n\nAnd what is its largest river?\n   \n/reset\nWhat do bees make?\n"
    log = tmp_path / "log.jsonl"
    result = run_cli(
        "chat",
        "--model-path",
        str(tiny_onnx_dir),
        "--temperature",
        "0",
        "--precision",
        "fp32",
        "--log-conversations",
        "--log-file",
        str(log),
        input=prompts,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Paris is in France.",
        "Its longest river is the Loire.",
        "Bees make honey and wax.",
    ]
    # Blank lines are skipped: neither answered nor logged.
    assert [json.loads(line)["input"] for line in log.read_text().splitlines()] == [
        "Which country is Paris in?",
        "And what is its largest river?",
        "What do bees make?",
    ]


def logged_chat(model, log, script: str):
    """`chat` with piped lines, greedy, on the fp32 graph, logging to `log`."""
    flags = ("--temperature", "0", "--precision", "fp32", "--log-conversations", "--log-file", str(log))
    return run_cli("chat", "--model-path", str(model), *flags, input=script)


def logged(log) -> list[dict]:
    """The log as a trainer reads it: one record per exchange, its final verdict."""
    from mtnsails.data.handler import ConversationDataHandler

    return ConversationDataHandler(log).conversations


@pytest.mark.parametrize("name", ["log.json", "log.jsonl"])
def test_piped_feedback_commands_mark_and_fix_the_last_answer(tiny_onnx_dir, tmp_path, name):
    log = tmp_path / name
    script = (
        "Which country is Paris in?\n/good\nAnd what is its largest river?\n"
        "/fix The Loire is its longest river.\nWho wrote Hamlet?\n/bad\n/fix\n"
        "What do bees make?\n"
    )
    result = logged_chat(tiny_onnx_dir, log, script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == ["Paris is in France.", "(marked good)", "Its longest river is the Loire.", "(answer fixed)"]
    assert lines[5:7] == ["(marked bad)", "(a fix needs the right answer: /fix TEXT)"] and len(lines) == 8
    records = logged(log)
    assert [(r["input"], r["output"], r.get("feedback")) for r in records] == [
        ("Which country is Paris in?", "Paris is in France.", "good"),
        ("And what is its largest river?", "The Loire is its longest river.", "fixed"),
        ("Who wrote Hamlet?", lines[4], "bad"),
        ("What do bees make?", lines[7], None),
    ]
    assert records[1]["model_output"] == "Its longest river is the Loire."
    # each record keeps the history it was asked with (the fix included), so it retrains that way
    assert records[1]["history"] == [{"input": "Which country is Paris in?", "output": "Paris is in France."}]
    assert "history" not in records[2]  # a trained stand-alone question is asked alone


def test_a_question_asked_as_a_trained_one_says_so_on_stderr(tiny_onnx_dir):
    ask = ("chat", "--model-path", str(tiny_onnx_dir), "--temperature", "0")
    reworded = run_cli(*ask, "--prompt", "Who is the author of Hamlet?")
    assert reworded.stdout == "Hamlet was written by William Shakespeare.\n"
    assert reworded.stderr == "note: asked as the trained question 'Who wrote Hamlet?'\n"
    assert run_cli(*ask, "--prompt", "who wrote hamlet?").stderr == ""  # the trained question itself


def test_an_unknown_slash_command_is_refused_never_asked_nor_logged(tiny_onnx_dir, tmp_path):
    log = tmp_path / "log.jsonl"
    script = "Who wrote Hamlet?\n/frobnicate\n/GOOD\n/reset now\n/tmp is full\n"
    result = logged_chat(tiny_onnx_dir, log, script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("(unknown command /frobnicate: /good, /bad or /fix TEXT")
    assert lines[2] == "(marked good)"  # commands are taken in any case
    assert len(lines) == 4  # /reset takes no text (it reset, silently when piped); a path starts a question
    assert [(r["input"], r.get("feedback")) for r in logged(log)] == [
        ("Who wrote Hamlet?", "good"),
        ("/tmp is full", None),
    ]


def test_piped_feedback_flag_reads_a_reply_after_each_answer(tiny_onnx_dir, tmp_path):
    log = tmp_path / "log.jsonl"
    script = "What do bees make?\n\nWho wrote Hamlet?\nb\nWhat colour is the sky?\nIt is blue.\n/reset\n"
    result = run_cli(
        "chat",
        "--model-path",
        str(tiny_onnx_dir),
        "--temperature",
        "0",
        "--feedback",
        "--log-file",
        str(log),
        input=script,
    )  # --feedback logs by itself
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1::2] == ["(marked good)", "(marked bad)", "(answer fixed)"]
    assert [(r["feedback"], r["output"]) for r in logged(log)][1:] == [
        ("bad", result.stdout.splitlines()[2]),
        ("fixed", "It is blue."),
    ]


def test_a_verdict_in_a_chat_that_is_not_logged_names_the_flag_that_keeps_it(tiny_onnx_dir, cli_here):
    result = cli_here(
        "chat", "--model-path", str(tiny_onnx_dir), "--temperature", "0", input="What do bees make?\n/good\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Bees make honey and wax.",
        "(marked good; not saved: start chat with --log-conversations to keep feedback)",
    ]


@pytest.mark.parametrize("name", ["log.json", "log.jsonl"])
def test_kill_9_after_a_verdict_was_acknowledged_keeps_it(tiny_onnx_dir, tmp_path, name):
    log = tmp_path / name
    child = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "main.py"),
            "chat",
            "--model-path",
            str(tiny_onnx_dir),
            "--temperature",
            "0",
            "--log-conversations",
            "--log-file",
            str(log),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    child.stdin.write("What do bees make?\n/fix Bees make honey.\nWho wrote Hamlet?\n/bad\n")
    child.stdin.flush()  # stdin stays open: the chat is killed, it does not run out of lines
    shown = [child.stdout.readline() for _ in range(4)]
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert shown[1::2] == ["(answer fixed)\n", "(marked bad)\n"]
    assert [(r["output"], r["feedback"]) for r in logged(log)] == [
        ("Bees make honey.", "fixed"),
        (shown[2].rstrip("\n"), "bad"),
    ]


def test_feedback_flag_does_not_go_with_prompt(tiny_onnx_dir, tmp_path, cli_here):
    result = cli_here(
        "chat",
        "--model-path",
        str(tiny_onnx_dir),
        "--prompt",
        "Hello!",
        "--feedback",
        "--log-file",
        str(tmp_path / "log.json"),
    )
    assert result.returncode == 2 and result.stderr.startswith("error: --feedback")
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "log.json").exists()


@pytest.mark.parametrize("prompt", ["", "   "])
def test_blank_prompt_is_a_one_line_error_and_logs_nothing(tiny_onnx_dir, tmp_path, prompt, cli_here):
    log = tmp_path / "log.jsonl"
    result = cli_here(
        "chat", "--model-path", str(tiny_onnx_dir), "--prompt", prompt, "--log-conversations", "--log-file", str(log)
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "error: --prompt is blank: give the question to answer (or leave --prompt out to chat)\n"
    assert not log.exists()


def test_pipeline_refuses_a_blank_prompt_before_training(tmp_path, cli_here):
    result = cli_here(
        "pipeline",
        "--model-name",
        "tiny",
        "--epochs",
        "1",
        "--quiet",
        "--prompt",
        " ",
        "--output-dir",
        str(tmp_path / "model"),
        "--onnx-output",
        str(tmp_path / "onnx"),
    )
    assert result.returncode == 2 and result.stderr.startswith("error: --prompt is blank")
    assert not (tmp_path / "model").exists() and not (tmp_path / "onnx").exists()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--max-tokens", "-3"], "--max-tokens (max_new_tokens) = -3 must be at least 1"),
        (["--top-p", "0"], "--top-p (top_p) = 0.0 must be in (0, 1]"),
        (["--threads", "0"], "--threads (threads) = 0 must be at least 1"),
        (["--max-length", "0"], "--max-length (max_length) = 0 must be at least 1"),
    ],
)
def test_bad_settings_name_the_flag(tiny_onnx_dir, flags, expected, cli_here):
    result = cli_here("chat", "--model-path", str(tiny_onnx_dir), "--prompt", "Hello!", *flags)
    assert result.returncode == 2 and result.stderr == f"error: {expected}\n"


def test_a_seed_out_of_range_is_a_one_line_error(tiny_onnx_dir, cli_here):
    result = cli_here("chat", "--model-path", str(tiny_onnx_dir), "--prompt", "Hello!", "--seed", "-1")
    assert result.returncode == 2
    assert result.stderr == "error: --seed (seed) = -1 must be from 0 to 4294967295\n"


def test_non_utf8_bytes_in_the_prompt_are_a_one_line_error(tiny_onnx_dir):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "main.py"),
            "chat",
            "--model-path",
            str(tiny_onnx_dir),
            "--prompt",
            b"caf\xe9?",
        ],
        capture_output=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2 and result.stdout == b""
    assert result.stderr == (
        b"error: --prompt is not valid UTF-8 text (byte 0xe9 at character 4); give the question as UTF-8\n"
    )


def test_a_piped_line_that_is_not_utf8_is_answered_and_the_next_one_too(tiny_onnx_dir):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "main.py"),
            "chat",
            "--model-path",
            str(tiny_onnx_dir),
            "--temperature",
            "0",
            "--precision",
            "fp32",
        ],
        input=b"Caf\xe9 \xff?\n/reset\nWhat do bees make?\n",
        capture_output=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    answers = result.stdout.decode().splitlines()
    assert len(answers) == 2 and answers[1] == "Bees make honey and wax."


def spawn_chat(tiny_onnx_dir, *flags: str) -> pexpect.spawn:
    """The chat on a terminal of its own, Ctrl-C enabled as in a person's shell (a test run
    started in the background inherits it ignored, and the chat would never see it)."""
    return pexpect.spawn(
        sys.executable,
        [str(REPO_ROOT / "main.py"), "chat", "--model-path", str(tiny_onnx_dir), "--temperature", "0", *flags],
        cwd=str(REPO_ROOT),
        encoding="utf-8",
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_terminal_session_streams_resets_and_exits(tiny_onnx_dir):
    child = spawn_chat(tiny_onnx_dir)
    child.expect(r"\(int8; system prompt: none\)\. /good")  # says which system prompt
    child.expect("You: ")
    child.sendline("   ")  # a blank line is skipped: no answer, just the next prompt
    child.expect("You: ")
    assert "Assistant" not in child.before
    child.sendline("Which country is Paris in?")
    child.expect("Assistant: ")
    # The answer arrives piece by piece as tokens are generated, then the next prompt.
    pieces = [child.buffer]  # what expect() read past "Assistant: " (the first piece may come with it)
    while "You: " not in "".join(pieces):
        pieces.append(child.read_nonblocking(4096, timeout=60))
    assert "".join(pieces).replace("\r", "") == "Paris is in France.\nYou: "
    child.sendline("And what is its largest river?")  # answered from the history
    child.expect("Its longest river is the Loire.")
    child.expect("You: ")
    child.sendline("/reset")
    child.expect(r"\(conversation reset\)")
    child.expect("You: ")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_terminal_feedback_asks_after_each_answer(tiny_onnx_dir, tmp_path):
    log = tmp_path / "log.jsonl"
    child = spawn_chat(tiny_onnx_dir, "--feedback", "--log-file", str(log))
    child.expect("/fix TEXT rate the last answer")
    child.sendline("What do bees make?")
    child.expect("Bees make honey and wax.")
    child.expect(r"Feedback \(Enter = keep, b = bad, or type the right answer\): ")
    child.sendline("Bees make honey.")
    child.expect(r"\(answer fixed\)")
    child.sendline("Who wrote Hamlet?")
    child.expect("Feedback")
    child.sendline("/bad")
    child.expect(r"\(marked bad\)")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert [r["feedback"] for r in logged(log)] == ["fixed", "bad"]


def render(terminal_output: str) -> str:
    """What a terminal line shows after backspaces (\b moves the cursor left)."""
    line: list[str] = []
    cursor = 0
    for char in terminal_output:
        if char == "\b":
            cursor -= 1
        else:
            line[cursor : cursor + 1] = [char]
            cursor += 1
    return "".join(line).rstrip()


def test_terminal_erases_the_half_sentence_the_token_limit_cut(tiny_onnx_dir):
    child = spawn_chat(tiny_onnx_dir, "--max-tokens", "5")
    child.expect("You: ")
    child.sendline("Hello!")
    child.expect("Assistant: ")
    child.expect("\r\nYou: ")
    shown = child.before
    assert shown.startswith("Hello! How can")  # streamed as generated...
    answer, note = render(shown).split("\r\n")
    assert answer == "Hello!"  # ...then the cut-off half sentence is erased, and a note says so
    assert note.startswith("note: the answer reached the limit of 5 new tokens")
    child.sendline("/exit")
    child.expect(pexpect.EOF)


@pytest.mark.parametrize("leave", ["ctrl-d", "ctrl-c", "quit"])
def test_terminal_session_leaves_cleanly(tiny_onnx_dir, leave):
    child = spawn_chat(tiny_onnx_dir)
    child.expect("You: ")
    {"ctrl-d": child.sendeof, "ctrl-c": child.sendintr, "quit": lambda: child.sendline("quit")}[leave]()
    output = child.read()  # until EOF
    child.close()
    assert child.exitstatus == 0 and "Traceback" not in output


@pytest.mark.parametrize("case", ["missing", "pytorch_dir", "corrupt_model", "no_tokenizer", "no_int8"])
def test_bad_model_directory_is_a_one_line_error(case, tiny_onnx_dir, trained_tiny_model_dir, tmp_path, cli_here):
    model = tmp_path / "onnx"
    flags = []
    if case == "missing":
        expected = "does not exist"
    elif case == "pytorch_dir":
        model, expected = trained_tiny_model_dir, "run `mtnsails convert"
    else:
        shutil.copytree(tiny_onnx_dir, model)
        if case == "corrupt_model":
            for name in ("model.onnx", "model.optimized.onnx"):  # the stored graph would stand in
                (model / name).write_bytes(b"\x08garbage" * 100)
            flags, expected = ["--precision", "fp32"], "model.onnx cannot be loaded"
        elif case == "no_tokenizer":
            (model / "tokenizer.json").unlink()
            expected = "tokenizer.json is missing"
        else:
            (model / "model_int8.onnx").unlink()
            flags, expected = ["--precision", "int8"], "has no int8 model"
    result = cli_here("chat", "--model-path", str(model), "--prompt", "Hello!", *flags)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr


def test_the_trained_system_prompt_is_used_and_said_unless_system_overrides_it(system_tiny_onnx_dir):
    from conftest import SYSTEM_PROMPT

    ask = ("chat", "--model-path", str(system_tiny_onnx_dir), "--prompt", "What do bees make?", "--temperature", "0")
    result = run_cli(*ask)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Honey, by the barrel, matey.\n"
    assert result.stderr == f"system prompt: {SYSTEM_PROMPT!r}\n"
    plain = run_cli(*ask, "--system", "")  # "" = no system prompt: the model never saw that
    assert plain.returncode == 0 and plain.stderr == ""
    assert plain.stdout != result.stdout
    other = run_cli(*ask, "--system", "Be brief.", input="")
    assert other.stderr == "system prompt: 'Be brief.'\n"


def test_an_answer_cut_by_the_token_limit_gets_a_note_on_stderr(tiny_onnx_dir):
    ask = ("chat", "--model-path", str(tiny_onnx_dir), "--temperature", "0")
    cut = run_cli(*ask, "--prompt", "What colour is the sky?", "--max-tokens", "3")
    assert cut.returncode == 0 and cut.stdout.strip()
    assert cut.stderr == (
        "note: the answer reached the limit of 3 new tokens and may be missing "
        "its end; raise --max-tokens for longer answers\n"
    )
    piped = run_cli(*ask, "--max-tokens", "3", input="What colour is the sky?\nHello!\n")
    assert len(piped.stdout.splitlines()) == 2 and piped.stderr.count("note: the answer reached") == 2
    whole = run_cli(*ask, "--prompt", "What colour is the sky?")  # the trained lengths' limit
    assert whole.stdout == "The sky is blue on a clear day.\n" and whole.stderr == ""


def test_a_model_that_computes_nan_is_refused_in_one_line(tiny_onnx_dir, tmp_path):
    model = nan_copy(tiny_onnx_dir, tmp_path / "nan_model")
    result = run_cli("chat", "--model-path", str(model), "--precision", "fp32", "--prompt", "Hello!")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {model / 'model.'}")  # the graph that ran
    assert result.stderr.endswith(
        ".onnx: the model computes non-finite logits (NaN or infinity), so its weights are broken: retrain it\n"
    )


def test_reload_picks_up_a_promoted_model_keeping_the_conversation(tiny_onnx_dir, worse_onnx_dir, tmp_path):
    import subprocess

    from mtnsails.loop.promoter import Promoter

    live = tmp_path / "live"
    shutil.copytree(worse_onnx_dir, live)
    question = TINY_CONVERSATIONS[4]
    chat = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "main.py"),
            "chat",
            "--model-path",
            str(live),
            "--temperature",
            "0",
            "--precision",
            "fp32",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    chat.stdin.write(question["input"] + "\n")
    chat.stdin.flush()
    assert chat.stdout.readline().strip() != question["output"]  # the worse model
    assert Promoter(live).promote(tiny_onnx_dir, TINY_CONVERSATIONS).promoted
    chat.stdin.write("/reset\n/reload\n" + question["input"] + "\n")
    stdout, stderr = chat.communicate(timeout=120)
    assert chat.returncode == 0, stderr
    assert stdout.splitlines() == [question["output"]]
