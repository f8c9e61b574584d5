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
import re
import signal
import string
import sys
import unicodedata
import zlib
from array import array
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, islice
from operator import eq, itemgetter, ne
from typing import NamedTuple

import orjson

from mtnsails.cpu import usable_cpus
from mtnsails.dedup import CopyFinder, TextCodes, text_codes
from mtnsails.devices import is_main_process
from mtnsails.errors import MtnsailsError
from mtnsails.template import exchanges
from mtnsails.text_rules import CLOSING_MARKS, SENTENCE_END

CODES = ("empty_output", "empty_input", "short_output", "repetitive_output", "gibberish_output",
         "echo_output", "incomplete_output", "duplicate", "near_duplicate", "marked_bad")
# Count keys of the original MTN Sails report (e.g. `empty_outputs`) plus the new codes.
COUNT_KEYS = {code: code + "s" for code in CODES}
LABELS = {"empty_output": "empty output", "empty_input": "empty input",
          "short_output": "too-short output", "repetitive_output": "repetitive output",
          "gibberish_output": "gibberish output", "echo_output": "output echoes input",
          "incomplete_output": "incomplete output", "duplicate": "exact duplicate",
          "near_duplicate": "near duplicate", "marked_bad": "marked bad in chat"}
RULE_FLAGS = {"repetitive_output": "check_repetition", "short_output": "check_length",
              "gibberish_output": "check_gibberish", "echo_output": "check_echo",
              "incomplete_output": "check_incomplete"}


