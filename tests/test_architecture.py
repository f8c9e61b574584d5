"""The folder tree is the architecture: every import of the package, read from the source.

Stages from the bottom up. A module may import its own stage and the stages below it, never one
above, and no chain of imports comes back to where it started. Two places differ from the order
a user meets the stages in, because the code depends that way round:
- quality sits below data: the rules take conversations as plain dicts and read no file, while
  the readers (the handler's checks, the scraped-page filter) apply them;
- inference sits below export: `convert --verify` answers with the same decoder chat uses.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "mtnsails"
STAGES = ("core", "model_dir", "quality", "data", "train", "inference", "export", "serve", "loop", "commands", "cli")
TOP_LEVEL = {"__init__.py", "__main__.py", "cli.py", *STAGES[:-1]}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every mtnsails module `path` imports, at the top, inside functions or for type checking."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            found.update(f"{base}.{alias.name}" for alias in node.names)
            found.add(base)
    return {name for name in found if name == "mtnsails" or name.startswith("mtnsails.")}


def package_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports_of(path):
            while imported not in modules and "." in imported:  # `from pkg import name` -> pkg
                imported = imported.rpartition(".")[0]
            if imported != name and imported != "mtnsails":
                targets.add(imported)
        graph[name] = targets
    return graph


def stage(module: str) -> int | None:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


def test_the_top_level_package_is_a_short_list_of_stage_folders():
    entries = {path.name for path in PACKAGE.iterdir() if path.name != "__pycache__"}
    assert entries == TOP_LEVEL
    for folder in STAGES[:-1]:
        assert ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text())), folder


def test_no_module_imports_a_stage_above_its_own():
    upward = [
        f"{module} -> {target}"
        for module, targets in package_graph().items()
        for target in targets
        if stage(module) is not None and stage(target) is not None and stage(target) > stage(module)
    ]
    assert upward == []


def test_package_modules_import_each_other_by_module_never_through_the_top_level_names():
    """`from mtnsails import X` would hide which stage X lives in from the checks above."""
    through_top = [
        module_name(path)
        for path in PACKAGE.rglob("*.py")
        if path != PACKAGE / "__init__.py" and "mtnsails" in imports_of(path)
    ]
    assert through_top == []


def test_no_import_circle():
    graph = package_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_walk_sees_imports_inside_functions_and_for_type_checking(tmp_path, monkeypatch):
    """The checks above can fail: a lazy or type-only import counts as an arrow too."""
    source = tmp_path / "mtnsails" / "core" / "example.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mtnsails.loop import x\n"
        "def f():\n    from ..serve.server import ChatServer\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    assert imports_of(source) >= {"mtnsails.loop.x", "mtnsails.serve.server.ChatServer"}
    assert stage("mtnsails.serve.server") > stage("mtnsails.core.example")


def test_the_public_names_still_import_from_the_top_level_package():
    import mtnsails

    names = [
        "ConversationDataHandler",
        "DataQualityValidator",
        "LLMTrainer",
        "ONNXConverter",
        "ChatInterface",
        "ConversationLogger",
        "TrainingConfig",
        "GenerationConfig",
        "MtnsailsError",
    ]
    assert set(names) <= set(mtnsails.__all__)
    for name in mtnsails.__all__:
        assert getattr(mtnsails, name) is not None, name
