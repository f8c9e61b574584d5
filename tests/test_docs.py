"""The documentation stays true: docs/API.md's examples run, docs/commands.md is what the parsers
generate, every link inside the repository resolves, and every module path the pages name exists."""

from __future__ import annotations

import ast
import importlib.util
import re

import pytest
from conftest import REPO_ROOT

API_DOC = REPO_ROOT / "docs" / "API.md"
README = REPO_ROOT / "README.md"
PAGES = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
GENERATOR = REPO_ROOT / "docs" / "generate_commands.py"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)


def load_generator():
    spec = importlib.util.spec_from_file_location("generate_commands", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def without_code_blocks(markdown: str) -> str:
    return re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats -1, -2."""
    seen: dict[str, int] = {}
    result = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", without_code_blocks(markdown), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        result.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return result


@pytest.mark.slow  # its blocks train and export a model
def test_api_doc_examples_run(tmp_path, monkeypatch):
    """Every python block of docs/API.md, in order, in one namespace, in a fresh directory."""
    blocks = python_blocks(API_DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 10
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for number, block in enumerate(blocks, start=1):
        try:
            exec(compile(block, f"docs/API.md python block {number}", "exec"), namespace)
        except Exception as error:
            pytest.fail(f"docs/API.md python block {number} failed: {error!r}\n{block}")


def test_commands_reference_is_up_to_date():
    generated = load_generator().render()
    written = (REPO_ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    assert written == generated, (
        "docs/commands.md differs from what the argparse parsers generate: run "
        "`python docs/generate_commands.py` and commit docs/commands.md"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_links_inside_the_repository_resolve(page):
    """Every relative link names an existing file, and every #anchor a heading of its page."""
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", without_code_blocks(text)):
        if re.match(r"[a-z]+:", target):
            continue  # https://..., mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text(encoding="utf-8")):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{page.relative_to(REPO_ROOT)}: broken links: {broken}"


def defined_names(module_file) -> set[str]:
    """Top-level names a module defines or imports, read from its source (nothing is imported)."""
    names = set()
    for node in ast.parse(module_file.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def names_something(dotted: str) -> bool:
    """Is `mtnsails.a.b.Name` a package, module, or a name one of them defines?"""
    import mtnsails

    parts = dotted.split(".")
    if len(parts) == 2 and parts[1] in mtnsails.__all__:
        return True  # the package's lazy exports
    path = REPO_ROOT
    for index, part in enumerate(parts):
        if (path / part).is_dir():
            path = path / part
        elif (path / f"{part}.py").is_file():
            rest = parts[index + 1 :]
            return not rest or (len(rest) <= 2 and rest[0] in defined_names(path / f"{part}.py"))
        else:
            return (path / "__init__.py").is_file() and part in defined_names(path / "__init__.py")
    return True


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_named_modules_and_files_exist(page):
    """Module paths (`mtnsails.data.handler.ConversationDataHandler`) and repository files
    (`mtnsails/quality/rules.py`, `bench/chat_bench.py`) named by the page exist."""
    text = page.read_text(encoding="utf-8")
    dotted = set(re.findall(r"\bmtnsails(?:\.[A-Za-z_]\w*)+", text)) - {"mtnsails.json"}
    missing = sorted(name for name in dotted if not names_something(name))
    files = set(re.findall(r"\b((?:mtnsails|bench|tests|docs)/[\w./*-]*\w)", text))
    missing += sorted(f for f in files if not any(REPO_ROOT.glob(f)))
    assert not missing, f"{page.relative_to(REPO_ROOT)} names what does not exist: {missing}"


def test_readme_is_a_five_minute_read():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300, "README.md is over 300 lines: move detail to docs/"
    bash = "\n".join(re.findall(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL))
    assert "HF_HUB_OFFLINE=1 python -m pytest -q" in bash.splitlines(), "CI runs this line verbatim"
