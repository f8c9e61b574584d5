"""The wheel installs anywhere: built from this checkout, it holds every subpackage and resource,
and installed where only the light dependencies are (no torch, no transformers) it chats with an
exported model; with the `serve` extra it answers an HTTP chat-completions request.

Offline by construction, nothing is downloaded:
- the wheel: `pip wheel --no-deps --no-build-isolation --no-index` on a copy of the files
  packaging reads (pyproject.toml, README.md, mtnsails/), so a stale build/ of the checkout
  cannot add a file the sources lack; the backend is this environment's setuptools
  (requirements-dev.txt pins it).
- the installation: a fresh `python -m venv --without-pip`, into which this environment's pip
  installs the wheel (`pip --python VENV_PYTHON install --no-index --no-deps`, pip >= 22.3).
- its dependencies: the distributions a set of requirements needs (the closure of their
  `Requires-Dist` in this environment, markers evaluated, extras not followed) are linked into
  one folder, and a .pth file in the venv's site-packages puts that folder on its sys.path.
  Nothing else of this environment is visible there, so an import the light set lacks fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TINY_CONVERSATIONS

# What `pip install mtnsails` needs for chat and what the `serve` extra adds, read from the
# built wheel's own metadata below; these are just the names the tests expect to find there.
CORE = {"numpy", "orjson", "tokenizers", "onnxruntime", "jinja2", "wordllama"}
SERVE = {"starlette", "uvicorn"}
HEAVY = ("torch", "transformers", "optimum", "datasets", "accelerate")  # the `train` extra's
# What packaging reads: copied alone, so the checkout's build/ and *.egg-info play no part.
PACKAGING_FILES = ("pyproject.toml", "README.md", "setup.py", "setup.cfg", "MANIFEST.in")
# The child processes must not reach for the network or see this environment.
ENV = {name: value for name, value in os.environ.items() if not name.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
ENV.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1", HF_HUB_OFFLINE="1")


def source_files() -> set[str]:
    """The package's files in the checkout, as paths in a wheel ("mtnsails/cli.py")."""
    return {
        path.relative_to(REPO_ROOT).as_posix()
        for path in (REPO_ROOT / "mtnsails").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("wheel_source")
    for name in PACKAGING_FILES:
        if (REPO_ROOT / name).is_file():
            shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "mtnsails", source / "mtnsails", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (built,) = out.glob("mtnsails-*.whl")
    return built


def test_the_wheel_holds_every_module_and_resource_and_the_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(
            archive.read(name).decode() for name in names if name.endswith(".dist-info/entry_points.txt")
        )
    missing = sorted(source_files() - names)
    assert not missing, f"the wheel leaves out {len(missing)} file(s): {missing[:10]}"
    assert "mtnsails = mtnsails.cli:main" in entry_points


PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[a-z0-9,_-]+\])?==(\S+)")


