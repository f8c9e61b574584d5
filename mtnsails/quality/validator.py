"""Data quality: find the conversations that would teach a model bad habits before training.

Rules are small functions in the style of datatrove's filters; each returns a `QualityIssue`
(a machine-readable code plus a reason the user can act on) or None. Thresholds live in
`QualityConfig`, each with its source. Web-document rules (Gopher) were tuned on documents of
50 words or more, so they only apply above that floor; short chat answers get rules that stay
reliable on a sentence or two (repeated sentences, runs of one word, compression ratio).
Across the data set, exact duplicates are found by a normalised-text hash and near duplicates
by MinHash + LSH banding (vectorised with numpy, verified by exact Jaccard similarity).
Imports only the standard library, numpy and orjson: `validate` must start fast and never
load torch.
"""

from __future__ import annotations

import hashlib
import signal
import sys
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, islice
from typing import NamedTuple

import orjson

from mtnsails.core.cpu import usable_cpus
from mtnsails.core.errors import MtnsailsError
from mtnsails.core.ranks import is_main_process
from mtnsails.model_dir.template import exchanges
from mtnsails.quality.config import CODES, LABELS, RULE_FLAGS, CutShort, QualityConfig
from mtnsails.quality.dedup import CopyFinder, TextCodes, text_codes
from mtnsails.quality.report import QualityIssue, QualityReport
from mtnsails.quality.rules import (
    _quote,
    _snippet,
    echo_reason,
    feedback_reason,
    gibberish_reason,
    incomplete_reason,
    repetition_reason,
    word_count,
    words_of,
)

# -- the validator --------------------------------------------------------------------------


