"""`evaluate`: score an ONNX model's answers against a data set's answers, optionally against a
baseline model, and exit 1 when it lost ground (a deployment gate for scripts)."""

from __future__ import annotations

import argparse
import sys

from mtnsails.commands.chat import PROMPT_TOKENS, add_precision_argument
from mtnsails.core.errors import MtnsailsError
from mtnsails.core.settings import finite_float

HELP = "score a model's answers against reference answers (and a baseline model)"
DEFAULT_TOLERANCE = 0.02


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare `evaluate`'s flags."""
    parser.add_argument("--model-path", required=True, help="ONNX model directory to evaluate")
    parser.add_argument(
        "--data-file",
        required=True,
        nargs="+",
        metavar="DATA_FILE",
        help="questions with reference answers: any format validate reads",
    )
    parser.add_argument(
        "--baseline",
        help="ONNX model directory to compare with; exit 1 when the "
        "model's first-sentence match is lower by more than --tolerance",
    )
    parser.add_argument(
        "--session",
        action="store_true",
        help="ask the questions one after another in one conversation (default: each alone)",
    )
    parser.add_argument(
        "--system", help='system prompt for both models; "" = none (default: each model\'s own, as chat uses it)'
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout, nothing else")
    parser.add_argument(
        "--tolerance",
        type=finite_float,
        help=f"how much lower (0-1) the first-sentence match may be than the baseline's (default: {DEFAULT_TOLERANCE})",
    )
    parser.add_argument(
        "--max-tokens", dest="max_new_tokens", type=int, help="new tokens per answer at most (default: as chat)"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=PROMPT_TOKENS,
        help=f"most prompt tokens (history + question) (default: {PROMPT_TOKENS})",
    )
    add_precision_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\r  asked {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)
    elif done == total:
        print(f"  asked {total} question(s)", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Print the report; exit 1 when the model fell below the baseline by more than
    --tolerance, 0 otherwise (2 for a bad data file or model directory)."""
    import json

    from mtnsails.data.handler import ConversationDataHandler
    from mtnsails.loop.evaluator import Comparison, Evaluator, format_report

    if args.tolerance is None:
        args.tolerance = DEFAULT_TOLERANCE
    elif args.baseline is None:
        raise MtnsailsError("--tolerance compares with a baseline: give --baseline ONNX_DIR too")
    if not 0 <= args.tolerance <= 1:
        raise MtnsailsError(f"--tolerance = {args.tolerance} must be between 0 and 1 (a fraction)")
    data = ConversationDataHandler.from_files(args.data_file)
    if data.sources_report() and not args.quiet and not args.json:
        print(data.sources_report(), file=sys.stderr)
    conversations = data.conversations
    # Both models are opened before any question: a directory that is not one fails at once.
    runs = [
        Evaluator(
            path,
            session=args.session,
            system=args.system,
            max_new_tokens=args.max_new_tokens,
            max_length=args.max_length,
            precision=args.precision,
            progress=None if args.quiet else _progress,
        )
        for path in (args.model_path, args.baseline)
        if path is not None
    ]
    reports = []
    for evaluator in runs:
        if not args.quiet:
            print(
                f"evaluating {evaluator.model_path} on {len(conversations)} question(s) of "
                f"{', '.join(args.data_file)}{' in one session' if args.session else ''}",
                file=sys.stderr,
                flush=True,
            )
        reports.append(evaluator.evaluate(conversations))
    report = reports[0]
    comparison = Comparison(report, reports[1], args.tolerance) if args.baseline else None
    if args.json:
        data = comparison.to_dict() if comparison else report.to_dict()
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print(format_report(report, comparison))
    return 0 if comparison is None or comparison.passed else 1
