"""Score an ONNX model's answers against reference answers: how often is it right, alone or in a chat?

Every question of a data file (any format `validate` reads) is asked greedily and the answer is
scored against the record's answer:

- `exact_match`: the answer equals the reference after SQuAD normalisation (`normalize_answer`:
  lower case, punctuation and the articles a/an/the removed, whitespace collapsed);
- `first_sentence_match`: the reference's first sentence appears in the answer as whole words,
  compared case-folded, with runs of whitespace as one space, curly quotes as straight ones and
  the sentence's closing punctuation left out (so "Paris." matches an answer cut at "Paris");
- `token_f1`: SQuAD's token-overlap F1 of the normalised answer and reference;
- the answer's length in tokens (and whether the token limit stopped it).

A multi-turn record's final answer is scored with the record's earlier exchanges (as written in
the file) in the context. With `session=True` the questions are asked one after another in one
conversation, as a person types them: each question sees the exchanges before it (the model's own
answers), and a multi-turn record adds its earlier exchanges to that conversation first. A record's
own system prompt is not used: the model runs with the system prompt chat would use (`system`).

This module needs only what chat needs (onnxruntime, tokenizers, numpy).

>>> report = Evaluator("./onnx_model").evaluate_file("data.json")      # doctest: +SKIP
>>> report.first_sentence_match, report.token_f1                       # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from mtnsails.core.text_rules import CLOSING_MARKS, SENTENCE_END, sentences
from mtnsails.inference.generation_config import GenerationConfig

__all__ = [
    "Evaluator",
    "EvaluationReport",
    "ExampleResult",
    "Comparison",
    "normalize_answer",
    "token_f1",
    "first_sentence_match",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation) | set("“”‘’«»…–—")
_QUOTES = str.maketrans({"“": '"', "”": '"', "‘": "'", "’": "'"})
_SENTENCE_CLOSE = SENTENCE_END + CLOSING_MARKS


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(answer: str, reference: str) -> float:
    """SQuAD token F1 of the normalised texts (1.0 when both are empty, 0.0 when one is)."""
    predicted, expected = normalize_answer(answer).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def _loose(text: str) -> str:
    """Case-folded, curly quotes straightened, whitespace runs as one space."""
    return " ".join(text.translate(_QUOTES).casefold().split())


def first_sentence_match(answer: str, reference: str) -> bool:
    """True when the reference's first sentence appears in `answer` as whole words (see the
    module docstring for the normalisation); an empty reference matches only an empty answer."""
    first = sentences(reference.strip())
    needle = _loose(first[0]).rstrip(_SENTENCE_CLOSE).rstrip() if first else ""
    if not needle:
        return not answer.strip()
    return re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", _loose(answer)) is not None


@dataclass
class ExampleResult:
    """One question's answer and scores."""

    index: int  # the record's position in the data file
    question: str
    reference: str
    answer: str
    exact_match: bool
    first_sentence_match: bool
    token_f1: float
    answer_tokens: int  # tokens generated for the answer (EOS not counted)
    truncated: bool  # the token limit stopped the answer
    history: int = 0  # earlier exchanges of the record given as context

    @classmethod
    def score(
        cls,
        index: int,
        question: str,
        reference: str,
        answer: str,
        answer_tokens: int,
        truncated: bool,
        history: int = 0,
    ) -> ExampleResult:
        """Score `answer` against `reference`."""
        return cls(
            index,
            question,
            reference,
            answer,
            normalize_answer(answer) == normalize_answer(reference),
            first_sentence_match(answer, reference),
            token_f1(answer, reference),
            answer_tokens,
            truncated,
            history,
        )