@dataclass
class QualityConfig:
    """Every threshold the validator uses, with where it comes from."""

    # Original MTN Sails rule: an answer needs at least 3 words.
    min_output_words: int = 3
    # Gopher (Rae et al. 2021, Table A1) rules were tuned on documents of >= 50 words;
    # shorter answers skip them (word statistics of one sentence are noise).
    gopher_min_words: int = 50
    # Gopher repetition: duplicate line / paragraph fraction and their character fractions.
    max_duplicate_line_fraction: float = 0.30
    max_duplicate_line_char_fraction: float = 0.20
    max_duplicate_paragraph_fraction: float = 0.30
    max_duplicate_paragraph_char_fraction: float = 0.20
    # Gopher: character fraction covered by the most frequent 2-, 3-, 4-gram.
    max_top_ngram_char_fraction: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    # Gopher: character fraction in duplicated 5..10-grams.
    max_duplicate_ngram_char_fraction: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
    # Whisper treats a segment whose gzip compression ratio exceeds 2.4 as repetitive; a short
    # text compresses too little for the ratio to mean anything, hence the length floor.
    max_compression_ratio: float = 2.4
    compression_min_chars: int = 100
    # Same word this many times in a row ("very very very very") is a generation loop.
    max_word_run: int = 3
    # A sentence of >= this many words appearing twice in a short answer is a loop.
    repeated_sentence_min_words: int = 3
    # Gibberish: share of letters among non-space characters (the original used 0.3; 0.5
    # still passes numeric answers like "It is 384,000 km." while catching symbol soup).
    min_alpha_ratio: float = 0.5
    # Share of characters in URLs above which an answer is link debris, not prose.
    max_url_char_fraction: float = 0.5
    # One link in a one-sentence answer easily covers half its characters ("See
    # https://example.com/a/b/c for the full details." is 57 % URL), so texts shorter than
    # this (non-space characters) only count as link debris with fewer than
    # `min_output_words` words besides their URLs.
    url_fraction_min_chars: int = 100
    # Gopher quality rules: '#'/ellipsis per word > 0.1, < 80 % of words with a letter
    # (from `gopher_min_words`: "Primes such as 2, 3, 5, 7 and 11." has 55 % words with a letter).
    max_symbol_word_ratio: float = 0.1
    min_words_with_letter: float = 0.8
    # Gopher mean word length 3..10 characters. The upper bound applies from
    # `min_output_words` (keyboard mash makes long "words"); the lower one from
    # `gopher_min_words` ("If I do it, I am on my way." is fine English with mean 2.0).
    mean_word_length_range: tuple[float, float] = (3.0, 10.0)
    # Echo (original rule: 0.6): share of output words that also occur in the input. It only
    # counts as echo when the output also adds no content word of its own, so a restated
    # question followed by the actual answer passes.
    echo_overlap: float = 0.6
    # Near duplicates: Jaccard similarity of word-shingle sets. FineWeb uses MinHash over word
    # 5-grams; one changed word removes up to 5 of a short text's few shingles, so texts under
    # `long_text_words` use word 2-grams. Measured on the example data: two changed words
    # leave a Jaccard similarity of 0.69-0.9, while different conversations share <= 0.15.
    near_duplicate_threshold: float = 0.6
    long_text_words: int = 100
    long_shingle_words: int = 5
    short_shingle_words: int = 2
    # 25 bands x 4 rows: a pair at Jaccard 0.6 becomes a candidate with probability 0.97
    # (FineWeb's 14 x 8 targets about 0.75); candidates are then checked exactly.
    minhash_bands: int = 25
    minhash_rows: int = 4
    # Compare a new conversation with at most this many earlier members of one LSH bucket.
    max_bucket_candidates: int = 10
    max_examples: int = 5
    # Work per text is bounded so one huge text cannot take the validator's time or memory:
    # the rules read an answer's first (and for its ending, last) `max_text_chars` characters,
    # about 3,500 words, more than any loop or symbol soup needs to show; copies are compared
    # by the shingles of a conversation's first `max_dedup_words` words (texts over the bound
    # count as exact copies only when equal in full, ignoring case).
    max_text_chars: int = 20_000
    max_dedup_words: int = 1_000
    # `analyze` checks conversations in chunks of `chunk_conversations`; those after the first
    # `parallel_min_conversations` in `workers` processes (0: one per usable CPU, 1: all in
    # this process); the copy search's final check runs in as many threads. Measured on 2 busy
    # cores, 2 workers from the start took longer than one process up to 10,000 conversations
    # (2.3 s against 2.0 s) and less at 20,000 (2.5 s against 3.8 s): filling the pipeline of
    # chunks costs about a second.
    workers: int = 0
    parallel_min_conversations: int = 20_000
    chunk_conversations: int = 2_000


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
        """"good" (>= 70 % valid), "warning" (50-70 %) or "critical" (< 50 %)."""
        if self.quality_score >= 0.7:
            return "good"
        return "warning" if self.quality_score >= 0.5 else "critical"

    def verdict_line(self) -> str:
        """One line with a symbol, the verdict and the score (what `validate --quiet` prints)."""
        symbol = {"good": "✓", "warning": "⚠", "critical": "✗"}[self.verdict]
        return (f"{symbol} Data quality is {self.verdict.upper()} "
                f"({self.quality_score:.1%} of {self.total} conversations are valid)")

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
                {"index": index, "codes": [issue.code for issue in found],
                 "reasons": [issue.reason for issue in found]}
                for index, found in enumerate(self.issues) if found],
            "problematic_examples": self.examples,
            "recommendations": self.recommendations,
        }
        result.update(result["issue_summary"])
        return result

    def format_text(self) -> str:
        """A human-readable report: score, counts, examples, recommendations, verdict."""
        lines = ["Data Quality Report", "=" * 19,
                 f"Total conversations:   {self.total}",
                 f"Valid conversations:   {self.valid}",
                 f"Invalid conversations: {self.total - self.valid}",
                 f"Quality score:         {self.quality_score:.1%}", "", "Issues found:"]
        lines += [f"  {LABELS[code] + ':':<23}{self.counts.get(code, 0)}" for code in CODES]
        if self.examples:
            lines += ["", "Examples of problems:"]
            for example in self.examples:
                lines.append(f"  conversation {example['index']}: input {example['input']!r}")
                lines.append(f"    output {example['output']!r}")
                lines += [f"    - {reason}" for reason in example["issues"]]
        lines += ["", "Recommendations:"] + [f"  - {text}" for text in self.recommendations]
        return "\n".join(lines + ["", self.verdict_line()])


# -- text helpers ---------------------------------------------------------------------------

WORD_RE = re.compile(r"\w+(?:['’]\w+)*")
LETTERS_RE = re.compile(r"[^\W\d_]+")
NON_LETTERS_RE = re.compile(r"[\W\d_]+")  # removing these leaves the letters
URL_RE = re.compile(r"(?:https?://|ftp://|www\.)\S*|\b\S+\.(?:com|org|net|io|html?|php)(?:/\S*)?",
                    re.IGNORECASE)
