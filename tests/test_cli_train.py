"""`python main.py train`: errors, fallback, Ctrl-C + --resume, torchrun. Real subprocesses where
the behaviour needs a process (exit before anything loads, all that stderr shows, a full disk,
Ctrl-C, torchrun); the other runs go through `cli.main` in this process (`cli_here`), so torch
loads once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT, TINY_CONVERSATIONS, assert_one_line_error, read_only_directory, run_cli, unreadable_file
from test_models import BROKEN_MODEL_DIRECTORIES, broken_copy

from mtnsails.core.files import file_sha256


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.json"
    path.write_text(json.dumps(TINY_CONVERSATIONS))
    return path


@pytest.mark.parametrize(
    "args, phrases",
    [
        (["--data-file", "missing.json"], ["missing.json", "no such file"]),
        (["--epochs", "0"], ["--epochs must be greater than 0"]),
        (["--learning-rate", "-1"], ["--learning-rate must be greater than 0"]),
        (["--eval-split", "1"], ["--eval-split"]),
        (["--seed", "-1"], ["--seed must be from 0 to 4294967295, got -1"]),
    ],
)
def test_bad_settings_are_refused_before_anything_loads(args, phrases, tmp_path):
    result = run_cli("train", "--output-dir", str(tmp_path / "out"), *args)
    assert_one_line_error(result, *phrases)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name, content, phrase",
    [
        (
            "surrogate.jsonl",
            '{"input": "Hi?", "output": "Hello \\ud800 friend."}\n',
            "line 1: holds a lone surrogate escape",
        ),
        ("huge.json", '[{"input": "Hi?", "output": "Hello.", "n": %s}]' % ("7" * 5001), "a number of 5001 digits"),
        ("unreadable.json", None, "cannot be read ("),
    ],
)
def test_data_python_cannot_take_is_a_one_line_error(name, content, phrase, tmp_path):
    data = tmp_path / name
    if content is None:
        unreadable_file(data)
    else:
        data.write_text(content)
    result = run_cli(
        "train", "--data-file", str(data), "--model-name", "tiny", "--output-dir", str(tmp_path / "out"), "--quiet"
    )
    assert_one_line_error(result, f"{data}: ", phrase)
    assert not (tmp_path / "out").exists()


def test_bad_model_names_are_one_line_errors_that_leave_nothing_behind(
    tmp_path, tiny_data, untrained_tiny_model_dir, cli_here
):
    (tmp_path / "not_a_model").mkdir()
    cases = [
        ("someone/no-such-model", "--model-name tiny"),
        ("bad name!!", "not a valid Hugging Face model name"),
        (str(tmp_path / "not_a_model"), "not a saved model"),
    ]
    cases += [
        (str(broken_copy(untrained_tiny_model_dir, tmp_path, damage)), problem)
        for damage, problem in BROKEN_MODEL_DIRECTORIES
    ]
    for name, phrase in cases:
        result = cli_here(
            "train",
            "--data-file",
            str(tiny_data),
            "--model-name",
            name,
            "--output-dir",
            str(tmp_path / "out"),
            "--quiet",
        )
        assert_one_line_error(result, f"--model-name {name}: ", phrase)
        assert not (tmp_path / "out").exists()
        assert not (tmp_path / "out.checkpoints").exists()  # the run failed before checkpointing


def test_an_output_dir_that_is_not_an_mtnsails_model_is_never_overwritten(tmp_path, tiny_data, cli_here):
    users = tmp_path / "thesis"
    users.mkdir()
    (users / "chapter1.tex").write_text("precious")
    result = cli_here(
        "train", "--data-file", str(tiny_data), "--model-name", "tiny", "--output-dir", str(users), "--quiet"
    )
    assert_one_line_error(result, "not an mtnsails output", "never overwritten")
    assert [p.name for p in users.iterdir()] == ["chapter1.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # no checkpoints left behind


def test_an_earlier_model_holding_the_users_files_is_never_replaced(tmp_path, cli_here, trained_tiny_model_dir):
    import shutil

    model = tmp_path / "op" / "m"
    shutil.copytree(trained_tiny_model_dir, model)
    data = model / "my_data.json"  # the data it trains on lives in the output folder
    data.write_text(json.dumps(TINY_CONVERSATIONS))
    (model / "NOTES.txt").write_text("precious")
    result = cli_here("train", "--model-name", "tiny", "--data-file", str(data), "--output-dir", str(model), "--quiet")
    assert_one_line_error(result, f"{model}: holds files mtnsails did not write (NOTES.txt, my_data.json)")
    assert (model / "NOTES.txt").read_text() == "precious" and data.exists()


def test_replacing_an_earlier_model_says_so_before_training(tmp_path, tiny_data, cli_here):
    from datetime import datetime

    args = [
        "train",
        "--model-name",
        "tiny",
        "--data-file",
        str(tiny_data),
        "--epochs",
        "1",
        "--output-dir",
        str(tmp_path / "model"),
    ]
    first = cli_here(*args)
    assert first.returncode == 0, first.stderr
    assert "replacing" not in first.stderr  # nothing was there
    trained = datetime.fromtimestamp((tmp_path / "model" / "mtnsails.json").stat().st_mtime)
    again = cli_here(*args)  # users rerun train: it replaces the model, and says so first
    assert again.returncode == 0, again.stderr
    lines = again.stderr.splitlines()
    note = next(index for index, line in enumerate(lines) if "replacing" in line)
    assert lines[note] == (
        f"note: replacing the model in {tmp_path / 'model'} (trained "
        f"{trained:%Y-%m-%d %H:%M} on tiny.json (8 examples) from tiny) once this "
        "run succeeds; choose another --output-dir to keep it"
    )
    assert note < next(index for index, line in enumerate(lines) if line.startswith("epoch "))
    assert "Model saved to" in again.stdout


def test_a_diverging_run_stops_and_keeps_the_previous_model(tmp_path, tiny_data, cli_here, trained_tiny_model_dir):
    import shutil

    output = tmp_path / "model"
    shutil.copytree(trained_tiny_model_dir, output)  # a good model from an earlier run
    before = {path.name: file_sha256(path) for path in output.iterdir()}
    result = cli_here(
        "train",
        "--model-name",
        "tiny",
        "--data-file",
        str(tiny_data),
        "--epochs",
        "2",
        "--learning-rate",
        "1e30",
        "--output-dir",
        str(output),
        "--quiet",
    )
    assert_one_line_error(result, "training stopped at step", "became nan", f"{output} was not replaced")
    assert {path.name: file_sha256(path) for path in output.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # no checkpoints left


def test_a_read_only_output_folder_is_refused_before_training(tmp_path, tiny_data, cli_here):
    read_only = read_only_directory(tmp_path)
    result = cli_here(
        "train",
        "--model-name",
        "tiny",
        "--data-file",
        str(tiny_data),
        "--output-dir",
        str(read_only / "model"),
        "--quiet",
    )
    assert_one_line_error(result, f"{read_only}: cannot be written")


def test_a_full_disk_during_training_is_a_one_line_error_that_keeps_the_previous_model(
    tmp_path, tiny_data, trained_tiny_model_dir
):
    """`ulimit -f` stands in for a full disk: the weights of a checkpoint fit, its optimizer
    state does not, so the save fails part-way through."""
    import resource
    import shutil

    output = tmp_path / "model"
    shutil.copytree(trained_tiny_model_dir, output)
    before = {path.name: file_sha256(path) for path in output.iterdir()}
    limit = 20 << 20
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "main.py"),
            "train",
            "--model-name",
            "tiny",
            "--data-file",
            str(tiny_data),
            "--epochs",
            "2",
            "--save-steps",
            "2",
            "--output-dir",
            str(output),
            "--quiet",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert_one_line_error(result, "cannot save a checkpoint in")
    assert {path.name: file_sha256(path) for path in output.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # no half checkpoint


def test_a_critical_data_set_blocks_training_unless_forced(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"input": f"Question {i}?", "output": "ok ok ok ok ok ok ok ok"} for i in range(10)]))
    result = run_cli("train", "--data-file", str(bad), "--model-name", "tiny", "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2 and "--force" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_default_model_offline_falls_back_to_the_embedded_model_with_one_notice(tmp_path, tiny_data):
    # a process of its own: a warning shown once per process would not show in this one
    result = run_cli(
        "train",
        "--data-file",
        str(tiny_data),
        "--epochs",
        "1",
        "--eval-split",
        "0.25",
        "--output-dir",
        str(tmp_path / "out"),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    (notice,) = result.stderr.splitlines()  # --quiet: the notice is all there is on stderr
    assert notice.startswith("note: distilgpt2 ") and "embedded 'tiny' model" in notice
    meta = json.loads((tmp_path / "out" / "mtnsails.json").read_text())
    assert meta["embedded"] is True and meta["settings"]["eval_examples"] == 2
    saved, losses, held_out, next_command = result.stdout.splitlines()
    assert saved.startswith("Model saved to") and "eval loss" in losses and "perplexity" in losses
    # which answers the model lacks: the held-out questions, named even with --quiet
    questions = [TINY_CONVERSATIONS[i]["input"] for i in meta["held_out"]]
    assert held_out == (
        f'held out for the eval loss, so not learned: 2 of 8 conversations ("{questions[0]}", '
        f'"{questions[1]}"; all in mtnsails.json "held_out"); --eval-split 0 learns them all'
    )
    assert next_command.startswith("Next: python main.py convert --model-path")


@pytest.mark.slow
def test_off_a_terminal_progress_is_one_readable_line_per_logging_step(tmp_path, tiny_data, cli_here):
    import re

    result = cli_here(
        "train",
        "--model-name",
        "tiny",
        "--data-file",
        str(tiny_data),
        "--epochs",
        "2",
        "--eval-split",
        "0.25",
        "--output-dir",
        str(tmp_path / "out"),
    )  # piped
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "{'" not in result.stderr + result.stdout  # no bars, no dicts
    progress = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    clock = r"\d+:\d\d:\d\d"
    for step, line in enumerate([line for line in progress if "eval" not in line], start=1):
        assert re.fullmatch(
            rf"epoch {step / 2:.2f}/2, step {step}/4: loss \d+\.\d{{4}}, "
            rf"learning rate [\d.e-]+, elapsed {clock}, ETA {clock}",
            line,
        ), line
    evals = [line for line in progress if "eval" in line]
    assert len(evals) == 2 and re.fullmatch(
        rf"epoch 2\.00/2, step 4/4: eval loss \d+\.\d{{4}} "
        rf"\(perplexity [\d.]+\), elapsed {clock}, ETA {clock}",
        evals[-1],
    ), evals
    assert result.stdout.splitlines()[-4].startswith("Model saved to")


def test_ctrl_c_keeps_the_previous_model_and_resume_continues(tmp_path, tiny_data, cli_here, trained_tiny_model_dir):
    import shutil

    output = tmp_path / "model"
    shutil.copytree(trained_tiny_model_dir, output)  # a good model from an earlier run
    before = {path.name: file_sha256(path) for path in output.iterdir()}
    checkpoints = tmp_path / "model.checkpoints"
    # 20 epochs x 2 steps: the first checkpoint (step 5) comes long before the end
    args = [
        "train",
        "--model-name",
        "tiny",
        "--data-file",
        str(tiny_data),
        "--epochs",
        "20",
        "--save-steps",
        "5",
        "--output-dir",
        str(output),
    ]
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "main.py"), *args, "--quiet"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("checkpoint-*")) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr.splitlines()[-1]
    assert {path.name: file_sha256(path) for path in output.iterdir()} == before
    interrupted_at = max(int(path.name.split("-")[1]) for path in checkpoints.glob("checkpoint-*"))
    assert interrupted_at < 40  # it stopped early

    other_data = tmp_path / "other.json"
    other_data.write_text(json.dumps(TINY_CONVERSATIONS[:4]))
    result = cli_here(*args, "--data-file", str(other_data), "--resume")
    assert_one_line_error(result, "--resume", "another data")

    result = cli_here(*args, "--resume")
    assert result.returncode == 0, result.stderr
    meta = json.loads((output / "mtnsails.json").read_text())
    steps = [entry["step"] for entry in meta["loss_history"]]
    assert steps[0] < interrupted_at and steps[-1] == 40  # the history spans both runs
    assert file_sha256(output / "model.safetensors") != before["model.safetensors"]
    assert not checkpoints.exists()  # a finished run leaves nothing to resume
    assert "Model saved to" in result.stdout


@pytest.mark.slow
def test_two_process_data_parallel_training_on_cpu(tmp_path, tiny_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = tmp_path / "ddp_model"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO_ROOT / "main.py"),
        "train",
        "--model-name",
        "tiny",
        "--data-file",
        str(tiny_data),
        "--epochs",
        "2",
        "--output-dir",
        str(output),
        "--quiet",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Model saved to") == 1  # rank 0 alone writes and reports
    assert not list(tmp_path.glob(".ddp_model.*"))  # no leftover staging directories
    meta = json.loads((output / "mtnsails.json").read_text())
    assert meta["settings"]["num_epochs"] == 2
    AutoModelForCausalLM.from_pretrained(output)
    AutoTokenizer.from_pretrained(output)
