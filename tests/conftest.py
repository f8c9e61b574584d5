"""Shared fixtures. Tests never touch the network: the hub is switched off before any import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(__file__).resolve().parent / "data"
EXAMPLE_DATA = REPO_ROOT / "example_conversations.json"


def run_cli(*args: str, input: str | None = None, cwd: Path | None = None,
            timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python main.py ARGS` in a real subprocess and capture its output as text."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "main.py"), *args],
        input=input, capture_output=True, text=True, cwd=cwd or REPO_ROOT, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def untrained_tiny_model_dir(tmp_path_factory) -> Path:
    """The embedded default model, randomly initialised and saved like any HF model."""
    from mtnsails.models import build_embedded_model

    model, tokenizer = build_embedded_model(["User: hello\nAssistant: Hello! How can I help?"])
    path = tmp_path_factory.mktemp("untrained_tiny")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