URL_HINTS = ("://", "www.", ".com", ".org", ".net", ".io", ".htm", ".php")  # cheap pre-check
CODE_RE = re.compile(r"```.*?(?:```|$)|`[^`\n]+`", re.DOTALL)
# A sentence: up to a sentence end (closing quotes and brackets included) before a space, or the
# rest of its line.
SENTENCE_RE = re.compile(
    f"[^\\n]*?[{re.escape(SENTENCE_END)}][{re.escape(CLOSING_MARKS)}]*(?=\\s|$)|[^\\n]+")
PARAGRAPH_SPLIT_RE = re.compile(r"\n{2,}")
# Chinese and Japanese write without spaces between words.
CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
HEADING_RE = re.compile(r"^\s*#{1,6}\s", re.MULTILINE)  # markdown headings are not symbol soup
LIST_ITEM_RE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s")
PUNCTUATION = str.maketrans("", "", ".,;:!?\"'()")  # not counted in word lengths
# The same two character sets as bytes: on ASCII text (most of it) bytes.translate counts them
# several times faster than str.translate or a regular expression.
ASCII_PUNCTUATION = b".,;:!?\"'()"
ASCII_LETTERS = string.ascii_letters.encode("ascii")
# ASCII bytes that end a word (what WORD_RE does not match) become spaces.
ASCII_WORD_BREAKS = bytes(
    code if chr(code) in string.ascii_letters + string.digits + "_'" else ord(" ")
    for code in range(128)) + bytes(range(128, 256))
# Markdown emphasis or code marks may close an answer after its last word (`**done**`).
MARKUP_ENDS = "*`_"
ENDINGS = SENTENCE_END + CLOSING_MARKS + MARKUP_ENDS  # a complete answer ends on one of these
# Words a sentence cannot end on: a text ending with one (even before "...") was cut off.
CONNECTORS = frozenset(
    "and or but nor the a an of to with for from because that which who whose if than as at by "
    "into onto is are was were be my your their its our his her this these those".split())
# Words that carry no answer: a restated question plus only these is still an echo.
FILLER_WORDS = frozenset(
    "a an the and or but so of to in on at by for with from as is are was were be been it its "
    "this that these those i you he she we they me my your our their what which who how why when "
    "where do does did can could would should will shall may might must not no yes sure ok okay "
    "well oh ah here there about asked ask question questions tell me said say just".split())


def _is_emoji(char: str) -> bool:
    return ord(char) >= 0x2190 and unicodedata.category(char) in ("So", "Sk")


def word_count(text: str) -> int:
    """Words separated by spaces; each Chinese/Japanese character counts as a word of its own."""
    if text.isascii() or not CJK_RE.search(text):
        return len(text.split())
    return len(WORD_RE.findall(CJK_RE.sub(" ", text))) + len(CJK_RE.findall(text))


def _most_common(counts: Counter) -> tuple:
    """`counts.most_common(1)[0]`: the most frequent item (the first counted of equal counts)
    and its count, without most_common's general case (a heap, imported on each call)."""
    return max(counts.items(), key=itemgetter(1))


def _duplicates(items: list[str]) -> tuple[int, int, str, int]:
    """(duplicate count, characters in duplicates, most repeated item, its count)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    if not count:
        return 0, 0, "", 0
    top, top_count = _most_common(Counter(items))
    return count, chars, top, top_count


def words_of(text: str) -> list[str]:
    """WORD_RE's words of `text`; ASCII text is split by bytes.translate, 2.5 times faster."""
    if not text.isascii():
        return WORD_RE.findall(text)
    words = text.encode("ascii").translate(ASCII_WORD_BREAKS).decode("ascii").split()
    if "'" not in text:
        return words
    # an apostrophe only joins letters: "'quoted'" and "a''b" are split by WORD_RE
    return [part for word in words
            for part in (WORD_RE.findall(word) if "'" in word else (word,))]


def _letter_count(text: str) -> int:
    """Letters in `text` (what LETTERS_RE matches)."""
    if text.isascii():
        raw = text.encode("ascii")
        return len(raw) - len(raw.translate(None, ASCII_LETTERS))
    return len(NON_LETTERS_RE.sub("", text))


def _letterless_words(words: list[str]) -> int:
    """How many of `words` (split on spaces) hold no letter."""
    joined = " ".join(words)
    if not joined.isascii():
        return sum(1 for word in words if not LETTERS_RE.search(word))
    # a word keeps its length once the letters are deleted only if it had none
    stripped = joined.encode("ascii").translate(None, ASCII_LETTERS).split(b" ")
    return sum(map(eq, map(len, words), map(len, stripped)))


