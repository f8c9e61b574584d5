"""Command line: parse arguments and call the classes. Nothing heavy is imported at start-up.

Each subcommand has an `add_<name>_arguments(parser)` that declares its flags and a
`run_<name>(args) -> int` that does the work; `pipeline` reuses the other three's flags.
"""

from __future__ import annotations

import argparse
import sys

from mtnsails.errors import MtnsailsError

# -- validate ---------------------------------------------------------------------------------


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-file", required=True, help="conversations to check (.json or .jsonl)")


def run_validate(args: argparse.Namespace) -> int:
    raise MtnsailsError("validate is not implemented yet")


# -- train ------------------------------------------------------------------------------------


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-file", help="training conversations (default: packaged examples)")


def run_train(args: argparse.Namespace) -> int:
    raise MtnsailsError("train is not implemented yet")


# -- convert ----------------------------------------------------------------------------------


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", required=True, help="trained model directory")


def run_convert(args: argparse.Namespace) -> int:
    raise MtnsailsError("convert is not implemented yet")


# -- chat -------------------------------------------------------------------------------------


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", required=True, help="ONNX model directory")


def run_chat(args: argparse.Namespace) -> int:
    raise MtnsailsError("chat is not implemented yet")


# -- pipeline ---------------------------------------------------------------------------------


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_pipeline(args: argparse.Namespace) -> int:
    raise MtnsailsError("pipeline is not implemented yet")


# -- entry point ------------------------------------------------------------------------------

COMMANDS = {
    "validate": (add_validate_arguments, run_validate,
                 "check a data set's quality (and optionally filter it)"),
    "train": (add_train_arguments, run_train, "fine-tune a causal language model on conversations"),
    "convert": (add_convert_arguments, run_convert, "export a trained model to ONNX for fast CPU chat"),
    "chat": (add_chat_arguments, run_chat, "chat with an ONNX model"),
    "pipeline": (add_pipeline_arguments, run_pipeline, "train, convert and try a model in one go"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtnsails",
        description="Turn question/answer conversations into a small chat model that runs fast on a CPU.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add_arguments, run, help_text) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(subparser)
        subparser.set_defaults(handler=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except MtnsailsError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
