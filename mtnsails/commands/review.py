"""`review`: walk a chat log one exchange at a time (keep / drop / edit / quit) into a data file."""

from __future__ import annotations

import argparse

HELP = "review a chat log exchange by exchange into a data set for training"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", metavar="LOG", help="the chat log to review (.json or .jsonl)")
    parser.add_argument(
        "--output",
        required=True,
        help="the reviewed data set, rewritten after each decision (.json array "
        "or .jsonl); its state file <output>.review.json lets a stopped "
        "review go on",
    )


def run(args: argparse.Namespace) -> int:
    """Walk the exchanges not reviewed yet; exit 0 when stopped or done (the output is written)."""
    from mtnsails.loop.review import LogReview

    LogReview(args.log, args.output).walk()
    return 0
