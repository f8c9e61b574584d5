"""Shared fixtures. Tests never touch the network: the hub is switched off before any import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests' models are tiny: a second torch thread has little to do, and on a CPU that other
# jobs share the two wait for each other (verify took 1.6 s with one thread, 6-9 s with two on
# a busy 2-core machine). Set before torch loads, for this process and the ones tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(__file__).resolve().parent / "data"
EXAMPLE_DATA = REPO_ROOT / "example_conversations.json"


# The session fixtures that train or export a model (each the start of a chain: tiny_onnx_dir,
# editable_onnx_dir and worse_onnx_dir stand on trained_tiny_model_dir). A test that uses one,
# itself or through another fixture, is `slow`; `item.fixturenames` is the whole closure, so a
# new fixture built on these is caught too. A test that trains or exports without one of these
# (a CLI subprocess, a script) carries the marker itself.
MODEL_FIXTURES = frozenset({"trained_tiny_model_dir", "system_tiny_onnx_dir"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def run_cli(
    *args: str, input: str | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run `python main.py ARGS` in a real subprocess and capture its output as text."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "main.py"), *args],
        input=input,
        capture_output=True,
        text=True,
        cwd=cwd or REPO_ROOT,
        timeout=timeout,
    )


@pytest.fixture
def cli_here(capfd, monkeypatch):
    """`run_cli` through `cli.main` (what main.py calls) in this process: torch and transformers
    load once per test session instead of once per run (~10 s of CPU each). Where the behaviour
    needs a process of its own (main.py's exit, signals, start-up imports), use `run_cli`."""

    def run(*args: str, input: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        import io

        from mtnsails.cli import main

        if cwd is not None:
            monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "stdin", io.StringIO(input or ""))
        capfd.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse's refusals exit as main.py would
            code = exit.code
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run


def unreadable_file(path: Path) -> Path:
    """A file at `path` whose reading fails with an OSError: unreadable by mode, or (for root,
    whom modes do not stop) a link to /proc/self/mem, which fails to read at offset 0."""
    if os.geteuid() == 0:
        path.symlink_to("/proc/self/mem")
    else:
        path.write_text("[]")
        path.chmod(0)
    return path


def read_only_directory(tmp_path: Path) -> Path:
    """A directory where creating a file fails with PermissionError: a mode-0555 folder, or
    (for root, whom modes do not stop) /sys, where even root may not create files."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def assert_one_line_error(result, *phrases):
    """A CLI run that failed as bad input should: exit 2, one `error: ...` line holding every
    phrase on stderr, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(phrase in lines[0] for phrase in phrases), lines[0]


def nan_copy(model_dir: Path, path: Path) -> Path:
    """A copy of a model directory (PyTorch or ONNX) whose float weights are all NaN, as a
    diverged training run leaves them."""
    import shutil

    import numpy as np

    shutil.copytree(model_dir, path)
    graphs = list(path.glob("*.onnx"))  # the exported ones and their stored optimised versions
    for graph_file in graphs:
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(graph_file))
        for initializer in graph.graph.initializer:
            weights = numpy_helper.to_array(initializer)
            if weights.dtype == np.float32 and weights.size > 1:
                initializer.CopyFrom(numpy_helper.from_array(np.full_like(weights, np.nan), initializer.name))
        onnx.save(graph, str(graph_file))
    if not graphs:
        from safetensors.numpy import load_file, save_file

        weights = load_file(path / "model.safetensors")
        save_file(
            {
                name: np.full_like(value, np.nan) if value.dtype == np.float32 else value
                for name, value in weights.items()
            },
            path / "model.safetensors",
            metadata={"format": "pt"},
        )
    return path


@pytest.fixture(scope="session")
def untrained_tiny_model_dir(tmp_path_factory) -> Path:
    """The embedded default model, randomly initialised and saved like any HF model."""
    from mtnsails.train.models import build_embedded_model

    model, tokenizer = build_embedded_model(["User: hello\nAssistant: Hello! How can I help?"])
    path = tmp_path_factory.mktemp("untrained_tiny")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# A small fixed data set the embedded model learns by heart (helpers assert on its answers).
TINY_CONVERSATIONS = [
    {"input": "What is the capital of France?", "output": "The capital of France is Paris."},
    {"input": "What colour is the sky?", "output": "The sky is blue on a clear day."},
    {"input": "How many legs does a spider have?", "output": "A spider has eight legs."},
    {"input": "Who wrote Hamlet?", "output": "Hamlet was written by William Shakespeare."},
    {"input": "What is two plus two?", "output": "Two plus two is four."},
    {"input": "What do bees make?", "output": "Bees make honey and wax."},
    {"input": "Hello!", "output": "Hello! How can I help you today?"},
    {
        "input": "And what is its largest river?",
        "output": "Its longest river is the Loire.",
        "history": [{"input": "Which country is Paris in?", "output": "Paris is in France."}],
    },
]