def _snippet(text: str, limit: int = 100) -> str:
    """`text` cut to `limit` characters, "…" marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _quote(text: str, limit: int = 60) -> str:
    """`text` on one line, shortened and quoted for a reason."""
    return repr(_snippet(" ".join(text.split()), limit))


# -- per-text rules (each returns a reason or None) -----------------------------------------

def repetition_reason(text: str, words: list[str], config: QualityConfig) -> str | None:
    """Loops and repeated content, by the rule suited to the text's length."""
    if any(map(eq, words, islice(words, 1, None))):  # a run needs a word repeated at once
        run_word, run, longest, longest_word = "", 0, 0, ""
        for word in words:
            run = run + 1 if word == run_word else 1
            run_word = word
            if run > longest:
                longest, longest_word = run, word
        if longest > config.max_word_run:
            return f"repeats the word {longest_word!r} {longest} times in a row"
    if len(words) >= config.gopher_min_words:
        return _gopher_repetition(text, words, config)
    # A sentence spans whole space-separated words, so one that repeats repeats its first
    # `repeated_sentence_min_words` words: without such a repeat there is no sentence to find.
    size = config.repeated_sentence_min_words
    lowered = text.lower().split()
    if len(set(_ngrams(lowered, size))) < len(lowered) - size + 1:
        sentences = [s.strip().lower() for s in SENTENCE_RE.findall(text)
                     if len(s.split()) >= size]
        _, _, top, top_count = _duplicates(sentences)
        if top_count > 1:
            return f"repeats the sentence {_quote(top)} {top_count} times"
    if len(text) >= config.compression_min_chars:
        raw = text.encode("utf-8")
        ratio = len(raw) / len(zlib.compress(raw, 9, wbits=-15))
        if ratio > config.max_compression_ratio:
            trigrams = Counter(" ".join(words[i:i + 3]) for i in range(len(words) - 2))
            phrase, count = _most_common(trigrams) if trigrams else ("", 0)
            return (f"compresses {ratio:.1f}x (limit {config.max_compression_ratio}): it repeats "
                    f"{phrase!r} {count} times")
    return None


def _gopher_repetition(text: str, words: list[str], config: QualityConfig) -> str | None:
    """Gopher's repetition rules (Rae et al. 2021, Table A1), as datatrove implements them."""
    for unit, parts, max_fraction, max_chars in (
            ("line", [p.strip() for p in text.split("\n") if p.strip()],
             config.max_duplicate_line_fraction, config.max_duplicate_line_char_fraction),
            ("paragraph", [p.strip() for p in PARAGRAPH_SPLIT_RE.split(text) if p.strip()],
             config.max_duplicate_paragraph_fraction,
             config.max_duplicate_paragraph_char_fraction)):
        count, chars, top, top_count = _duplicates(parts)
        if count and (count / len(parts) > max_fraction or chars / len(text) > max_chars):
            return (f"repeats the {unit} {_quote(top)} {top_count} times ({count} of "
                    f"{len(parts)} {unit}s are duplicates)")
    if len(set(_ngrams(words, 2))) == len(words) - 1:
        return None  # no word pair repeats, so no longer n-gram can either
    for n, limit in config.max_top_ngram_char_fraction:
        top, count = _most_common(Counter(_ngrams(words, n)))
        covered = (sum(map(len, top)) + n - 1) * count  # the n-gram as text, times its count
        if count > 1 and covered / len(text) > limit:
            return (f"repeats the phrase {' '.join(top)!r} {count} times (its repeats cover "
                    f"{covered / len(text):.0%} of the text; limit {limit:.0%})")
    shortest = min(n for n, _ in config.max_duplicate_ngram_char_fraction)
    grams = list(_ngrams(words, shortest))
    first = dict(zip(reversed(grams), range(len(grams) - 1, -1, -1)))  # gram -> first place
    if len(first) == len(grams):
        return None  # no repeated n-gram of the shortest size, so none of the longer ones
    # Places that share a `shortest`-gram, in groups: a longer n-gram can only repeat within
    # one (the rest of the text is never compared again, so a long answer costs one pass).
    firsts = list(map(first.__getitem__, grams))
    shared: dict[int, list[int]] = {}
    for place in compress(range(len(grams)), map(ne, firsts, range(len(grams)))):
        shared.setdefault(firsts[place], [firsts[place]]).append(place)
    for n, limit in config.max_duplicate_ngram_char_fraction:
        earlier: dict[int, list[int]] = {}  # place -> the places before it with its n-gram
        for group in shared.values():
            same: dict[tuple[str, ...], list[int]] = {}
            for place in group:
                if place + n <= len(words):
                    same.setdefault(tuple(words[place + shortest:place + n]), []).append(place)
            for places in same.values():
                for k in range(1, len(places)):
                    earlier[places[k]] = places[:k]
        # datatrove's scan (count a repeat once, skip past it) on the places that can repeat:
        # an n-gram was seen when one of its earlier places was not skipped
        repeated_chars, first_repeat, i, skipped = 0, None, 0, set()
        for place in sorted(earlier):
            if place < i:
                continue
            if any(before not in skipped for before in earlier[place]):
                gram = words[place:place + n]
                repeated_chars += sum(map(len, gram))
                first_repeat = first_repeat or gram
                skipped.update(range(place + 1, place + n))
                i = place + n
            else:
                i = place + 1
        if repeated_chars / len(text) > limit:
            return (f"{repeated_chars / len(text):.0%} of the text is repeated {n}-word "
                    f"sequences such as {' '.join(first_repeat)!r} (limit {limit:.0%})")
    return None


