"""`watch`: follow a chat's feedback log; retrain, convert and promote when enough good answers came."""

from __future__ import annotations

import argparse

from mtnsails.core import settings
from mtnsails.core.settings import finite_float
from mtnsails.train.config import TrainingConfig

HELP = "retrain from a feedback log and deploy only models that are not worse"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-file", required=True, help="the chat's feedback log (.jsonl or .json) to follow")
    parser.add_argument(
        "--live",
        required=True,
        metavar="LIVE_DIR",
        help="the live ONNX model directory; a better model replaces it "
        "atomically, the replaced one kept as LIVE_DIR.prev",
    )
    parser.add_argument(
        "--threshold", type=int, default=10, help="new exchanges marked good or fixed that start a round (default: 10)"
    )
    parser.add_argument(
        "--state",
        metavar="STATE_FILE",
        help="where the watcher keeps its progress (default: LIVE_DIR.watch/state.json)",
    )
    parser.add_argument(
        "--interval", type=finite_float, default=60.0, help="seconds between looks at the log (default: 60.0)"
    )
    parser.add_argument("--once", action="store_true", help="run at most one round, then exit (for cron and tests)")
    parser.add_argument(
        "--tolerance",
        type=finite_float,
        default=0.0,
        help="how far (0-1) a new model's first-sentence match may fall below the "
        "live model's and still be promoted (default: 0.0)",
    )
    parser.add_argument(
        "--eval-file",
        nargs="+",
        metavar="EVAL_FILE",
        help="conversations no round trains on, judged in every round beside the "
        "exchanges the log holds out (one marked exchange in ten)",
    )
    parser.add_argument(
        "--quantize",
        choices=("none", "int8"),
        default="none",
        help="also write model_int8.onnx for each new model (default: none)",
    )
    group = parser.add_argument_group("training (each round continues the current model)")
    settings.add_arguments(group, TrainingConfig, skip=("model_name", "output_dir", "resume"))
    group.add_argument(
        "--model-name",
        metavar="MODEL_DIR",
        help="the trained model the first round continues (later rounds continue "
        "the last promoted one, recorded in the state file)",
    )


def run(args: argparse.Namespace) -> int:
    """Exit 0 after --once or a clean stop (Ctrl-C, SIGTERM); 2 for unusable input."""
    from mtnsails.core.errors import MtnsailsError
    from mtnsails.loop.watcher import RetrainWatcher

    if args.threshold < 1:
        raise MtnsailsError(f"--threshold must be at least 1, got {args.threshold}")
    if not args.interval > 0:
        raise MtnsailsError(f"--interval must be above 0 seconds, got {args.interval:g}")
    training = settings.from_args(TrainingConfig, args)
    training.validate()
    watcher = RetrainWatcher(
        args.log_file,
        args.model_name,
        args.live,
        threshold=args.threshold,
        state_file=args.state,
        training=training,
        tolerance=args.tolerance,
        quantize=args.quantize,
        quiet=args.quiet,
        eval_files=args.eval_file,
    )
    with watcher.stopping_on_signals():
        if args.once:
            watcher.run_once()
        else:
            if not args.quiet:
                print(f"watching {args.log_file} every {args.interval:g} s (Ctrl-C stops)", flush=True)
            watcher.watch(args.interval)
    return 0