def requirement_lines(path: Path) -> list[str]:
    """The lines of a requirements file that are not blank or comments, comments cut off."""
    lines = (line.split(" #", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def pins(lines: list[str], file: str) -> dict[str, str]:
    """{canonical name: version} of `name==version` lines; any other line fails the test."""
    from packaging.utils import canonicalize_name

    found = {}
    for line in lines:
        match = PIN.fullmatch(line)
        assert match, f"{file}: {line!r} is not name==version"
        found[canonicalize_name(match.group(1))] = match.group(3)
    return found


def test_the_pinned_sets_lie_inside_pyprojects_ranges():
    """requirements.txt pins every runtime requirement of pyproject.toml (core, serve, train)
    and nothing else is in it; requirements-dev.txt is requirements.txt, a pin of every test and
    dev tool, then the package itself. Each pin satisfies its range."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    runtime = pins(requirement_lines(REPO_ROOT / "requirements.txt"), "requirements.txt")
    dev_lines = requirement_lines(REPO_ROOT / "requirements-dev.txt")
    assert dev_lines[0] == "-r requirements.txt" and dev_lines[-1] == "-e .", dev_lines
    dev = pins(dev_lines[1:-1], "requirements-dev.txt")
    for group, lines, pinned in [
        ("dependencies", project["dependencies"], runtime),
        *((f"[{extra}]", extras[extra], runtime) for extra in ("serve", "train")),
        *((f"[{extra}]", extras[extra], dev) for extra in ("test", "dev")),
    ]:
        for line in lines:
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            if name == "mtnsails":  # dev's mtnsails[test]
                continue
            assert name in pinned, f"pyproject {group} {line!r} has no pin"
            assert requirement.specifier.contains(pinned[name], prereleases=True), (
                f"{name}=={pinned[name]} is outside pyproject {group} {line!r}"
            )


def requirements(wheel: Path, extra: str | None = None) -> set[str]:
    """The names the wheel's METADATA requires (with `extra`: only what that extra adds)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        meta = next(archive.read(name).decode() for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
    names = set()
    for line in meta.splitlines():
        if line.startswith("Requires-Dist: "):
            requirement = Requirement(line.split(": ", 1)[1])
            marker = requirement.marker
            if (marker is None) == (extra is None) and (marker is None or marker.evaluate({"extra": extra})):
                names.add(requirement.name)
    return names


def closure(names: set[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions `names` need, with theirs, and so on (extras not followed)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        found[name] = metadata.distribution(name)
        for line in found[name].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def link_distributions(distributions, folder: Path) -> None:
    """Link each distribution's top-level entries (packages, modules, .dist-info) into `folder`."""
    folder.mkdir(exist_ok=True)
    for distribution in distributions:
        assert distribution.files, f"{distribution.metadata['Name']}: no RECORD to find its files by"
        for top in {file.parts[0] for file in distribution.files if file.parts[0] != ".."}:
            link, target = folder / top, Path(distribution.locate_file(top))
            if target.exists() and not link.exists():
                link.symlink_to(target)


class Installation:
    """A fresh venv holding the wheel; its dependencies are what `add` linked in."""

    def __init__(self, root: Path, wheel: Path) -> None:
        from packaging.version import Version

        assert Version(metadata.version("pip")) >= Version("22.3"), "pip --python needs pip >= 22.3"
        self.root = root
        self.linked = root / "linked"
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, env=ENV, timeout=120
        )
        self.python = root / "venv" / "bin" / "python"
        self.command = root / "venv" / "bin" / "mtnsails"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(self.python),
                "install",
                "--no-index",
                "--no-deps",
                "--no-compile",
                str(wheel),
            ],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        site = self.run(str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        (Path(site.stdout.strip()) / "linked_dependencies.pth").write_text(f"{self.linked}\n")

    def add(self, names: set[str]) -> set[str]:
        """Make the distributions `names` need importable; the names of all that are."""
        distributions = closure(names)
        link_distributions(distributions.values(), self.linked)
        return set(distributions)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        # Run from the venv's folder: the checkout's mtnsails/ must not be importable.
        return subprocess.run(args, capture_output=True, text=True, cwd=self.root, env=ENV, timeout=timeout)

    def importable(self, *modules: str) -> set[str]:
        done = self.run(
            str(self.python),
            "-c",
            "import importlib.util, sys\nprint(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))",
            *modules,
        )
        assert done.returncode == 0, done.stderr
        return set(done.stdout.split())


@pytest.fixture
def installation(wheel, tmp_path) -> Installation:
    """The wheel and only its core dependencies, in a venv of the test's own."""
    installed = Installation(tmp_path, wheel)
    assert requirements(wheel) == CORE
    linked = installed.add(CORE)
    assert not linked.intersection(HEAVY), f"the core needs the train extra's {linked & set(HEAVY)}"
    return installed


@pytest.mark.slow
def test_the_wheel_runs_chat_with_the_light_dependencies_alone(installation, tiny_onnx_dir):
    assert installation.importable(*HEAVY, *SERVE) == set()
    where = installation.run(str(installation.python), "-c", "import mtnsails; print(mtnsails.__file__)")
    assert where.stdout.startswith(str(installation.root / "venv")), where.stdout + where.stderr

    shown = installation.run(str(installation.command), "--help")
    assert shown.returncode == 0 and "usage: mtnsails" in shown.stdout, shown.stderr
    conversation = TINY_CONVERSATIONS[0]
    answered = installation.run(
        str(installation.command),
        "chat",
        "--model-path",
        str(tiny_onnx_dir),
        "--prompt",
        conversation["input"],
        "--temperature",
        "0",
    )
    assert answered.returncode == 0, answered.stderr[-3000:]
    assert answered.stdout == conversation["output"] + "\n"
    for command, extra in (
        (["serve", "--model-path", str(tiny_onnx_dir), "--port", "0"], "serve"),
        (["train", "--model-name", "tiny", "--output-dir", str(installation.root / "model")], "train"),
    ):
        missing = installation.run(str(installation.command), *command)
        assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr[-3000:]
        assert missing.stderr.startswith(f"error: {command[0]} needs ") and f"mtnsails[{extra}]" in missing.stderr


@pytest.mark.slow
def test_the_wheel_with_the_serve_extra_answers_a_chat_completion(installation, wheel, tiny_onnx_dir):
    assert requirements(wheel, "serve") == SERVE
    installation.add(SERVE)
    assert installation.importable(*HEAVY, *SERVE) == SERVE
    server = subprocess.Popen(
        [str(installation.command), "serve", "--model-path", str(tiny_onnx_dir), "--port", "0"],
        cwd=installation.root,
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stderr.readline()
        address = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
        assert address, line + server.stderr.read() if server.poll() is not None else line
        conversation = TINY_CONVERSATIONS[2]
        request = urllib.request.Request(
            address.group(1) + "/v1/chat/completions",
            headers={"Content-Type": "application/json"},
            data=json.dumps(
                {"model": "onnx", "temperature": 0, "messages": [{"role": "user", "content": conversation["input"]}]}
            ).encode(),
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
        assert answer["choices"][0]["message"]["content"] == conversation["output"]
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        server.stderr.close()
    assert server.returncode == 0
