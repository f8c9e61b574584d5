"""What ends a sentence, and splitting prose into sentences: one definition for the quality
rules and the scraped-page cleaner.

A sentence ends in terminal punctuation (Latin, ellipsis, or the full-width marks of Chinese and
Japanese), optionally followed by closing quotes or brackets: `He left (quietly).`, `"Yes!"`.
"""

from __future__ import annotations

import re

SENTENCE_END = ".!?…。！？"
CLOSING_MARKS = "\"'”’»)]}"  # may follow the sentence end: a quotation or bracket closes
ENDS_SENTENCE = re.compile(f"[{re.escape(SENTENCE_END)}][{re.escape(CLOSING_MARKS)}]*$")
# A sentence end inside running text (followed by space or the end): where chat may cut.
SENTENCE_END_IN_TEXT = re.compile(f"[{re.escape(SENTENCE_END)}][{re.escape(CLOSING_MARKS)}]*(?=\\s|$)")

ABBREVIATIONS = {
    "e.g",
    "i.e",
    "etc",
    "vs",
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "fig",
    "no",
    "st",
    "approx",
    "cf",
    "inc",
    "ltd",
    "jr",
    "sr",
}
# A sentence end, then space and what starts a sentence (capital or digit, maybe after a quote).
SENTENCE_BREAK = re.compile(
    f"([{re.escape(SENTENCE_END)}][{re.escape(CLOSING_MARKS)}]*)"
    r"\s+(?=[\"'“‘(\[]?[A-Z0-9])"
)


def sentences(text: str) -> list[str]:
    """Split prose at sentence ends, not after abbreviations ("e.g.") or initials ("J.")."""
    result, start = [], 0
    for match in SENTENCE_BREAK.finditer(text):
        before = text[start : match.start() + 1].split()
        word = before[-1].rstrip(".").lower() if before else ""
        if match.group(1) == "." and (word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())):
            continue
        result.append(text[start : match.end(1)].strip())
        start = match.end()
    tail = text[start:].strip()
    if tail:
        result.append(tail)
    return result
