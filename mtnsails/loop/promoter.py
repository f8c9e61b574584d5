"""Promote a new ONNX model to the live directory only when it answers at least as well.

The candidate and the live model answer the same questions (`Evaluator`, greedy) from two sets:
the conversations they were trained on (retention: are the old answers kept?) and a held-out set
no model was trained on (does the candidate still answer what it never memorised?). A candidate
that memorises its new data scores well on the first and loses ground on the second, so it
replaces the live directory atomically only when its first-sentence match is below the live
model's by no more than `tolerance` on either set. The replaced model is kept beside it as `<live>.prev`, so a
rollback is one call (or two renames by hand). A first deploy (no live directory yet) is always
promoted.

>>> decision = Promoter("./live_model").promote("./onnx_model", conversations)   # doctest: +SKIP
>>> print(decision.describe())                                                   # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mtnsails.core.errors import MtnsailsError
from mtnsails.model_dir.metadata import FP32_FILE, ONNX_FORMAT, read_metadata
from mtnsails.model_dir.output import atomic_directory

if TYPE_CHECKING:
    from mtnsails.loop.evaluator import Comparison

PREVIOUS_SUFFIX = ".prev"


def check_onnx_directory(path: str | os.PathLike, what: str = "model") -> Path:
    """Return `path` as a Path; raise MtnsailsError unless it is an ONNX model directory that
    `convert` wrote (mtnsails.json of the ONNX kind and the model file)."""
    path = Path(path)
    if not path.is_dir():
        raise MtnsailsError(f"{path}: the {what} is not a directory")
    if read_metadata(path).get("format") != ONNX_FORMAT or not (path / FP32_FILE).is_file():
        raise MtnsailsError(
            f"{path}: the {what} is not an ONNX model directory "
            f"(no mtnsails.json of format {ONNX_FORMAT} with {FP32_FILE}; "
            "convert writes one)"
        )
    return path


@dataclass
class PromotionDecision:
    """What `Promoter.promote` decided, and why."""

    promoted: bool
    reason: str
    live: Path
    previous: Path | None  # where the replaced live model was kept (None: nothing was replaced)
    comparison: Comparison | None = None  # on the retention set; None for a first deploy
    held_out: Comparison | None = None  # on the held-out set; None without one

    def describe(self) -> str:
        """Lines for the user: the decision, the reason and where things are."""
        verb = "promoted" if self.promoted else "refused"
        lines = [f"{verb}: {self.reason}"]
        if self.promoted:
            lines.append(f"live model: {self.live}")
            if self.previous is not None:
                lines.append(f"previous model kept in {self.previous} (for a rollback)")
        else:
            lines.append(f"live model unchanged: {self.live}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The decision as JSON-ready values (the scores with a comparison)."""
        result = {
            "promoted": self.promoted,
            "reason": self.reason,
            "live": str(self.live),
            "previous": str(self.previous) if self.previous else None,
        }
        if self.comparison is not None:
            result["candidate_first_sentence_match"] = round(self.comparison.report.first_sentence_match, 4)
            result["live_first_sentence_match"] = round(self.comparison.baseline.first_sentence_match, 4)
            result["worse_examples"] = len(self.comparison.worse)
        if self.held_out is not None:
            result["candidate_held_out_match"] = round(self.held_out.report.first_sentence_match, 4)
            result["live_held_out_match"] = round(self.held_out.baseline.first_sentence_match, 4)
            result["held_out_examples"] = self.held_out.report.examples
        return result


