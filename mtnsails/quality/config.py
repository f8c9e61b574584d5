"""`QualityConfig`: every threshold of the quality rules, each with its source; the issue codes."""

from __future__ import annotations

from dataclasses import dataclass

CODES = (
    "empty_output",
    "empty_input",
    "short_output",
    "repetitive_output",
    "gibberish_output",
    "echo_output",
    "incomplete_output",
    "duplicate",
    "near_duplicate",
    "marked_bad",
    "cut_short",
)


class CutShort(dict):
    """Stands, in a stream of conversations, for a record a crash cut short (`where`: "FILE: line
    N"), so that `validate` counts the lost record instead of passing over it. No record read from
    JSON is one, whatever its keys."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where


# Count keys of the original MTN Sails report (e.g. `empty_outputs`) plus the new codes.
COUNT_KEYS = {code: code + "s" for code in CODES}
LABELS = {
    "empty_output": "empty output",
    "empty_input": "empty input",
    "short_output": "too-short output",
    "repetitive_output": "repetitive output",
    "gibberish_output": "gibberish output",
    "echo_output": "output echoes input",
    "incomplete_output": "incomplete output",
    "duplicate": "exact duplicate",
    "near_duplicate": "near duplicate",
    "marked_bad": "marked bad in chat",
    "cut_short": "record cut short",
}
RULE_FLAGS = {
    "repetitive_output": "check_repetition",
    "short_output": "check_length",
    "gibberish_output": "check_gibberish",
    "echo_output": "check_echo",
    "incomplete_output": "check_incomplete",
}


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
        (5, 0.15),
        (6, 0.14),
        (7, 0.13),
        (8, 0.12),
        (9, 0.11),
        (10, 0.10),
    )
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
    # this process); the copy search's final check runs in as many threads. Below the threshold
    # filling the workers' pipeline of chunks costs more than it saves (docs/performance.md).
    workers: int = 0
    parallel_min_conversations: int = 20_000
    chunk_conversations: int = 2_000
