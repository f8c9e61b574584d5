"""What `DataQualityValidator.analyze` found in a data set, as text or JSON."""

from __future__ import annotations

from dataclasses import dataclass, field

from mtnsails.quality.config import CODES, COUNT_KEYS, LABELS


@dataclass(frozen=True, slots=True)  # slots: a report of millions holds many
class QualityIssue:
    """One problem: `code` is one of `CODES`, `reason` tells the user what was found."""

    code: str
    reason: str


@dataclass
class QualityReport:
    """The result of `DataQualityValidator.analyze` for a whole data set."""

    total: int
    valid: int
    issues: list[list[QualityIssue]]
    counts: dict[str, int]
    examples: list[dict] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)

    @property
    def quality_score(self) -> float:
        """Share of conversations without any issue, 0..1 (0 for an empty data set)."""
        return self.valid / self.total if self.total else 0.0

    @property
    def verdict(self) -> str:
        """ "good" (>= 70 % valid), "warning" (50-70 %) or "critical" (< 50 %)."""
        if self.quality_score >= 0.7:
            return "good"
        return "warning" if self.quality_score >= 0.5 else "critical"

    def verdict_line(self) -> str:
        """One line with a symbol, the verdict and the score (what `validate --quiet` prints),
        and the records cut short, which make `validate` exit 1 whatever the score."""
        symbol = {"good": "✓", "warning": "⚠", "critical": "✗"}[self.verdict]
        cut = self.counts.get("cut_short", 0)
        return (
            f"{'✗' if cut else symbol} Data quality is {self.verdict.upper()} "
            f"({self.quality_score:.1%} of {self.total} conversations are valid)"
            + (f", but {cut} record(s) cut short: the file ends mid-record" if cut else "")
        )

    def to_dict(self) -> dict:
        """The report as plain JSON data: the original keys plus codes, verdict and details."""
        result = {
            "total_conversations": self.total,
            "valid_conversations": self.valid,
            "invalid_conversations": self.total - self.valid,
            "quality_score": self.quality_score,
            "verdict": self.verdict,
            "issue_summary": {COUNT_KEYS[code]: self.counts.get(code, 0) for code in CODES},
            "issue_counts": {code: self.counts.get(code, 0) for code in CODES},
            "issues_found": [
                {"index": index, "codes": [issue.code for issue in found], "reasons": [issue.reason for issue in found]}
                for index, found in enumerate(self.issues)
                if found
            ],
            "problematic_examples": self.examples,
            "recommendations": self.recommendations,
        }
        result.update(result["issue_summary"])
        return result

    def format_text(self) -> str:
        """A human-readable report: score, counts, examples, recommendations, verdict."""
        lines = [
            "Data Quality Report",
            "=" * 19,
            f"Total conversations:   {self.total}",
            f"Valid conversations:   {self.valid}",
            f"Invalid conversations: {self.total - self.valid}",
            f"Quality score:         {self.quality_score:.1%}",
            "",
            "Issues found:",
        ]
        lines += [f"  {LABELS[code] + ':':<23}{self.counts.get(code, 0)}" for code in CODES]
        if self.examples:
            lines += ["", "Examples of problems:"]
            for example in self.examples:
                lines.append(f"  conversation {example['index']}: input {example['input']!r}")
                lines.append(f"    output {example['output']!r}")
                lines += [f"    - {reason}" for reason in example["issues"]]
        lines += ["", "Recommendations:"] + [f"  - {text}" for text in self.recommendations]
        return "\n".join(lines + ["", self.verdict_line()])