@dataclass
class EvaluationReport:
    """The scores of one model on one data set; fractions are 0-1."""

    model: str
    results: list[ExampleResult]
    session: bool = False
    system: str | None = None  # the system prompt in effect (None = none)

    @property
    def examples(self) -> int:
        return len(self.results)

    def _mean(self, values) -> float:
        values = list(values)
        return sum(values) / len(values) if values else 0.0

    @property
    def exact_match(self) -> float:
        return self._mean(result.exact_match for result in self.results)

    @property
    def first_sentence_match(self) -> float:
        return self._mean(result.first_sentence_match for result in self.results)

    @property
    def token_f1(self) -> float:
        return self._mean(result.token_f1 for result in self.results)

    @property
    def mean_answer_tokens(self) -> float:
        return self._mean(result.answer_tokens for result in self.results)

    @property
    def truncated(self) -> int:
        """How many answers the token limit stopped."""
        return sum(result.truncated for result in self.results)

    def worst(self, count: int = 5) -> list[ExampleResult]:
        """The `count` lowest-scoring answers (no first-sentence match first, then by token F1)."""
        ranked = sorted(self.results, key=lambda r: (r.first_sentence_match, r.token_f1, r.index))
        return [result for result in ranked[:count] if not (result.first_sentence_match and result.exact_match)]

    def summary(self) -> dict:
        """The headline figures: model, examples, the three scores, answer length, truncations."""
        return {
            "model": self.model,
            "examples": self.examples,
            "session": self.session,
            "system": self.system,
            "exact_match": round(self.exact_match, 4),
            "first_sentence_match": round(self.first_sentence_match, 4),
            "token_f1": round(self.token_f1, 4),
            "mean_answer_tokens": round(self.mean_answer_tokens, 2),
            "truncated": self.truncated,
        }

    def to_dict(self) -> dict:
        """`summary()` plus `results`, one dict per example."""
        return {**self.summary(), "results": [asdict(result) for result in self.results]}

    def summary_line(self) -> str:
        """One line: examples and the three scores in per cent."""
        return (
            f"{self.examples} examples: first sentence {self.first_sentence_match:.1%}, "
            f"exact {self.exact_match:.1%}, token F1 {self.token_f1:.3f}" + (" (one session)" if self.session else "")
        )


@dataclass
class Comparison:
    """A model's report next to a baseline's on the same data (same order of examples)."""

    report: EvaluationReport
    baseline: EvaluationReport
    tolerance: float = 0.02

    @property
    def worse(self) -> list[tuple[ExampleResult, ExampleResult]]:
        """(model, baseline) results where the model lost the first-sentence match or, keeping
        it as it was, scored a lower token F1."""
        return [
            (new, old)
            for new, old in zip(self.report.results, self.baseline.results, strict=False)
            if (new.first_sentence_match, new.token_f1) < (old.first_sentence_match, old.token_f1)
        ]

    @property
    def passed(self) -> bool:
        """False when the model's first_sentence_match is below the baseline's by more than
        `tolerance` (a small epsilon absorbs float rounding of equal fractions)."""
        return self.report.first_sentence_match >= self.baseline.first_sentence_match - self.tolerance - 1e-9

    def to_dict(self) -> dict:
        """The model's report with a `baseline` object (its report plus `worse`)."""
        worse = [
            {
                "index": new.index,
                "question": new.question,
                "reference": new.reference,
                "answer": new.answer,
                "baseline_answer": old.answer,
                "first_sentence_match": new.first_sentence_match,
                "baseline_first_sentence_match": old.first_sentence_match,
                "token_f1": new.token_f1,
                "baseline_token_f1": old.token_f1,
            }
            for new, old in self.worse
        ]
        return {
            **self.report.to_dict(),
            "tolerance": self.tolerance,
            "passed": self.passed,
            "baseline": {**self.baseline.to_dict(), "worse": worse},
        }


