"""The quality rules: one small function each, returning a reason a user can act on, or None.

Rules in the style of datatrove's filters; their thresholds live in `QualityConfig`.
"""

from __future__ import annotations

import re
import string
import unicodedata
import zlib
from collections import Counter
from itertools import compress, islice
from operator import eq, itemgetter, ne

from mtnsails.core.text_rules import CLOSING_MARKS, SENTENCE_END
from mtnsails.quality.config import QualityConfig

# -- text helpers ---------------------------------------------------------------------------

WORD_RE = re.compile(r"\w+(?:['’]\w+)*")
LETTERS_RE = re.compile(r"[^\W\d_]+")
NON_LETTERS_RE = re.compile(r"[\W\d_]+")  # removing these leaves the letters
URL_RE = re.compile(r"(?:https?://|ftp://|www\.)\S*|\b\S+\.(?:com|org|net|io|html?|php)(?:/\S*)?", re.IGNORECASE)
URL_HINTS = ("://", "www.", ".com", ".org", ".net", ".io", ".htm", ".php")  # cheap pre-check
CODE_RE = re.compile(r"```.*?(?:```|$)|`[^`\n]+`", re.DOTALL)
# A sentence: up to a sentence end (closing quotes and brackets included) before a space, or the
# rest of its line.
SENTENCE_RE = re.compile(f"[^\\n]*?[{re.escape(SENTENCE_END)}][{re.escape(CLOSING_MARKS)}]*(?=\\s|$)|[^\\n]+")
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
    code if chr(code) in string.ascii_letters + string.digits + "_'" else ord(" ") for code in range(128)
) + bytes(range(128, 256))
# Markdown emphasis or code marks may close an answer after its last word (`**done**`).
MARKUP_ENDS = "*`_"
ENDINGS = SENTENCE_END + CLOSING_MARKS + MARKUP_ENDS  # a complete answer ends on one of these
# Words a sentence cannot end on: a text ending with one (even before "...") was cut off.
CONNECTORS = frozenset(
    "and or but nor the a an of to with for from because that which who whose if than as at by "
    "into onto is are was were be my your their its our his her this these those".split()
)
# Words that carry no answer: a restated question plus only these is still an echo.
FILLER_WORDS = frozenset(
    "a an the and or but so of to in on at by for with from as is are was were be been it its "
    "this that these those i you he she we they me my your our their what which who how why when "
    "where do does did can could would should will shall may might must not no yes sure ok okay "
    "well oh ah here there about asked ask question questions tell me said say just".split()
)


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
    """WORD_RE's words of `text`; ASCII text is split by bytes.translate, which is faster."""
    if not text.isascii():
        return WORD_RE.findall(text)
    words = text.encode("ascii").translate(ASCII_WORD_BREAKS).decode("ascii").split()
    if "'" not in text:
        return words
    # an apostrophe only joins letters: "'quoted'" and "a''b" are split by WORD_RE
    return [part for word in words for part in (WORD_RE.findall(word) if "'" in word else (word,))]


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
        sentences = [s.strip().lower() for s in SENTENCE_RE.findall(text) if len(s.split()) >= size]
        _, _, top, top_count = _duplicates(sentences)
        if top_count > 1:
            return f"repeats the sentence {_quote(top)} {top_count} times"
    if len(text) >= config.compression_min_chars:
        raw = text.encode("utf-8")
        ratio = len(raw) / len(zlib.compress(raw, 9, wbits=-15))
        if ratio > config.max_compression_ratio:
            trigrams = Counter(" ".join(words[i : i + 3]) for i in range(len(words) - 2))
            phrase, count = _most_common(trigrams) if trigrams else ("", 0)
            return (
                f"compresses {ratio:.1f}x (limit {config.max_compression_ratio}): it repeats {phrase!r} {count} times"
            )
    return None


