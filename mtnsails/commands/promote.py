"""`promote`: replace a live ONNX model with a new one only when it answers at least as well."""

from __future__ import annotations

import argparse

from mtnsails.core.errors import MtnsailsError
from mtnsails.core.settings import finite_float

HELP = "deploy a new ONNX model to a live directory only when it is not worse (or roll back)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--live",
        required=True,
        metavar="LIVE_DIR",
        help="the live ONNX model directory that chats use; replaced atomically, "
        "the replaced model kept as LIVE_DIR.prev",
    )
    parser.add_argument("--candidate", metavar="ONNX_DIR", help="the new ONNX model (from convert)")
    parser.add_argument(
        "--data-file",
        nargs="+",
        metavar="DATA_FILE",
        help="conversations both models answer: one or more files, formats may "
        "differ (default: the data the candidate was trained on)",
    )
    parser.add_argument(
        "--eval-file",
        nargs="+",
        metavar="EVAL_FILE",
        help="a held-out evaluation set neither model was trained on: the candidate "
        "must not be worse on it either (without one, overfitting is not checked)",
    )
    parser.add_argument(
        "--tolerance",
        type=finite_float,
        default=0.0,
        help="how far (0-1) the candidate's first-sentence match may fall below the live model's (default: 0.0)",
    )
    parser.add_argument(
        "--session", action="store_true", help="ask the questions one after another in one conversation"
    )
    parser.add_argument(
        "--rollback", action="store_true", help="put LIVE_DIR.prev back instead (the current live model becomes .prev)"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the decision")


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the candidate was promoted (or rolled back), 1 when it was refused."""
    from mtnsails.loop.promoter import Promoter

    if args.rollback == bool(args.candidate):
        raise MtnsailsError("give --candidate ONNX_DIR to promote, or --rollback")
    progress = None if args.quiet else _progress
    promoter = Promoter(args.live, tolerance=args.tolerance, session=args.session, progress=progress)
    if args.rollback:
        decision = promoter.rollback()
    else:
        held_out = None
        if args.eval_file:
            from mtnsails.data.handler import ConversationDataHandler

            held_out = ConversationDataHandler.from_files(args.eval_file).conversations
        decision = promoter.promote(args.candidate, comparison_data(args), held_out)
    print(decision.describe(), flush=True)
    return 0 if decision.promoted else 1


def comparison_data(args: argparse.Namespace) -> list[dict]:
    """The conversations of --data-file, or those the candidate's source model was trained on."""
    from pathlib import Path

    from mtnsails.data.handler import ConversationDataHandler
    from mtnsails.loop.promoter import check_onnx_directory
    from mtnsails.model_dir.metadata import TRAINING_DATA_FILE, read_metadata

    if args.data_file:
        handler = ConversationDataHandler.from_files(args.data_file)
        if handler.sources_report() and not args.quiet:
            print(handler.sources_report())
        return handler.conversations
    candidate = check_onnx_directory(args.candidate, "candidate")
    source = read_metadata(candidate).get("source_model")
    trained_on = Path(source) / TRAINING_DATA_FILE if source else None
    if trained_on is None or not trained_on.is_file():
        raise MtnsailsError(
            f"{candidate}: its training data is unknown (no {TRAINING_DATA_FILE} "
            "beside the model it was converted from); give --data-file"
        )
    return ConversationDataHandler.from_file(trained_on).conversations


def _progress(model: str, done: int, total: int) -> None:
    if done == total or done % 10 == 0:
        print(f"  {model}: {done}/{total} questions asked", flush=True)
