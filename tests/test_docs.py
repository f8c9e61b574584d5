"""The documentation stays true: docs/API.md's examples run, and README's flag tables match argparse."""

from __future__ import annotations

import argparse
import re

import pytest
from conftest import REPO_ROOT

API_DOC = REPO_ROOT / "docs" / "API.md"
README = REPO_ROOT / "README.md"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)


def section(markdown: str, heading: str) -> str:
    """The text under a `## heading` up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown,
                      re.MULTILINE | re.DOTALL)
    assert match, f"README has no '## {heading}' section"
    return match.group(1)


def table_flags(text: str) -> list[str]:
    """Flags in the first column of markdown tables: | `--flag` | default | meaning |."""
    return re.findall(r"^\| `(--[a-z0-9-]+)` \|", text, re.MULTILINE)


def parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings
            if option.startswith("--") and option != "--help"}


def subcommand_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the CLI has no subcommands")


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


def test_every_readme_flag_exists_in_argparse_and_vice_versa():
    from mtnsails.cli import build_parser

    commands = section(README.read_text(encoding="utf-8"), "Commands")
    documented = {name: table_flags(body) for name, body in
                  re.findall(r"^### (\S+)\n(.*?)(?=^### |\Z)", commands, re.MULTILINE | re.DOTALL)}
    parsers = subcommand_parsers(build_parser())
    assert sorted(documented) == sorted(parsers), "README documents other subcommands than the CLI has"
    for name, parser in parsers.items():
        flags = documented[name]
        assert len(flags) == len(set(flags)), f"### {name}: a flag is listed twice"
        actual = parser_flags(parser)
        assert not set(flags) - actual, f"### {name}: README documents flags the CLI lacks"
        assert not actual - set(flags), f"### {name}: flags missing from README's table"


def default_matches(default, cell: str) -> bool:
    """Does README's default column say what argparse's default is?"""
    if isinstance(default, bool):
        return cell == ("on" if default else "off")
    if isinstance(default, (int, float)):
        number = re.match(r"[0-9.e+-]+", cell)
        return number is not None and float(number.group()) == default
    return f"`{default}`" in cell


def documented_defaults(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\| `(--[a-z0-9-]+)` \| ([^|]*) \|", text, re.MULTILINE))


def test_readme_defaults_match_argparse():
    from mtnsails.cli import build_parser

    commands = section(README.read_text(encoding="utf-8"), "Commands")
    tables = {name: documented_defaults(body) for name, body in
              re.findall(r"^### (\S+)\n(.*?)(?=^### |\Z)", commands, re.MULTILINE | re.DOTALL)}
    for name, parser in subcommand_parsers(build_parser()).items():
        for action in parser._actions:
            flag = next((o for o in action.option_strings if o.startswith("--")), None)
            if flag in tables[name] and action.default is not None:
                assert default_matches(action.default, tables[name][flag]), (
                    f"### {name}: README says {flag} defaults to {tables[name][flag]!r}, "
                    f"argparse says {action.default!r}")


def test_scraped_content_flags_match_the_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("process_scraped_content",
                                                  REPO_ROOT / "process_scraped_content.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    text = section(README.read_text(encoding="utf-8"), "Scraped web content")
    parser = script.build_parser()
    assert sorted(table_flags(text)) == sorted(parser_flags(parser))
    defaults = documented_defaults(text)
    for action in parser._actions:
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        if flag in defaults and action.default is not None:
            assert default_matches(action.default, defaults[flag]), flag


def test_flag_check_catches_drift():
    """The comparison above can fail: a table missing a flag or naming a stale one is noticed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-file")
    parser.add_argument("--quiet", action="store_true")
    table = "| flag | default | meaning |\n|---|---|---|\n| `--data-file` | x | y |\n| `--old` | x | y |\n"
    assert set(table_flags(table)) ^ parser_flags(parser) == {"--old", "--quiet"}
    assert default_matches(0.0, "0") and default_matches("cpu", "`cpu`") and default_matches(False, "off")
    assert not default_matches(4, "8") and not default_matches("./a", "`./b`")