def _ngrams(words: list[str], n: int):
    return zip(*(words[k:] for k in range(n)))


def gibberish_reason(text: str, config: QualityConfig) -> str | None:
    """Symbol soup, link debris, keyboard mash. Code (``` blocks, `inline`) is not judged."""
    prose = CODE_RE.sub(" ", text) if "`" in text else text
    words = prose.split()
    compact = "".join(words)
    if not compact:
        return None
    url_chars = 0
    if any(map(prose.__contains__, URL_HINTS)):
        url_chars = sum(len(url) for url in URL_RE.findall(prose))
    if url_chars:
        prose = URL_RE.sub(" ", prose)
        words = prose.split()
    if url_chars / len(compact) > config.max_url_char_fraction and (
            len(compact) >= config.url_fraction_min_chars
            or len(words) < config.min_output_words):
        return f"is mostly URLs ({url_chars / len(compact):.0%} of its characters): {_quote(text)}"
    letters = _letter_count(prose)
    if len(compact) - url_chars and letters / (len(compact) - url_chars) < config.min_alpha_ratio:
        return (f"has only {letters / (len(compact) - url_chars):.0%} letters among its "
                f"characters (minimum {config.min_alpha_ratio:.0%}): {_quote(prose)}")
    low, high = config.mean_word_length_range
    joined = "".join(words) if url_chars else compact
    if joined.isascii():
        kept = len(joined.encode("ascii").translate(None, ASCII_PUNCTUATION))
    else:
        kept = len(joined.translate(PUNCTUATION))
    mean = kept / max(len(words), 1)
    if ((mean > high and len(words) >= config.min_output_words and not CJK_RE.search(prose))
            or (mean < low and len(words) >= config.gopher_min_words)):
        return f"has a mean word length of {mean:.1f} characters (expected {low:g}-{high:g})"
    if len(words) < config.gopher_min_words:
        return None
    hashes = HEADING_RE.sub("", prose).count("#") if "#" in prose else 0
    symbols = hashes + prose.count("...") + prose.count("…")
    if symbols / len(words) > config.max_symbol_word_ratio:
        return (f"has {symbols} '#' or '...' symbols for {len(words)} words "
                f"(limit {config.max_symbol_word_ratio} per word)")
    with_letter = len(words) - _letterless_words(words)
    if with_letter / len(words) < config.min_words_with_letter:
        return (f"has a letter in only {with_letter / len(words):.0%} of its words "
                f"(minimum {config.min_words_with_letter:.0%})")
    return None


def echo_reason(input_words: list[str], output_tokens: list[str],
                config: QualityConfig) -> str | None:
    """The output mostly repeats the input (given as its lower-case words) and adds no content
    word of its own."""
    input_tokens = set(input_words)
    if not input_tokens or not output_tokens:
        return None
    copied = sum(map(input_tokens.__contains__, output_tokens))
    overlap = copied / len(output_tokens)
    if overlap < config.echo_overlap:
        return None
    if any(t not in input_tokens and t not in FILLER_WORDS for t in output_tokens):
        return None
    return (f"repeats the input ({overlap:.0%} of its words come from it) and adds nothing "
            "new; write the actual answer")