class Promoter:
    """Replace the live ONNX model directory with a candidate only when the candidate is not worse.

    `tolerance` is how far (a fraction, 0-1) the candidate's first-sentence match may fall below
    the live model's and still be promoted; `session` asks the questions in one conversation.
    """

    def __init__(
        self,
        live_dir: str | os.PathLike,
        tolerance: float = 0.0,
        session: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        if not 0 <= tolerance < 1:
            raise MtnsailsError(f"tolerance must be in [0, 1), got {tolerance}")
        self.live = Path(live_dir).expanduser().resolve()
        self.previous = self.live.with_name(self.live.name + PREVIOUS_SUFFIX)
        self.tolerance = tolerance
        self.session = session
        self.progress = progress  # called with ("candidate" | "live", done, total)
        if self.live.exists():
            check_onnx_directory(self.live, "live model")
        elif not self.live.parent.is_dir():  # a typo in the path, not a place to create
            raise MtnsailsError(f"{live_dir}: directory {self.live.parent} does not exist")

    def promote(
        self, candidate_dir: str | os.PathLike, conversations: list[dict], held_out: list[dict] | None = None
    ) -> PromotionDecision:
        """Evaluate the candidate against the live model on `conversations` (what they were trained
        on) and on `held_out` (an evaluation set neither was trained on); copy it into the live
        directory (keeping the old one as `<live>.prev`) only when it is worse on neither."""
        candidate = check_onnx_directory(Path(candidate_dir).expanduser(), "candidate").resolve()
        if candidate == self.live:
            raise MtnsailsError(f"{candidate}: the candidate is the live model itself")
        if not conversations:
            raise MtnsailsError("no conversations to compare the models on")
        if not self.live.exists():
            self._install(candidate)
            return PromotionDecision(True, "first deploy: there was no live model yet", self.live, None)
        retention = self.compare(candidate, conversations)
        held = self.compare(candidate, held_out) if held_out else None
        scores = [_scores("retention (training data)", retention)]
        scores.append(_scores("held out", held) if held else "held out: no set given, so overfitting is not checked")
        worse = [comparison for comparison in (retention, held) if comparison and not comparison.passed]
        if worse:
            answers = sum(len(comparison.worse) for comparison in worse)
            return PromotionDecision(
                False,
                f"the candidate is worse (tolerance {self.tolerance:.1%}, "
                f"{answers} answers worse): " + "; ".join(scores),
                self.live,
                None,
                retention,
                held,
            )
        self._install(candidate)
        return PromotionDecision(
            True, "the candidate is not worse: " + "; ".join(scores), self.live, self.previous, retention, held
        )

    def compare(self, candidate: str | os.PathLike, conversations: list[dict]) -> Comparison:
        """The candidate's answers scored next to the live model's (the baseline)."""
        from mtnsails.loop.evaluator import Comparison, Evaluator

        reports = []
        for name, path in (("candidate", candidate), ("live", self.live)):
            progress = (lambda done, total, name=name: self.progress(name, done, total)) if self.progress else None
            reports.append(Evaluator(path, session=self.session, progress=progress).evaluate(conversations))
        return Comparison(reports[0], reports[1], self.tolerance)

    def rollback(self) -> PromotionDecision:
        """Put `<live>.prev` back in the live directory (the rolled-back model becomes `.prev`)."""
        if not self.previous.exists():
            raise MtnsailsError(f"{self.previous}: no previous model to roll back to")
        check_onnx_directory(self.previous, "previous model")
        self._install(self.previous)
        return PromotionDecision(
            True, f"rolled back to the model that was in {self.previous}", self.live, self.previous
        )

    def _install(self, source: Path) -> None:
        """Copy `source` into the live directory atomically, keeping the old one as `.prev`."""
        with atomic_directory(self.live, kind=ONNX_FORMAT, keep_previous=self.previous) as staging:
            shutil.copytree(source, staging, dirs_exist_ok=True)


def _scores(name: str, comparison: Comparison) -> str:
    """ "held out: first sentence match 60.0% against the live model's 80.0% on 5 conversations"."""
    return (
        f"{name}: first sentence match {comparison.report.first_sentence_match:.1%} against the live "
        f"model's {comparison.baseline.first_sentence_match:.1%} on {comparison.report.examples} conversations"
    )
