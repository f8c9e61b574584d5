"""Retrain from a chat's feedback log and deploy only better models, round after round.

A round starts when at least `threshold` new exchanges marked good or fixed (`"feedback":
"good" | "fixed"`) have arrived in the log since the last round; exchanges marked bad, or not
marked, never train. About one marked exchange in ten (`is_held_out`, a fixed rule on its
content) is set aside instead: no round ever trains on it, and every later round's candidate must
not answer the exchanges set aside so far (with the user's `eval_file`, if any) worse than the live
model. The round continues training the current model on the rest (its earlier data mixed back
in: replay), converts the result to ONNX and hands it to `Promoter`, which replaces the live
directory only when the new model is worse neither on what it was trained on nor on the held-out
set: a model that memorises its new data and loses its manners elsewhere is refused.

Everything lives beside the live directory, in `<live>.watch/`: `state.json` (exchanges consumed,
rounds, decisions; written atomically, so a restart resumes) and `round-N/` while a round runs.
The newest exchange of the log is consumed only once it carries a verdict (one given after the
answer is written as a new version of it). A stop request (Ctrl-C, SIGTERM) is honoured between
steps; an interrupted round is removed whole and runs again next time, and the live directory
only ever changes by `Promoter`'s atomic swap.

>>> watcher = RetrainWatcher("chat.jsonl", "./trained_model", "./live_model", threshold=10)  # doctest: +SKIP
>>> watcher.watch(interval=60)                                                                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from mtnsails.core.errors import MtnsailsError
from mtnsails.core.files import atomic_write_text, read_json_object
from mtnsails.model_dir.metadata import MODEL_FORMAT, TRAINING_DATA_FILE, read_metadata

TRAINED_VERDICTS = ("good", "fixed")
STATE_VERSION = 1
HELD_OUT_BUCKETS = 10  # one marked exchange in this many is held out for evaluation


def is_held_out(exchange: dict) -> bool:
    """Whether a marked exchange is set aside for evaluation, never trained on: decided by its
    question and answer alone (not the history it came with), so the same pair is held out in
    every round and in every conversation it turns up in."""
    from mtnsails.data.handler import conversation_key

    return conversation_key({"input": exchange["input"], "output": exchange["output"]})[0] % HELD_OUT_BUCKETS == 0


@dataclass
class RoundReport:
    """What one round did."""

    round: int
    exchanges: tuple[int, int]  # the log's exchanges [start, end) this round consumed
    trained: int  # new conversations trained on (marked good or fixed)
    promoted: bool
    reason: str

    def describe(self) -> str:
        """One line for the user."""
        start, end = self.exchanges
        return (
            f"round {self.round}: exchanges {start + 1}-{end} of the log, {self.trained} marked "
            f"good or fixed: {'promoted' if self.promoted else 'refused'}: {self.reason}"
        )


class RetrainWatcher:
    """Follow a feedback log; retrain, convert and promote when enough good exchanges arrived.

    `model_dir` is the trained model (an mtnsails model directory) the first round continues;
    later rounds continue the last promoted one (recorded in the state file, so `model_dir` may
    be None on a restart). `training` holds the training settings (its
    model_name and output_dir are the watcher's). `state_file` defaults to
    `<live>.watch/state.json`. `eval_files` hold conversations that no round trains on, judged
    in every round beside the exchanges the log holds out (`is_held_out`).
    """

    def __init__(
        self,
        log_file: str | os.PathLike,
        model_dir: str | os.PathLike | None,
        live_dir: str | os.PathLike,
        threshold: int = 10,
        state_file: str | os.PathLike | None = None,
        training=None,
        tolerance: float = 0.0,
        quantize: str = "none",
        quiet: bool = False,
        echo: Callable[[str], None] = print,
        eval_files: list[str | os.PathLike] | None = None,
    ) -> None:
        from mtnsails.data.handler import ConversationDataHandler
        from mtnsails.loop.promoter import Promoter

        if threshold < 1:
            raise MtnsailsError(f"threshold must be at least 1, got {threshold}")
        self.log_file = Path(log_file)
        if not self.log_file.parent.is_dir():
            raise MtnsailsError(f"{self.log_file}: directory {self.log_file.parent} does not exist")
        self.live = Path(live_dir).expanduser().resolve()
        self.work_dir = self.live.with_name(self.live.name + ".watch")
        self.state_file = Path(state_file) if state_file else self.work_dir / "state.json"
        self.threshold = threshold
        self.training = training
        self.quantize = quantize
        self.quiet = quiet
        self._echo = echo
        self._last_wait = ""  # the waiting line is said again only when it changes
        self.promoter = Promoter(self.live, tolerance=tolerance)  # checks the live directory
        # The user's fixed evaluation set, read now so that a bad file fails before any round.
        self.eval_conversations = ConversationDataHandler.from_files(eval_files).conversations if eval_files else []
        self.stop_requested = threading.Event()
        self.state = self._load_state(Path(model_dir) if model_dir else None)

    # -- state -----------------------------------------------------------------------------

    def _load_state(self, model_dir: Path | None) -> dict:
        state = read_json_object(self.state_file)
        if not state:
            if model_dir is None:
                raise MtnsailsError(
                    f"{self.state_file}: no watch state yet: name the trained model "
                    "the first round continues (--model-name)"
                )
            _check_trained_model(model_dir)
            return {
                "version": STATE_VERSION,
                "log": str(self.log_file.resolve()),
                "live": str(self.live),
                "model": str(model_dir.resolve()),
                "consumed": 0,
                "rounds": 0,
                "decisions": [],
            }
        if not isinstance(state.get("consumed"), int) or not isinstance(state.get("model"), str):
            raise MtnsailsError(
                f"{self.state_file}: not a watch state file (no 'consumed' count or 'model'); delete it to start over"
            )
        if state.get("log") != str(self.log_file.resolve()):
            raise MtnsailsError(
                f"{self.state_file}: belongs to the log {state.get('log')}, not "
                f"{self.log_file.resolve()}; give another state file"
            )
        _check_trained_model(Path(state["model"]))
        return state

    def _save_state(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.state_file, json.dumps(self.state, indent=2) + "\n")

    @property
    def model_dir(self) -> Path:
        """The trained model the next round continues (the last promoted one)."""
        return Path(self.state["model"])

    # -- the log ---------------------------------------------------------------------------

    def read_log(self) -> list[dict]:
        """The log's exchanges, each in its latest version ([] while there is no log yet)."""
        from mtnsails.data.handler import ConversationDataHandler

        if not self.log_file.exists() or (self.log_file.is_file() and self.log_file.stat().st_size == 0):
            return []
        return ConversationDataHandler.from_file(self.log_file).conversations

    def pending(self) -> tuple[list[dict], list[dict], int]:
        """(new exchanges marked good or fixed to train on, every marked exchange held out for
        evaluation up to the new consumed count, that count)."""
        exchanges = self.read_log()
        consumed = self.state["consumed"]
        if len(exchanges) < consumed:
            raise MtnsailsError(
                f"{self.log_file}: holds {len(exchanges)} exchanges, fewer than the "
                f"{consumed} already consumed ({self.state_file}): was the log "
                "replaced? Delete the state file to start over"
            )
        # The newest exchange may still get its verdict: wait for it.
        ready = max(consumed, len(exchanges) - (bool(exchanges) and not exchanges[-1].get("feedback")))
        marked = [(index, e) for index, e in enumerate(exchanges[:ready]) if e.get("feedback") in TRAINED_VERDICTS]
        new = [e for index, e in marked if index >= consumed and not is_held_out(e)]
        return new, [e for _, e in marked if is_held_out(e)], ready

    # -- rounds ----------------------------------------------------------------------------

    def run_once(self) -> RoundReport | None:
        """Run a round if enough new exchanges are marked good or fixed; None otherwise (or when
        a stop was requested before the round finished: nothing of it is kept)."""
        new, held_out, consumed = self.pending()
        if len(new) < self.threshold:
            where = self.log_file if self.log_file.exists() else f"{self.log_file} (it does not exist yet)"
            wait = (
                f"waiting: {len(new)} of {self.threshold} new exchanges marked good or fixed to train on "
                f"in {where} ({len(held_out)} held out for evaluation)"
            )
            if wait != self._last_wait:
                self._say(wait)
                self._last_wait = wait
            return None
        number = self.state["rounds"] + 1
        round_dir = self.work_dir / f"round-{number}"
        self._remove_stale_rounds()
        try:
            decision = self._round(number, round_dir, new, self.eval_conversations + held_out)
        except BaseException:
            shutil.rmtree(round_dir, ignore_errors=True)
            raise
        if decision is None:
            shutil.rmtree(round_dir, ignore_errors=True)
            return None
        start = self.state["consumed"]
        report = RoundReport(number, (start, consumed), len(new), decision.promoted, decision.reason)
        previous_model = self.model_dir
        self.state.update(consumed=consumed, rounds=number)
        if decision.promoted:
            self.state["model"] = str(round_dir / "model")
        self.state["decisions"].append(
            {
                "round": number,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "exchanges": [start, consumed],
                "trained": len(new),
                **decision.to_dict(),
            }
        )
        self._save_state()
        shutil.rmtree(round_dir / "onnx", ignore_errors=True)  # promoted: copied into live
        if not decision.promoted:
            shutil.rmtree(round_dir, ignore_errors=True)
        elif previous_model.parent.parent == self.work_dir:  # an earlier round's, not the user's
            shutil.rmtree(previous_model.parent, ignore_errors=True)
        self._say(report.describe())
        return report

    def _round(self, number: int, round_dir: Path, new: list[dict], held_out: list[dict]):
        """Train on `new`, convert, promote judged on the training data and `held_out`; None when
        a stop was requested between steps."""
        from mtnsails.data.handler import ConversationDataHandler
        from mtnsails.export.converter import ONNXConverter
        from mtnsails.train.config import TrainingConfig
        from mtnsails.train.trainer import LLMTrainer, TrainingInterrupted

        round_dir.mkdir(parents=True, exist_ok=True)
        self._say(f"round {number}: continuing {self.model_dir} on {len(new)} new exchanges")
        config = replace(
            self.training or TrainingConfig(quiet=self.quiet),
            model_name=str(self.model_dir),
            output_dir=str(round_dir / "model"),
            resume=False,
        )
        trainer = LLMTrainer(config=config)
        try:
            trainer.train_conversations(new)
        except TrainingInterrupted:  # Ctrl-C during training: this round is dropped whole
            self.stop_requested.set()
            return None
        if self.stop_requested.is_set():
            return None
        trainer.save_model()
        if self.stop_requested.is_set():
            return None
        self._say(f"round {number}: converting to ONNX")
        onnx_dir = ONNXConverter(round_dir / "model", quiet=True).convert_to_onnx(
            round_dir / "onnx", quantize=self.quantize
        )
        if self.stop_requested.is_set():
            return None
        trained_on = ConversationDataHandler.from_file(round_dir / "model" / TRAINING_DATA_FILE)
        self._say(
            f"round {number}: comparing with the live model on the {len(trained_on)} conversations "
            f"trained on and {len(held_out)} held out"
        )
        return self.promoter.promote(onnx_dir, trained_on.conversations, held_out)

    def _remove_stale_rounds(self) -> None:
        """Round directories left by a crash (not the current model's) are removed."""
        if not self.work_dir.is_dir():
            return
        for path in self.work_dir.glob("round-*"):
            if path.is_dir() and path != self.model_dir.parent:
                shutil.rmtree(path, ignore_errors=True)

    def watch(self, interval: float = 30.0) -> int:
        """Check the log every `interval` seconds and run rounds until a stop is requested;
        return the number of rounds run."""
        if not interval > 0:
            raise MtnsailsError(f"interval must be above 0 seconds, got {interval:g}")
        rounds = 0
        while not self.stop_requested.is_set():
            rounds += self.run_once() is not None
            self.stop_requested.wait(interval)
        return rounds

    @contextlib.contextmanager
    def stopping_on_signals(self) -> Iterator[None]:
        """Within the block, Ctrl-C and SIGTERM ask for a stop between steps instead of killing
        the process (during training, the trainer's own Ctrl-C handling stops the run)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum, frame) -> None:
            if not self.stop_requested.is_set():
                print("\nstopping after the current step", file=sys.stderr)
            self.stop_requested.set()

        def handle_term(signum, frame) -> None:
            current = signal.getsignal(signal.SIGINT)  # the trainer's while it trains
            (current if callable(current) else handle)(signum, frame)

        previous = {
            signal.SIGINT: signal.signal(signal.SIGINT, handle),
            signal.SIGTERM: signal.signal(signal.SIGTERM, handle_term),
        }
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _say(self, message: str) -> None:
        if not self.quiet:
            self._echo(message)


def _check_trained_model(path: Path) -> None:
    """Raise MtnsailsError unless `path` is a model directory `train` wrote."""
    if not path.is_dir() or read_metadata(path).get("format") != MODEL_FORMAT:
        raise MtnsailsError(
            f"{path}: not a trained mtnsails model directory (train writes one); the watcher continues training from it"
        )