def incomplete_reason(text: str) -> str | None:
    """Cut mid-sentence: no closing punctuation, or a dangling 'and'/'the' before '...'."""
    stripped = text.rstrip()
    last_char = stripped[-1]
    ellipsis = stripped.endswith(("...", "…"))
    if not ellipsis and (last_char in ENDINGS or _is_emoji(last_char)):
        return None  # the common case, decided before any word is read
    tail = words_of(stripped[-40:].lower())
    last_word = tail[-1] if tail else ""
    if ellipsis:
        if last_word in CONNECTORS and re.search(r"\w\s*(?:\.\.\.|…)$", stripped):
            return f"trails off after the word {last_word!r}: {_quote(stripped[-50:])}"
        return None
    if LIST_ITEM_RE.match(stripped.rsplit("\n", 1)[-1]):
        return None  # list items often end without a full stop
    if last_word in CONNECTORS and stripped.lower().endswith(last_word):
        return f"ends on the dangling word {last_word!r}: {_quote(stripped[-50:])}"
    return f"ends mid-sentence without closing punctuation: {_quote(stripped[-50:])}"


def feedback_reason(conversation: dict) -> str | None:
    """The chat user marked the answer bad (`/bad`): it is known to be wrong, whatever it reads like."""
    if conversation.get("feedback") == "bad":
        return "marked bad in chat: the answer is wrong; correct it or leave it out"
    return None


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

    def _check(self, conversation: dict, turns: list[tuple[str, str]]
               ) -> tuple[list[QualityIssue], list[str]]:
        """The issues, and the conversation's lower-case words for the copy search (every turn,
        system included, turns separated by a marker; none when it has no word); `turns` are
        its `exchanges`."""
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
            issues += [QualityIssue(code, prefix + reason) for code, reason
                       in self._check_output(input_tokens, output, output_tokens)]
            tokens += input_tokens + ["\x1f"] + output_tokens + ["\x1f"]
        return issues, (tokens if len(tokens) > len(turns) * 2 + 1 else [])

    def _check_output(self, input_tokens: list[str], output: str,
                      tokens: list[str]) -> list[tuple[str, str]]:
        """(code, reason) of each rule the answer fails; each reason opens with its category."""
        config = self.config
        if not output or output.isspace():
            return [("empty_output", LABELS["empty_output"])]
        head = output[:config.max_text_chars]
        found = []
        count = word_count(head)
        if count < config.min_output_words:
            found.append(("short_output", f"only {count} word{'s' if count != 1 else ''} "
                          f"({_quote(head)}); answers need at least {config.min_output_words}"))
        for code, reason in (("repetitive_output", repetition_reason(head, tokens, config)),
                             ("gibberish_output", gibberish_reason(head, config)),
                             ("echo_output", echo_reason(input_tokens, tokens, config)),
                             ("incomplete_output",
                              incomplete_reason(output[-config.max_text_chars:]))):
            if reason:
                found.append((code, reason))
        return [(code, f"{LABELS[code]}: {reason}") for code, reason in found]

    def validate_conversation(self, conversation: dict, check_repetition: bool = True,
                              check_length: bool = True, check_gibberish: bool = True,
                              check_echo: bool = True, check_incomplete: bool = True
                              ) -> tuple[bool, list[str]]:
        """Original API: (is_valid, reasons); the flags switch single rules off. Each reason
        opens with its category ("repetitive output: ...", "empty output")."""
        enabled = {"check_repetition": check_repetition, "check_length": check_length,
                   "check_gibberish": check_gibberish, "check_echo": check_echo,
                   "check_incomplete": check_incomplete}
        reasons = [issue.reason for issue in self.check(conversation)
                   if enabled.get(RULE_FLAGS.get(issue.code, ""), True)]
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
                examples.append({"index": index, "input": user_input, "output": output,
                                 "codes": [issue.code for issue in found],
                                 "issues": [issue.reason for issue in found]})
        valid = sum(1 for found in issues if not found)
        report = QualityReport(total=len(issues), valid=valid, issues=issues, counts=counts,
                               examples=examples)
        report.recommendations = recommendations(report, self.config)
        return report

    def _checked_chunks(self, conversations: Iterable[dict]
                        ) -> Iterator[tuple[ChunkResult, dict[int, int]]]:
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
            yield from ((check_chunk(self, new), repeats)
                        for new, repeats in chain([chunk] if chunk else [], chunks))
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
                    "duplicate", f"exact duplicate of conversation {original} (after "
                    "normalising case, spacing and punctuation); remove the copy")
            else:
                found[index] = QualityIssue(
                    "near_duplicate", f"near duplicate of conversation {original} "
                    f"({similarity:.0%} of word shingles shared); keep one of them")
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
    return ChunkResult(issues, snippets,
                       text_codes(keys, token_lists, validator.config.max_dedup_words))


