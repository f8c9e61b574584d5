"""Command line: build the parser from the subcommand modules and run the chosen one.

Each subcommand lives in `mtnsails/commands/<name>.py` with `HELP`, `add_arguments(parser)` and
`run(args) -> int`. Nothing heavy is imported at start-up: the commands import what they need
when they run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from importlib import import_module
from typing import NoReturn

from mtnsails.core.errors import MtnsailsError

# Modules of the optional extras -> the extra that installs them (a light install has neither).
EXTRAS = {
    "torch": "train",
    "transformers": "train",
    "datasets": "train",
    "accelerate": "train",
    "optimum": "train",
    "onnx": "train",
    "onnx_ir": "train",
    "safetensors": "train",
    "starlette": "serve",
    "uvicorn": "serve",
}
COMMANDS = ("validate", "train", "convert", "chat", "evaluate", "serve", "pipeline", "review", "promote", "watch")


class OneLineErrorParser(argparse.ArgumentParser):
    """A parser whose errors are one `error:` line naming the command's help, like every other
    bad value the commands refuse (argparse's own would print the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `mtnsails` parser: one subcommand per name in COMMANDS, its `run` in `args.handler`.

    With `command` (one of COMMANDS) only that subcommand is built: importing every command
    module would add a noticeable part of a cold `chat --prompt` (docs/performance.md)."""
    parser = OneLineErrorParser(
        prog="mtnsails",
        description="Turn question/answer conversations into a small chat model that runs fast on a CPU.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in (command,) if command in COMMANDS else COMMANDS:
        module = import_module(f"mtnsails.commands.{name}")
        subparser = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(subparser)
        subparser.set_defaults(handler=module.run, parser=subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]) and return the exit status.

    A MtnsailsError becomes one `error: ...` line on stderr and its exit code (2); Ctrl-C exits 130."""
    argv = sys.argv[1:] if argv is None else argv
    args, unknown = build_parser(argv[0] if argv else None).parse_known_args(argv)
    if unknown:  # named by the subcommand, whose help lists its flags
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.handler(args)
    except MtnsailsError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except ModuleNotFoundError as error:
        root = (error.name or "").partition(".")[0]
        extra = EXTRAS.get(root)
        if extra is None or importlib.util.find_spec(root) is not None:  # installed: a deeper fault
            raise
        print(
            f"error: {args.command} needs {error.name}, which is not installed: pip install 'mtnsails[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`mtnsails validate ... | head`): not an error of ours. Point
        # stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
