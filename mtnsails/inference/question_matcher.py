"""`QuestionMatcher`: find the trained question that a new question asks in other words.

A small model answers the questions it was trained on, in the words it was trained on; asked
"how do you repair a puncture" instead of "How do I fix a flat tyre?" it answers something else.
So chat asks the model the closest trained question when the new one is close enough: the answer
still comes from the model, the question is put the way the model learned it.

Closeness is the cosine of TF-IDF vectors of character 3- to 5-grams within words (robust to
inflection, spelling variants and word order), sublinear term frequency. numpy only.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import numpy as np

# Chosen on the tuning set bench/data/tuning_*.json (questions and rewordings by another
# person): most rewordings find their own question, few unrelated questions match one
# (the counts: docs/training.md).
DEFAULT_THRESHOLD = 0.35
NGRAM_SIZES = (3, 4, 5)
_NOT_WORD = re.compile(r"[^\w\s]")
# Words that say how something is asked, not what: rewordings change them freely, and on short
# questions they would outweigh the one or two words that carry the meaning.
FUNCTION_WORDS = frozenset("""a an and any are as at be can could do does did for from how i if in
is it its me my of on or should so than that the then there this to was what when where which who
whom why will with would you your""".split())
# Words that point back into the conversation: such a question depends on the exchanges before it.
REFERRING_WORDS = frozenset("it its they them their that this those these he she him her there".split())


def _words(text: str) -> list[str]:
    return _NOT_WORD.sub(" ", text.casefold().replace("\u2019", "'").replace("'", "")).split()


def refers_back(text: str) -> bool:
    """True when `text` has a word such as "it" or "they" that needs the earlier exchanges."""
    return any(word in REFERRING_WORDS for word in _words(text))


def _grams(text: str) -> Counter:
    grams: Counter = Counter()
    for word in _words(text):
        if word in FUNCTION_WORDS:
            continue
        padded = f" {word} "
        for size in NGRAM_SIZES:
            grams.update(padded[i:i + size] for i in range(max(1, len(padded) - size + 1)))
    return grams


@dataclass(frozen=True)
class QuestionMatch:
    """The trained question found for a new one, and how close they are (cosine, 0-1)."""

    question: str
    similarity: float


class QuestionMatcher:
    """Index trained questions; `match(text)` returns the closest one above `threshold`, or None.

    >>> matcher = QuestionMatcher(["How do I fix a flat tyre?", "What is a derailleur?"])
    >>> matcher.match("what does a derailleur do").question
    'What is a derailleur?'
    """

    def __init__(self, questions: Iterable[str], threshold: float = DEFAULT_THRESHOLD) -> None:
        self.questions = list(dict.fromkeys(q for q in questions if q.strip()))
        self.threshold = threshold
        counts = [_grams(q) for q in self.questions]
        document_frequency = Counter(gram for grams in counts for gram in grams)
        total = len(counts)
        self._columns = {gram: i for i, gram in enumerate(document_frequency)}
        self._idf = np.array([math.log((1 + total) / (1 + document_frequency[g])) + 1
                              for g in self._columns], dtype=np.float32)
        self._matrix = np.stack([self._vector(grams) for grams in counts]) if counts else None

    def _vector(self, grams: Counter) -> np.ndarray:
        vector = np.zeros(len(self._columns), dtype=np.float32)
        for gram, count in grams.items():
            column = self._columns.get(gram)
            if column is not None:
                vector[column] = 1 + math.log(count)
        vector *= self._idf
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else vector

    def match(self, text: str) -> QuestionMatch | None:
        """The trained question closest to `text` when its similarity reaches the threshold."""
        if self._matrix is None or self.threshold > 1:
            return None
        similarities = self._matrix @ self._vector(_grams(text))
        best = int(np.argmax(similarities))
        if similarities[best] < self.threshold:
            return None
        return QuestionMatch(self.questions[best], round(float(similarities[best]), 4))