# Conversations remembered to find repeats (`_new_chunks`): between this many and twice as
# many of the latest, 16 bytes of digest and an index each (about 100 bytes in a dict).
REMEMBERED = 100_000


def _new_chunks(conversations: Iterable[dict], size: int
                ) -> Iterator[tuple[list[dict], dict[int, int]]]:
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
    JSON: such a conversation is never taken for a repeat)."""
    try:
        return hashlib.blake2b(orjson.dumps(conversation), digest_size=16).digest()
    except TypeError:  # orjson.JSONEncodeError included
        return None


def _with_repeats(result: ChunkResult, repeats: dict[int, int], start: int,
                  issues: list[list[QualityIssue]], snippets: dict[int, tuple[str, str]],
                  finder: CopyFinder) -> ChunkResult:
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
    return ChunkResult(found, chunk_snippets,
                       result.codes._replace(digests=digests, lengths=lengths))


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
        "empty_input": "{n} conversation(s) have an empty question: add the question or remove "
                       "them.",
        "short_output": "{n} answer(s) have fewer than {w} words: write full-sentence answers; "
                        "the model copies their brevity.",
        "repetitive_output": "{n} answer(s) repeat themselves: rewrite or drop them, or the "
                             "model learns to loop.",
        "gibberish_output": "{n} answer(s) look like symbols, URLs or markup (common in scraped "
                            "pages): clean them up or drop them.",
        "echo_output": "{n} answer(s) only repeat the question: replace them with real answers.",
        "incomplete_output": "{n} answer(s) stop mid-sentence (often a length cut when scraping "
                             "or logging): finish them or end them with punctuation.",
        "duplicate": "{n} conversation(s) are exact copies of earlier ones: remove them so "
                     "they do not weigh more in training.",
        "near_duplicate": "{n} conversation(s) are near copies of earlier ones: keep one of each.",
        "marked_bad": "{n} answer(s) were marked bad in chat: leave them out, or correct them "
                      "with `review`.",
    }
    result = [advice[code].format(n=counts[code], w=config.min_output_words)
              for code in CODES if counts.get(code)]
    if report.valid < total:
        result.append("Run `validate --data-file FILE --filter` to write only the "
                      f"{report.valid} valid conversations to a new file.")
    if report.verdict == "critical":
        result.insert(0, "Most conversations have problems: training on this data will give a "
                         "poor model. Fix the data before training.")
    if total < 50:
        result.append(f"Only {total} conversations: a few hundred varied ones give a model "
                      "that handles new questions much better.")
    if not result:
        result.append("No problems found: the data is ready for training.")
    return result


QUALITY_BLOCKS = "critical"  # verdict (< 50 % valid conversations) that stops training without --force


def quality_gate(conversations: list[dict], force: bool = False, quiet: bool = False
                 ) -> QualityReport:
    """Show the data-quality report; refuse a critical data set unless `force`. Returns the report."""
    # One process: training has loaded torch, whose threads a fork would copy mid-flight, and
    # under torchrun every rank would start workers of its own on the same cores.
    report = DataQualityValidator(QualityConfig(workers=1)).analyze(conversations)
    main = is_main_process()  # every rank checks (all stop together); only rank 0 prints
    if main and not quiet:
        print(report.format_text())
    score = f"{report.quality_score:.0%}"
    if report.verdict == QUALITY_BLOCKS and not force:
        raise MtnsailsError(f"data quality {score} is below 50 %: fix the data (`validate --filter` "
                            "keeps the good conversations) or pass --force to train anyway")
    if main and report.verdict != "good":
        print(f"warning: data quality is {score} ({report.verdict}); training anyway",
              file=sys.stderr)
    return report
