"""What ends a sentence: one definition for the quality rules and the scraped-page cleaner.

A sentence ends in terminal punctuation (Latin, ellipsis, or the full-width marks of Chinese and
Japanese), optionally followed by closing quotes or brackets: `He left (quietly).`, `"Yes!"`.
"""

from __future__ import annotations

import re

SENTENCE_END = ".!?…。！？"
CLOSING_MARKS = "\"'”’»)]}"  # may follow the sentence end: a quotation or bracket closes
ENDS_SENTENCE = re.compile(f"[{re.escape(SENTENCE_END)}][{re.escape(CLOSING_MARKS)}]*$")