class DataQualityValidator:
    """Checks conversations one by one (`check`) and as a data set (`analyze`).

    >>> DataQualityValidator().check({"input": "Hi", "output": "ok"})[0].code
    'short_output'
    """

    def __init__(self, config: QualityConfig | None = None) -> None:
        self.config = config or QualityConfig()

    def check(self, conversation: dict) -> list[QualityIssue]:
        """Per-conversation rules on every exchange of a native conversation."""
        return self._check(conversation, exchanges(conversation))[0]

    def _check(self, conversation: dict, turns: list[tuple[str, str]]) -> tuple[list[QualityIssue], list[str]]:
        """The issues, and the conversation's lower-case words for the copy search (every turn,
        system included, turns separated by a marker; none when it has no word); `turns` are
        its `exchanges`."""
        if isinstance(conversation, CutShort):
            return [
                QualityIssue(
                    "cut_short", f"{conversation.where} is cut short (an interrupted write): the record is lost"
                )
            ], []
        limit = self.config.max_text_chars
        system = conversation.get("system") or ""
        tokens = words_of(system[:limit].lower()) + ["\x1f"]
        issues = []
        reason = feedback_reason(conversation)
        if reason:
            issues.append(QualityIssue("marked_bad", reason))
        for number, (user_input, output) in enumerate(turns, start=1):
            prefix = f"turn {number} of {len(turns)}: " if len(turns) > 1 else ""
            input_tokens = words_of(user_input[:limit].lower())
            # An assistant greeting that opens a multi-turn chat has no user input before it.
            if (not user_input or user_input.isspace()) and not (number == 1 and len(turns) > 1):
                issues.append(QualityIssue("empty_input", prefix + LABELS["empty_input"]))
            output_tokens = words_of(output[:limit].lower())
            issues += [
                QualityIssue(code, prefix + reason)
                for code, reason in self._check_output(input_tokens, output, output_tokens)
            ]
            tokens += input_tokens + ["\x1f"] + output_tokens + ["\x1f"]
        return issues, (tokens if len(tokens) > len(turns) * 2 + 1 else [])

    def _check_output(self, input_tokens: list[str], output: str, tokens: list[str]) -> list[tuple[str, str]]:
        """(code, reason) of each rule the answer fails; each reason opens with its category."""
        config = self.config
        if not output or output.isspace():
            return [("empty_output", LABELS["empty_output"])]
        head = output[: config.max_text_chars]
        found = []
        count = word_count(head)
        if count < config.min_output_words:
            found.append(
                (
                    "short_output",
                    f"only {count} word{'s' if count != 1 else ''} "
                    f"({_quote(head)}); answers need at least {config.min_output_words}",
                )
            )
        for code, reason in (
            ("repetitive_output", repetition_reason(head, tokens, config)),
            ("gibberish_output", gibberish_reason(head, config)),
            ("echo_output", echo_reason(input_tokens, tokens, config)),
            ("incomplete_output", incomplete_reason(output[-config.max_text_chars :])),
        ):
            if reason:
                found.append((code, reason))
        return [(code, f"{LABELS[code]}: {reason}") for code, reason in found]

    def validate_conversation(
        self,
        conversation: dict,
        check_repetition: bool = True,
        check_length: bool = True,
        check_gibberish: bool = True,
        check_echo: bool = True,
        check_incomplete: bool = True,
    ) -> tuple[bool, list[str]]:
        """Original API: (is_valid, reasons); the flags switch single rules off. Each reason
        opens with its category ("repetitive output: ...", "empty output")."""
        enabled = {
            "check_repetition": check_repetition,
            "check_length": check_length,
            "check_gibberish": check_gibberish,
            "check_echo": check_echo,
            "check_incomplete": check_incomplete,
        }
        reasons = [
            issue.reason for issue in self.check(conversation) if enabled.get(RULE_FLAGS.get(issue.code, ""), True)
        ]
        return not reasons, reasons

    def analyze(self, conversations: Iterable[dict]) -> QualityReport:
        """Check every conversation plus exact and near duplicates across the set.

        `conversations` may be a stream (`data.iter_conversations`): each is checked and
        dropped, only its issues and a fixed-size fingerprint for the copy search are kept.
        The examples are then the first conversations that fail a rule of their own (a list
        also shows copies among them). Beyond `parallel_min_conversations`, the rules and the
        copy fingerprints run in `workers` processes, chunk by chunk, with the same results.
        """
        finder = CopyFinder(self.config)
        issues: list[list[QualityIssue]] = []
        snippets: dict[int, tuple[str, str]] = {}
        for result, repeats in self._checked_chunks(conversations):
            if repeats:
                result = _with_repeats(result, repeats, len(issues), issues, snippets, finder)
            for offset, snippet in result.snippets.items():
                if len(snippets) < self.config.max_examples:
                    snippets[len(issues) + offset] = snippet
            issues += result.issues
            finder.add_codes(result.codes)
        for index, issue in self._duplicates(finder).items():
            issues[index].append(issue)
        counts = {code: 0 for code in CODES}
        for found in issues:
            for code in {issue.code for issue in found}:
                counts[code] += 1
        examples = []
        for index, found in enumerate(issues):
            if len(examples) == self.config.max_examples:
                break
            if found and (index in snippets or isinstance(conversations, Sequence)):
                user_input, output = snippets.get(index) or _snippets(conversations[index])
                examples.append(
                    {
                        "index": index,
                        "input": user_input,
                        "output": output,
                        "codes": [issue.code for issue in found],
                        "issues": [issue.reason for issue in found],
                    }
                )
        valid = sum(1 for found in issues if not found)
        report = QualityReport(total=len(issues), valid=valid, issues=issues, counts=counts, examples=examples)
        report.recommendations = recommendations(report, self.config)
        return report

    def _checked_chunks(self, conversations: Iterable[dict]) -> Iterator[tuple[ChunkResult, dict[int, int]]]:
        """`check_chunk` of the new conversations of each chunk of `chunk_conversations`, with
        the chunk's repeats (`_new_chunks`), in order: the first `parallel_min_conversations`
        in this process (starting workers costs more than a small data set takes), the rest in
        worker processes, a bounded number of chunks in flight."""
        config = self.config
        chunks = _new_chunks(conversations, config.chunk_conversations)
        serial = -(-config.parallel_min_conversations // config.chunk_conversations)
        for new, repeats in islice(chunks, serial):
            yield check_chunk(self, new), repeats
        workers = config.workers or usable_cpus()
        chunk = next(chunks, None)
        if chunk is None or workers < 2:
            yield from ((check_chunk(self, new), repeats) for new, repeats in chain([chunk] if chunk else [], chunks))
            return
        import multiprocessing

        # fork: starts fastest, and unlike spawn and forkserver it does not run the caller's
        # main module again (a script without `if __name__ == "__main__":` would recurse)
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        # leaving the block (an error, Ctrl-C) terminates the workers
        with context.Pool(workers, initializer=_ignore_interrupts) as pool:
            pending: deque = deque()
            for new, repeats in chain([chunk], chunks):
                pending.append((pool.apply_async(check_chunk, (self, new)), repeats))
                if len(pending) > 2 * workers:
                    result, repeats = pending.popleft()
                    yield result.get(), repeats
            while pending:
                result, repeats = pending.popleft()
                yield result.get(), repeats

    def filter_valid(self, conversations: list[dict]) -> list[dict]:
        """The conversations without any issue (the first of a set of duplicates stays)."""
        report = self.analyze(conversations)
        return [c for c, found in zip(conversations, report.issues) if not found]

    # -- duplicates across the data set ---------------------------------------------------

    @staticmethod
    def _duplicates(finder: CopyFinder) -> dict[int, QualityIssue]:
        """Exact duplicates by normalised text, near duplicates by MinHash LSH."""
        found: dict[int, QualityIssue] = {}
        for index, (original, similarity) in finder.copies().items():
            if similarity is None:
                found[index] = QualityIssue(
                    "duplicate",
                    f"exact duplicate of conversation {original} (after "
                    "normalising case, spacing and punctuation); remove the copy",
                )
            else:
                found[index] = QualityIssue(
                    "near_duplicate",
                    f"near duplicate of conversation {original} "
                    f"({similarity:.0%} of word shingles shared); keep one of them",
                )
        return found


class ChunkResult(NamedTuple):
    """What `check_chunk` hands back for a chunk of conversations: their issues, the snippets of
    the first `max_examples` with an issue (by offset in the chunk) and their copy fingerprints."""

    issues: list[list[QualityIssue]]
    snippets: dict[int, tuple[str, str]]
    codes: TextCodes


def check_chunk(validator: DataQualityValidator, conversations: list[dict]) -> ChunkResult:
    """The per-conversation half of `analyze` (rules, copy keys, fingerprints) for a chunk; a
    module function so worker processes can run it."""
    limit = validator.config.max_text_chars
    issues, snippets, keys, token_lists = [], {}, [], []
    for offset, conversation in enumerate(conversations):
        turns = exchanges(conversation)
        found, tokens = validator._check(conversation, turns)
        issues.append(found)
        if found and len(snippets) < validator.config.max_examples:
            snippets[offset] = _snippets(conversation)
        parts = [conversation.get("system") or ""]
        for turn in turns:
            parts += turn
        if feedback_reason(conversation):
            # An answer marked bad is left out anyway: it must not make its correction a copy.
            key, tokens = "", []
        elif max(map(len, parts)) <= limit:
            key = " ".join(tokens)
        else:  # the words were cut at the bound: equal only when equal in full
            key = "\x00" + "\x1f".join(part.lower() for part in parts)
        keys.append(key)
        token_lists.append(tokens)
    return ChunkResult(issues, snippets, text_codes(keys, token_lists, validator.config.max_dedup_words))


# Conversations remembered to find repeats (`_new_chunks`): between this many and twice as
# many of the latest, 16 bytes of digest and an index each (about 100 bytes in a dict).
REMEMBERED = 100_000


def _new_chunks(conversations: Iterable[dict], size: int) -> Iterator[tuple[list[dict], dict[int, int]]]:
    """The conversations in chunks of `size`, each as the conversations not read before and
    {place in the chunk of a repeat: index of its first reading}. A repeat has the fields and
    values of an earlier conversation (a data set's exact copies, a line logged twice): the
    rules would give it the same issues, so it is not checked again. The latest `REMEMBERED`
    or more conversations are remembered, by digest; an older copy is simply checked again."""
    recent: dict[bytes, int] = {}
    older: dict[bytes, int] = {}
    stream = iter(conversations)
    start = 0
    while chunk := list(islice(stream, size)):
        new, repeats = [], {}
        for place, conversation in enumerate(chunk):
            key = _content_key(conversation)
            earlier = recent.get(key, older.get(key))
            if earlier is not None:
                repeats[place] = earlier
                continue
            if key is not None:
                recent[key] = start + place
            new.append(conversation)
        if len(recent) >= REMEMBERED:
            older, recent = recent, {}
        start += len(chunk)
        yield new, repeats


def _content_key(conversation: dict) -> bytes | None:
    """A digest of the conversation's fields and values in order (None when they are not all
    JSON: such a conversation is never taken for a repeat; nor is a record cut short)."""
    if isinstance(conversation, CutShort):
        return None
    try:
        return hashlib.blake2b(orjson.dumps(conversation), digest_size=16).digest()
    except TypeError:  # orjson.JSONEncodeError included
        return None


def _with_repeats(
    result: ChunkResult,
    repeats: dict[int, int],
    start: int,
    issues: list[list[QualityIssue]],
    snippets: dict[int, tuple[str, str]],
    finder: CopyFinder,
) -> ChunkResult:
    """The `ChunkResult` of a whole chunk (its first conversation number `start`) from that of
    its new conversations and its repeats: a repeat gets its first reading's issues, snippet
    and key hash (from this chunk, or from `issues`, `snippets` and `finder` for earlier
    ones), and no words: as an exact copy it never enters the near-duplicate search."""
    found: list[list[QualityIssue]] = []
    chunk_snippets: dict[int, tuple[str, str]] = {}
    digests, lengths = array("Q"), array("q")
    new = 0
    for place in range(len(result.issues) + len(repeats)):
        original = repeats.get(place)
        if original is None:
            found.append(result.issues[new])
            digests.append(result.codes.digests[new])
            lengths.append(result.codes.lengths[new])
            snippet = result.snippets.get(new)
            new += 1
        elif original >= start:
            found.append(list(found[original - start]))
            digests.append(digests[original - start])
            lengths.append(0)
            snippet = chunk_snippets.get(original - start)
        else:
            found.append(list(issues[original]))
            digests.append(finder.digest(original))
            lengths.append(0)
            snippet = snippets.get(original)
        if snippet is not None:
            chunk_snippets[place] = snippet
    return ChunkResult(found, chunk_snippets, result.codes._replace(digests=digests, lengths=lengths))


def _ignore_interrupts() -> None:
    """Workers leave Ctrl-C to the parent, which stops them: no traceback from each worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _snippets(conversation: dict) -> tuple[str, str]:
    """The conversation's final input and output, shortened for a report's examples."""
    return (_snippet(conversation.get("input", "")), _snippet(conversation.get("output", "")))


def recommendations(report: QualityReport, config: QualityConfig) -> list[str]:
    """What to do about the problems found, most important first."""
    counts, total = report.counts, report.total
    if not total:
        return ["The data set is empty: add conversations with an 'input' and an 'output'."]
    advice = {
        "empty_output": "{n} conversation(s) have an empty answer: fill them in or remove them.",
        "empty_input": "{n} conversation(s) have an empty question: add the question or remove them.",
        "short_output": "{n} answer(s) have fewer than {w} words: write full-sentence answers; "
        "the model copies their brevity.",
        "repetitive_output": "{n} answer(s) repeat themselves: rewrite or drop them, or the model learns to loop.",
        "gibberish_output": "{n} answer(s) look like symbols, URLs or markup (common in scraped "
        "pages): clean them up or drop them.",
        "echo_output": "{n} answer(s) only repeat the question: replace them with real answers.",
        "incomplete_output": "{n} answer(s) stop mid-sentence (often a length cut when scraping "
        "or logging): finish them or end them with punctuation.",
        "duplicate": "{n} conversation(s) are exact copies of earlier ones: remove them so "
        "they do not weigh more in training.",
        "near_duplicate": "{n} conversation(s) are near copies of earlier ones: keep one of each.",
        "marked_bad": "{n} answer(s) were marked bad in chat: leave them out, or correct them with `review`.",
        "cut_short": "{n} record(s) end the file cut short (a write was interrupted): training "
        "skips them; export the file again if that record matters.",
    }
    result = [advice[code].format(n=counts[code], w=config.min_output_words) for code in CODES if counts.get(code)]
    if 0 < report.valid < total:
        result.append(
            "Run `validate --data-file FILE --filter` to write only the "
            f"{report.valid} valid conversations to a new file."
        )
    if report.verdict == "critical":
        result.insert(
            0,
            "Most conversations have problems: training on this data will give a "
            "poor model. Fix the data before training.",
        )
    if total < 50:
        result.append(
            f"Only {total} conversations: a few hundred varied ones give a model "
            "that handles new questions much better."
        )
    if not result:
        result.append("No problems found: the data is ready for training.")
    return result


QUALITY_BLOCKS = "critical"  # verdict (< 50 % valid conversations) that stops training without --force


def quality_gate(conversations: list[dict], force: bool = False, quiet: bool = False) -> QualityReport:
    """Show the data-quality report; refuse a critical data set unless `force`. Returns the report."""
    # One process: training has loaded torch, whose threads a fork would copy mid-flight, and
    # under torchrun every rank would start workers of its own on the same cores.
    report = DataQualityValidator(QualityConfig(workers=1)).analyze(conversations)
    main = is_main_process()  # every rank checks (all stop together); only rank 0 prints
    if main and not quiet:
        print(report.format_text())
    score = f"{report.quality_score:.0%}"
    if report.verdict == QUALITY_BLOCKS and not force:
        raise MtnsailsError(
            f"data quality {score} is below 50 %: fix the data (`validate --filter` "
            "keeps the good conversations) or pass --force to train anyway"
        )
    if main and report.verdict != "good":
        print(f"warning: data quality is {score} ({report.verdict}); training anyway", file=sys.stderr)
    return report