def _gopher_repetition(text: str, words: list[str], config: QualityConfig) -> str | None:
    """Gopher's repetition rules (Rae et al. 2021, Table A1), as datatrove implements them."""
    for unit, parts, max_fraction, max_chars in (
        (
            "line",
            [p.strip() for p in text.split("\n") if p.strip()],
            config.max_duplicate_line_fraction,
            config.max_duplicate_line_char_fraction,
        ),
        (
            "paragraph",
            [p.strip() for p in PARAGRAPH_SPLIT_RE.split(text) if p.strip()],
            config.max_duplicate_paragraph_fraction,
            config.max_duplicate_paragraph_char_fraction,
        ),
    ):
        count, chars, top, top_count = _duplicates(parts)
        if count and (count / len(parts) > max_fraction or chars / len(text) > max_chars):
            return (
                f"repeats the {unit} {_quote(top)} {top_count} times ({count} of {len(parts)} {unit}s are duplicates)"
            )
    if len(set(_ngrams(words, 2))) == len(words) - 1:
        return None  # no word pair repeats, so no longer n-gram can either
    for n, limit in config.max_top_ngram_char_fraction:
        top, count = _most_common(Counter(_ngrams(words, n)))
        covered = (sum(map(len, top)) + n - 1) * count  # the n-gram as text, times its count
        if count > 1 and covered / len(text) > limit:
            return (
                f"repeats the phrase {' '.join(top)!r} {count} times (its repeats cover "
                f"{covered / len(text):.0%} of the text; limit {limit:.0%})"
            )
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
                    same.setdefault(tuple(words[place + shortest : place + n]), []).append(place)
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
                gram = words[place : place + n]
                repeated_chars += sum(map(len, gram))
                first_repeat = first_repeat or gram
                skipped.update(range(place + 1, place + n))
                i = place + n
            else:
                i = place + 1
        if repeated_chars / len(text) > limit:
            return (
                f"{repeated_chars / len(text):.0%} of the text is repeated {n}-word "
                f"sequences such as {' '.join(first_repeat)!r} (limit {limit:.0%})"
            )
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
        len(compact) >= config.url_fraction_min_chars or len(words) < config.min_output_words
    ):
        return f"is mostly URLs ({url_chars / len(compact):.0%} of its characters): {_quote(text)}"
    letters = _letter_count(prose)
    if len(compact) - url_chars and letters / (len(compact) - url_chars) < config.min_alpha_ratio:
        return (
            f"has only {letters / (len(compact) - url_chars):.0%} letters among its "
            f"characters (minimum {config.min_alpha_ratio:.0%}): {_quote(prose)}"
        )
    low, high = config.mean_word_length_range
    joined = "".join(words) if url_chars else compact
    if joined.isascii():
        kept = len(joined.encode("ascii").translate(None, ASCII_PUNCTUATION))
    else:
        kept = len(joined.translate(PUNCTUATION))
    mean = kept / max(len(words), 1)
    if (mean > high and len(words) >= config.min_output_words and not CJK_RE.search(prose)) or (
        mean < low and len(words) >= config.gopher_min_words
    ):
        return f"has a mean word length of {mean:.1f} characters (expected {low:g}-{high:g})"
    if len(words) < config.gopher_min_words:
        return None
    hashes = HEADING_RE.sub("", prose).count("#") if "#" in prose else 0
    symbols = hashes + prose.count("...") + prose.count("…")
    if symbols / len(words) > config.max_symbol_word_ratio:
        return (
            f"has {symbols} '#' or '...' symbols for {len(words)} words (limit {config.max_symbol_word_ratio} per word)"
        )
    with_letter = len(words) - _letterless_words(words)
    if with_letter / len(words) < config.min_words_with_letter:
        return (
            f"has a letter in only {with_letter / len(words):.0%} of its words "
            f"(minimum {config.min_words_with_letter:.0%})"
        )
    return None


def echo_reason(input_words: list[str], output_tokens: list[str], config: QualityConfig) -> str | None:
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
    return f"repeats the input ({overlap:.0%} of its words come from it) and adds nothing new; write the actual answer"


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
