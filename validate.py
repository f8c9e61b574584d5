"""Check that this mtnsails installation is complete and works.

    python validate.py          # files, dependencies and versions, the CLI (a few seconds)
    python validate.py --full   # ... and a tiny train -> convert -> chat run in a temp folder

Prints a checklist (✓ ok, ⚠ works but differs from the tested versions, ✗ missing or broken,
· for your information) and exits 1 when anything is missing or broken. Loads no model unless
--full.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent
STAGES = ("core", "model_dir", "quality", "data", "train", "inference", "export", "serve", "loop", "commands")
REQUIRED_FILES = [
    "main.py",
    "requirements.txt",
    "pyproject.toml",
    "process_scraped_content.py",
    "mtnsails/__init__.py",
    "mtnsails/cli.py",
    *(f"mtnsails/{stage}/__init__.py" for stage in STAGES),
    "mtnsails/train/resources/example_conversations.json",
    "mtnsails/train/resources/corpus.txt",
    "mtnsails/train/resources/synonyms.txt",
]
# (import name, distribution name whose version is shown, what needs it: None = everything)
DEPENDENCIES = [
    ("numpy", "numpy", None),
    ("orjson", "orjson", None),  # validate reads JSON Lines with it
    ("tokenizers", "tokenizers", None),
    ("onnxruntime", "onnxruntime", None),
    ("torch", "torch", None),
    ("transformers", "transformers", None),
    ("datasets", "datasets", None),
    ("accelerate", "accelerate", None),
    ("safetensors", "safetensors", None),
    ("onnx", "onnx", None),
    ("optimum", "optimum", None),
    ("optimum.exporters.onnx", "optimum-onnx", None),  # the exporter lives in optimum-onnx
    ("onnx_ir", "onnx-ir", None),  # onnxruntime's int4 quantizer needs it
    ("gguf", "gguf", "convert --format gguf"),
    ("matplotlib", "matplotlib", "plots loss.png after training"),
    ("starlette", "starlette", "serve"),
    ("uvicorn", "uvicorn", "serve"),
]
# Modules that import an optional dependency: without it they are skipped, as their command is.
OPTIONAL_MODULES = {"mtnsails.serve.server": "starlette"}


class Checklist:
    """Collects ✓/⚠/✗ lines as they are printed; `failed` counts the ✗."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def section(self, title: str) -> None:
        print(f"\n{title}")

    def ok(self, text: str) -> None:
        print(f"  ✓ {text}")

    def warn(self, text: str) -> None:
        print(f"  ⚠ {text}")

    def info(self, text: str) -> None:
        print(f"  · {text}")

    def fail(self, text: str) -> None:
        print(f"  ✗ {text}")
        self.failed.append(text)


def pinned_versions() -> dict[str, str]:
    """`name==version` lines of requirements.txt, names normalised ("optimum-onnx")."""
    pins = {}
    path = ROOT / "requirements.txt"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.match(r"^\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)", line)
            if match:
                pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def check_files(checks: Checklist) -> None:
    checks.section("Files")
    missing = [name for name in REQUIRED_FILES if not (ROOT / name).is_file()]
    for name in missing:
        checks.fail(f"{name} is missing (re-clone or re-download the project)")
    if not missing:
        checks.ok(f"all {len(REQUIRED_FILES)} required files present in {ROOT}")


