"""The companion scripts run as a newcomer runs them: `python example.py` and friends. A script
whose start-up is under test runs in a subprocess; the ones that load torch run their file as
`__main__` in this process, so torch and transformers load once per test session."""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLE_DATA, REPO_ROOT


def run_script(name: str, *args: str, python_flags: tuple = (), timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *python_flags, name, *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def run_script_here(path: Path, *args: str) -> int:
    """Run the script file as `python PATH ARGS` would, in this process; its exit status."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [str(path), *args])
        try:
            runpy.run_path(str(path), run_name="__main__")
        except SystemExit as exit:
            return exit.code
    return 0


def imported_modules(stderr: str) -> set[str]:
    """Top-level modules named in `python -X importtime` output."""
    return {
        line.rsplit("|", 1)[-1].strip().split(".")[0] for line in stderr.splitlines() if line.startswith("import time:")
    }


@pytest.mark.slow
def test_example_runs_the_whole_workflow_offline(tmp_path, capsys):
    code = run_script_here(REPO_ROOT / "example.py", "--keep", str(tmp_path))
    out, err = capsys.readouterr()
    assert code == 0, err
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in out
    assert "Data quality is GOOD" in out and ": verified (" in out
    # 50 epochs on 16 conversations: the model answers its training questions word for word
    assert "Bot: mtnsails turns question and answer conversations into a small chat model" in out
    assert out.count("Bot: ") == 3
    assert (tmp_path / "trained_model" / "mtnsails.json").exists()
    assert (tmp_path / "onnx_model" / "model.onnx").exists()
    assert len((tmp_path / "chat_log.jsonl").read_text().splitlines()) == 3


def test_demo_data_quality_explains_the_issues_without_torch():
    done = run_script("demo_data_quality.py", "--data-file", str(EXAMPLE_DATA), python_flags=("-X", "importtime"))
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "# good set: 6 conversations" in out and "# bad set: 11 conversations" in out
    assert "# example_conversations.json: 58 conversations" in out
    assert out.count("✓ passes every check") == 6 + 2  # the good set, two originals in the bad one
    for code_label in (
        "empty output",
        "empty input",
        "too-short output",
        "repetitive output",
        "gibberish output",
        "output echoes input",
        "incomplete output",
        "exact duplicate",
        "near duplicate",
    ):
        assert f"✗ {code_label}:" in out, code_label
    assert "why it matters:" in out and "# side by side" in out
    assert {"torch", "transformers"}.isdisjoint(imported_modules(done.stderr))


def test_demo_data_quality_reports_an_unreadable_data_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"input": "hi"}]')
    done = run_script("demo_data_quality.py", "--data-file", str(bad))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "missing 'output'" in done.stderr


@pytest.mark.slow
def test_validate_checks_everything_and_runs_end_to_end(capsys):
    code = run_script_here(REPO_ROOT / "validate.py", "--full")  # main.py runs in subprocesses
    out = capsys.readouterr().out
    assert code == 0, out
    assert "✗" not in out
    for item in (
        "torch",
        "transformers",
        "optimum.exporters.onnx",
        "onnxruntime",
        "numpy",
        "python main.py --help",
        "python main.py chat --help",
        "python main.py train ...",
        "python main.py convert ...",
        "python main.py chat ...",
    ):
        assert f"✓ {item}" in out, item
    assert out.rstrip().endswith("mtnsails is ready: try python example.py or python main.py pipeline")


def test_validate_without_the_serve_extra_warns_and_passes(tmp_path):
    """starlette missing (a module that cannot be imported shadows it): serve's module is skipped."""
    shadow = tmp_path / "starlette"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError('no starlette', name='starlette')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)])}
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "validate.py")], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stdout
    assert "⚠ starlette: cannot import" in done.stdout and "optional (serve)" in done.stdout
    assert "modules of the mtnsails package import" in done.stdout and "✗" not in done.stdout


def test_validate_fails_when_files_are_missing(tmp_path, capsys):
    shutil.copy(REPO_ROOT / "validate.py", tmp_path / "validate.py")
    assert run_script_here(tmp_path / "validate.py") == 1
    out = capsys.readouterr().out
    assert "✗ main.py is missing" in out and "✗ python main.py --help" in out
    assert "problem(s) found" in out