def format_report(report: EvaluationReport, comparison: Comparison | None = None, worst: int = 5) -> str:
    """The text report: a table of the scores (with the baseline's), the worst examples and,
    with a baseline, the examples that got worse and the verdict."""
    rows = [("model", report)] + ([("baseline", comparison.baseline)] if comparison else [])
    lines = [
        f"{'':9}{'examples':>9}{'first sentence':>16}{'exact':>8}{'token F1':>10}{'mean tokens':>13}{'truncated':>11}"
    ]
    for name, row in rows:
        lines.append(
            f"{name:9}{row.examples:>9}{row.first_sentence_match:>16.1%}{row.exact_match:>8.1%}"
            f"{row.token_f1:>10.3f}{row.mean_answer_tokens:>13.1f}{row.truncated:>11}"
        )
    for name, row in rows:
        mode = "one session" if row.session else "each question alone"
        lines.append(f"{name}: {row.model} ({mode}; system prompt: {repr(row.system) if row.system else 'none'})")
    bad = report.worst(worst)
    if bad:
        lines.append(f"\nWorst {len(bad)} example(s):")
        lines += [_example(result) for result in bad]
    if comparison is not None:
        worse = comparison.worse
        lines.append(f"\n{len(worse)} example(s) worse than the baseline" + (":" if worse else "."))
        lines += [_example(new, old) for new, old in worse[:worst]]
        difference = report.first_sentence_match - comparison.baseline.first_sentence_match
        verdict = "ok" if comparison.passed else "WORSE than the baseline"
        lines.append(
            f"\nfirst sentence match {difference:+.1%} against the baseline "
            f"(tolerance {comparison.tolerance:.1%}): {verdict}"
        )
    return "\n".join(lines)


def _example(result: ExampleResult, baseline: ExampleResult | None = None) -> str:
    text = (
        f"  #{result.index} (F1 {result.token_f1:.2f}"
        f"{', cut by the token limit' if result.truncated else ''}) {result.question!r}\n"
        f"    expected: {result.reference!r}\n    answered: {result.answer!r}"
    )
    if baseline is not None:
        text += f"\n    baseline: {baseline.answer!r} (F1 {baseline.token_f1:.2f})"
    return text


@dataclass
class Evaluator:
    """Ask an ONNX model every question of a data set greedily and score the answers.

    >>> evaluator = Evaluator("./onnx_model", session=True)              # doctest: +SKIP
    >>> print(format_report(evaluator.evaluate_file("data.jsonl")))     # doctest: +SKIP

    `system` is the system prompt (None: the model's recorded one, "": none); `max_new_tokens`
    None uses chat's default limit (derived from the trained answer lengths); `generation`
    replaces the default settings (greedy, no repetition penalty: the answer the model finds
    likeliest).
    """

    model_path: str | os.PathLike
    session: bool = False
    system: str | None = None
    max_new_tokens: int | None = None
    max_length: int = 256
    precision: str = "auto"
    threads: int | None = None
    generation: GenerationConfig | None = None
    progress: Callable[[int, int], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from mtnsails.inference.engine import ChatEngine, EngineSettings
        from mtnsails.inference.session import ChatSession

        generation = self.generation or GenerationConfig(temperature=0, repetition_penalty=1.0)
        if self.max_new_tokens is not None:
            generation = replace(generation, max_new_tokens=self.max_new_tokens)
        # Opened here so that a directory that is not an ONNX model fails before any work.
        self.chat = ChatSession(
            ChatEngine(
                self.model_path,
                EngineSettings(
                    precision=self.precision,
                    threads=self.threads,
                    max_length=self.max_length,
                    system=self.system,
                    generation=generation,
                ),
            )
        )

    def evaluate_file(self, data_file: str | os.PathLike) -> EvaluationReport:
        """Evaluate every record of a data file (any format `validate` reads)."""
        from mtnsails.data.handler import ConversationDataHandler

        return self.evaluate(ConversationDataHandler.from_file(data_file).conversations)

    def evaluate(self, conversations: list[dict]) -> EvaluationReport:
        """Evaluate native conversations (`ConversationDataHandler.conversations`)."""
        chat = self.chat
        chat.reset()
        results = []
        for index, conversation in enumerate(conversations):
            history = [(turn["input"], turn["output"]) for turn in conversation.get("history") or []]
            if not self.session:
                chat.reset()
            chat.history.extend(history)
            answer = chat.reply(conversation["input"])
            stats = chat.last_stats
            results.append(
                ExampleResult.score(
                    index,
                    conversation["input"],
                    conversation["output"],
                    answer,
                    stats.new_tokens - (stats.stop_reason == "eos"),
                    stats.stop_reason == "length",
                    len(history),
                )
            )
            if self.progress is not None:
                self.progress(index + 1, len(conversations))
        chat.reset()
        chat.conversation_log.clear()
        return EvaluationReport(str(self.model_path), results, self.session, chat.system or None)