def check_modules(checks: Checklist) -> None:
    """Import every module of the package in a fresh process: a module left out of a copy, or
    one that imports a missing one, shows here rather than in the middle of a run."""
    code = (
        "import importlib, pkgutil, mtnsails\n"
        "names = [m.name for m in pkgutil.walk_packages(mtnsails.__path__, 'mtnsails.')\n"
        "         if not m.name.endswith('__main__')]\n"
        "for name in names:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as error:\n"
        f"        if {OPTIONAL_MODULES!r}.get(name) != (error.name or '').partition('.')[0]:\n"
        "            raise\n"
        "print(len(names))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode == 0:
        checks.ok(f"all {done.stdout.strip()} modules of the mtnsails package import")
    else:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        checks.fail(f"the mtnsails package does not import: {last}")


def check_dependencies(checks: Checklist) -> None:
    checks.section(f"Python {sys.version.split()[0]} and dependencies")
    if sys.version_info < (3, 10):  # noqa: UP036 (this script is what tells an older Python so)
        checks.fail("Python 3.10 or newer is needed")
    pins = pinned_versions()
    for module, distribution, needed_by in DEPENDENCIES:
        start = time.perf_counter()
        try:
            importlib.import_module(module)
        except Exception as error:  # any failure to import means the same to the user
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
            text = f"{module}: cannot import ({detail})"
            if needed_by is None:
                checks.fail(f"{text}; run: pip install -r requirements.txt")
            else:
                checks.warn(f"{text}; optional ({needed_by})")
            continue
        seconds = time.perf_counter() - start
        try:
            version = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            version = "(version unknown)"
        pin = pins.get(distribution)
        line = f"{module} {version}" + (f"  [import {seconds:.1f} s]" if seconds >= 0.5 else "")
        if pin and pin != version.split("+")[0]:  # "2.13.0+cpu" is the pinned 2.13.0
            checks.warn(f"{line}; requirements.txt pins {pin} (the tested set)")
        else:
            checks.ok(line)


def run_main(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def check_cli(checks: Checklist) -> None:
    checks.section("Command line")
    sys.path.insert(0, str(ROOT))
    from mtnsails.cli import COMMANDS

    for args in [["--help"]] + [[command, "--help"] for command in COMMANDS]:
        shown = "python main.py " + " ".join(args)
        try:
            done = run_main(*args, timeout=60)
        except subprocess.TimeoutExpired:
            checks.fail(f"{shown}: no answer within 60 s")
            continue
        if done.returncode == 0 and "usage:" in done.stdout:
            checks.ok(shown)
        else:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            checks.fail(f"{shown}: exit {done.returncode}: {last}")


def check_offline_model(checks: Checklist) -> None:
    """Say (without any network access) whether the default hub model is cached."""
    checks.section("Base model")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache("distilgpt2", "config.json"), str)
    except Exception:  # an unusable cache is the same as no cache here
        cached = False
    if cached:
        checks.ok("distilgpt2 is in the local Hugging Face cache")
    else:
        checks.info(
            "distilgpt2 is not cached: train uses the embedded model 'tiny' offline "
            "(download once with network to use distilgpt2)"
        )


def check_full_run(checks: Checklist) -> None:
    """Train the embedded model briefly, export it to ONNX, and chat with it."""
    checks.section("End-to-end run (--full)")
    with tempfile.TemporaryDirectory(prefix="mtnsails-validate-") as tmp:
        model, onnx = Path(tmp, "model"), Path(tmp, "onnx")
        steps = [
            ("train", ["train", "--model-name", "tiny", "--epochs", "1", "--output-dir", str(model), "--quiet"]),
            ("convert", ["convert", "--model-path", str(model), "--onnx-output", str(onnx), "--verify"]),
            ("chat", ["chat", "--model-path", str(onnx), "--prompt", "What is mtnsails?", "--max-tokens", "8"]),
        ]
        for name, args in steps:
            start = time.perf_counter()
            try:
                done = run_main(*args, timeout=300)
            except subprocess.TimeoutExpired:
                checks.fail(f"{name}: did not finish within 300 s")
                return
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                checks.fail(f"{name}: exit {done.returncode}: {last}")
                return
            checks.ok(f"python main.py {name} ... ({seconds:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full", action="store_true", help="also train, convert and chat with a tiny model (about a minute)"
    )
    args = parser.parse_args(argv)
    print(f"mtnsails installation check ({ROOT})")
    checks = Checklist()
    check_files(checks)
    check_dependencies(checks)
    if not checks.failed:
        check_modules(checks)
    check_cli(checks)
    check_offline_model(checks)
    if args.full and not checks.failed:
        check_full_run(checks)
    if checks.failed:
        print(f"\n✗ {len(checks.failed)} problem(s) found; fix them and run python validate.py again")
        return 1
    print("\n✓ mtnsails is ready: try python example.py or python main.py pipeline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