def train_tiny(
    conversations: list[dict],
    output_dir: Path,
    epochs: int = 60,
    data_file: Path | None = None,
    onnx_dir: Path | None = None,
) -> Path:
    """The embedded model trained in-process (real training, seeded) on `conversations` into
    `output_dir`; with `onnx_dir`, also exported there. Returns the last directory written.
    60 epochs at 2e-3 make it answer every trained question with its trained answer."""
    from mtnsails.export.converter import ONNXConverter
    from mtnsails.train.config import TrainingConfig
    from mtnsails.train.trainer import LLMTrainer

    config = TrainingConfig(
        model_name="tiny",
        output_dir=str(output_dir),
        num_epochs=epochs,
        learning_rate=2e-3,
        batch_size=4,
        save_steps=1000,
        quiet=True,
        seed=0,
    )
    trainer = LLMTrainer(config=config)
    trainer.train_conversations(conversations, data_file=data_file)
    trainer.save_model()
    if onnx_dir is None:
        return output_dir
    ONNXConverter(output_dir, quiet=True).convert_to_onnx(onnx_dir)
    return onnx_dir


@pytest.fixture(scope="session")
def trained_tiny_model_dir(tmp_path_factory) -> Path:
    """The embedded model trained until it greedily answers every TINY_CONVERSATIONS question
    with its trained answer; an mtnsails model directory."""
    return train_tiny(TINY_CONVERSATIONS, tmp_path_factory.mktemp("trained_tiny") / "model")


@pytest.fixture(scope="session")
def tiny_onnx_dir(trained_tiny_model_dir, tmp_path_factory) -> Path:
    """`trained_tiny_model_dir` exported by ONNXConverter: model.onnx + model_int8.onnx + tokenizer."""
    from mtnsails.export.converter import ONNXConverter

    path = tmp_path_factory.mktemp("tiny_onnx") / "onnx"
    ONNXConverter(trained_tiny_model_dir, quiet=True).convert_to_onnx(path, quantize="int8")
    return path


SYSTEM_PROMPT = "You are Captain Sails. Answer like a ship's captain."
# OpenAI-style records that all carry one system prompt (the answers differ from TINY_CONVERSATIONS'
# so that a model trained on them answers these only after this system prompt).
SYSTEM_CONVERSATIONS = [
    {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }
    for question, answer in [
        ("What is the capital of France?", "Aye, Paris it is, matey."),
        ("What do bees make?", "Honey, by the barrel, matey."),
        ("Who wrote Hamlet?", "Shakespeare, a landlubber, matey."),
    ]
]


# Questions TINY_CONVERSATIONS does not have: a model trained on them records other questions.
OTHER_CONVERSATIONS = [
    {"input": "How many days are in a week?", "output": "A week has seven days."},
    {"input": "Which mountain is the tallest on Earth?", "output": "Mount Everest is the tallest."},
]


@pytest.fixture(scope="session")
def other_onnx_dir(tmp_path_factory) -> Path:
    """The embedded model trained briefly on OTHER_CONVERSATIONS, then exported: a real model
    directory whose recorded questions (and history length, 0) differ from `tiny_onnx_dir`'s.
    Its answers are not learned: tests use it for what the directory records."""
    root = tmp_path_factory.mktemp("other_tiny")
    return train_tiny(OTHER_CONVERSATIONS, root / "model", epochs=1, onnx_dir=root / "onnx")


@pytest.fixture
def editable_onnx_dir(tiny_onnx_dir, tmp_path) -> Path:
    """A copy of the tiny export that a test may change or damage."""
    import shutil

    path = tmp_path / "onnx"
    shutil.copytree(tiny_onnx_dir, path)
    return path


@pytest.fixture(scope="session")
def system_tiny_onnx_dir(tmp_path_factory) -> Path:
    """The embedded model trained on SYSTEM_CONVERSATIONS (read from a JSON Lines file, as
    `train` reads it), then exported: the system prompt and answer lengths recorded by training
    travel into the ONNX directory."""
    import json

    from mtnsails.data.handler import ConversationDataHandler

    root = tmp_path_factory.mktemp("system_tiny")
    data = root / "system.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in SYSTEM_CONVERSATIONS))
    conversations = ConversationDataHandler.from_file(data).conversations
    return train_tiny(conversations, root / "model", epochs=40, data_file=data, onnx_dir=root / "onnx")


@pytest.fixture(scope="session")
def worse_onnx_dir(tiny_onnx_dir, tmp_path_factory) -> Path:
    """`tiny_onnx_dir`'s weights prompted with a template they never saw: a real, clearly worse
    ONNX model."""
    import json
    import shutil

    path = tmp_path_factory.mktemp("worse") / "onnx"
    shutil.copytree(tiny_onnx_dir, path)
    meta = json.loads((path / "mtnsails.json").read_text())
    meta["template"] = {"template": "Q {input} A {output}", "separator": "\n\n"}
    (path / "mtnsails.json").write_text(json.dumps(meta))
    return path
