"""`QuestionMatcher`: find the trained question that a new question asks in other words.

A small model answers the questions it was trained on, in the words it was trained on; asked
"the kitchen faucet drips" instead of "How do I fix a dripping kitchen faucet?" it answers
something else. So chat asks the model the closest trained question when the new one is close
enough: the answer still comes from the model, the question is put the way the model learned it.

Closeness (docs/question-matching.md has the figures):

- words: the content words of a question, lower case, with a light suffix stripper ("dripping" ->
  "drip"); words that frame a question rather than name its subject ("how", "best", "way",
  "could", "explain") are left out;
- two TF-IDF cosines, one of those words and one of their character 3- to 5-grams (spelling
  variants: "tyre"/"tire", "mould"/"mold"), mixed WORD_SHARE : 1 - WORD_SHARE;
- given the trained answers, a trained question is represented by its words and its answer's
  words (the answer names the subject again, often in other words), and the IDF counts both;
- a word of the new question that no trained text has still counts in its length, so a question
  on another topic that shares one word with a trained question ("How do I reset my wifi
  router?", "How do I reset an outlet that stopped working?") scores low.

Decision: a trained question asked again (any case, any punctuation) is itself; otherwise the best
trained question is taken when its score reaches the threshold AND beats the second best by at
least the margin, and the question is asked as typed when not. Words the trained
texts do not have cannot match: a rewording in synonyms ("sink tap keeps leaking") is left as
typed, and a question that changes only the subject ("Why is my laptop fan so loud?" for "Why is
my bathroom fan so loud?") is still taken. numpy only; the vectors are stored column-wise (an
inverted index): under a millisecond a question with 10,000 trained questions.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

# Chosen with bench/matcher_bench.py on its tuning and development sets (bicycle, houseplant,
# cooking; repair, finance, pets: 120 rewordings, each set's near misses and the trained questions
# of the other sets as other topics): the most rewordings asked right with at most 2 % of the
# other-topic questions swapped, at most 1 wrong swap in 120 and a margin of at least 0.08.
# The held-out sets (tech, travel) chose nothing. Figures: docs/question-matching.md.
DEFAULT_THRESHOLD = 0.40  # trained questions only (models trained before answers were recorded)
ANSWERS_THRESHOLD = 0.32  # questions with their answers: a question's vector is spread wider
DEFAULT_MARGIN = 0.08  # best minus second best; below it two trained questions are too alike
WORD_SHARE = 0.6  # word cosine vs character n-gram cosine (0.4 and 0.6 alike)
UNKNOWN_WEIGHT = 1.0  # times the IDF of a word in no trained text (1 to 2 score alike)
NGRAM_SIZES = (3, 4, 5)

_NOT_WORD = re.compile(r"[^\w\s]")
# NLTK's English stop words, the same without apostrophes, and words that frame a question rather
# than name its subject, which rewordings change freely (general English, written while reading
# the tuning sets' misses).
FUNCTION_WORDS = frozenset(
    """i me my myself we our ours ourselves you your yours yourself
yourselves he him his himself she her hers herself it its itself they them their theirs themselves
what which who whom this that these those am is are was were be been being have has had having do
does did doing a an the and but if or because as until while of at by for with about against
between into through during before after above below to from up down in out on off over under
again further then once here there when where why how all any both each few more most other some
such no nor not only own same so than too very s t can will just don should now d ll m o re ve y
ain aren couldn didn doesn hadn hasn haven isn ma mightn mustn needn shan shouldn wasn weren won
wouldn would could might ought shall
dont doesnt didnt isnt arent wasnt werent wont cant couldnt shouldnt wouldnt im ive id youre
whats hows thats theres lets
best better good great bad right wrong proper properly correct ok okay fine kind type sort way
ways thing things stuff something anything tip tips idea ideas advice help need needs want like
make makes made get gets got getting go goes going gone take takes took look looks see tell know
mean means possible necessary really actually also still ever always usually generally typically
normally simply even much many lot lots bit please thanks thank hi hello hey someone anyone one
ones explain describe wonder wondering recommend suggest kindly appreciate grateful""".split()
)
# Words that point back into the conversation: such a question depends on the exchanges before it.
REFERRING_WORDS = frozenset("it its they them their that this those these he she him her there".split())
# (suffix, replacement), the first that leaves at least 3 letters applies: "puppies" -> "puppy",
# "leaking" -> "leak", "stopped" -> "stop", "tyres" -> "tyre", "quickly" -> "quick".
_SUFFIXES = (("ies", "y"), ("ied", "y"), ("sses", "ss"), ("ing", ""), ("ed", ""), ("ly", ""), ("s", ""))


def _words(text: str) -> list[str]:
    return _NOT_WORD.sub(" ", text.casefold().replace("\u2019", "'").replace("'", "")).split()


def refers_back(text: str) -> bool:
    """True when `text` has a word such as "it" or "they" that needs the earlier exchanges."""
    return any(word in REFERRING_WORDS for word in _words(text))


def stem(word: str) -> str:
    """`word` without its inflection suffix (a light stripper, not a dictionary)."""
    if word.endswith(("ss", "us", "is")):
        return word
    for suffix, replacement in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            base = word[: -len(suffix)] + replacement
            if suffix in ("ing", "ed") and base[-1] == base[-2] and base[-1] not in "lsz":
                base = base[:-1]  # "stopp" -> "stop", but "fall" and "miss" stay
            return base
    return word


def _content(text: str) -> list[str]:
    return [word for word in _words(text) if word not in FUNCTION_WORDS]


def _word_terms(text: str) -> Counter:
    return Counter(stem(word) for word in _content(text))


def _gram_terms(text: str) -> Counter:
    padded = [f" {word} " for word in _content(text)]
    return Counter(
        word[i : i + size] for word in padded for size in NGRAM_SIZES for i in range(max(1, len(word) - size + 1))
    )


class _Space:
    """One TF-IDF space (sublinear term frequency); each trained question's unit vector is the
    sum of the unit vectors of its texts (question, answer), stored column by column."""

    def __init__(self, texts: list[list[Counter]]) -> None:
        documents = [(row, terms) for row, question in enumerate(texts) for terms in question]
        frequency = Counter(term for _, terms in documents for term in terms)
        self.columns = {term: i for i, term in enumerate(frequency)}
        self.idf = np.array(
            [math.log((1 + len(documents)) / (1 + frequency[term])) + 1 for term in self.columns], dtype=np.float64
        )
        self.unknown = UNKNOWN_WEIGHT * (math.log(1 + len(documents)) + 1)
        self.count = len(texts)
        # one entry per (document, term): its question's row, its column, its weight
        sizes = np.array([len(terms) for _, terms in documents], dtype=np.int64)
        document = np.repeat(np.arange(len(documents)), sizes)
        row = np.repeat(np.array([r for r, _ in documents], dtype=np.int64), sizes)
        column = np.array([self.columns[t] for _, terms in documents for t in terms], dtype=np.int64)
        weight = 1 + np.log(np.array([c for _, terms in documents for c in terms.values()], dtype=np.float64))
        weight *= self.idf[column]
        weight /= np.sqrt(np.bincount(document, weight**2, minlength=len(documents)))[document]
        # sum the unit vectors of a question's texts, then scale each question to norm 1
        cell, index = np.unique(row * len(self.columns) + column, return_inverse=True)
        value = np.bincount(index, weight, minlength=len(cell)).astype(np.float64)
        row, column = cell // max(1, len(self.columns)), cell % max(1, len(self.columns))
        value /= np.sqrt(np.bincount(row, value**2, minlength=self.count))[row]
        order = np.lexsort((row, column))
        self.rows, self.values = row[order], value[order].astype(np.float32)
        self.starts = np.searchsorted(column[order], np.arange(len(self.columns) + 1))

    def _unit(self, terms: Counter, unknown: bool = False) -> dict[int, float]:
        """{column: weight} of `terms` with norm 1; unknown terms count in the norm when asked."""
        weights, missing = {}, 0.0
        for term, count in terms.items():
            column = self.columns.get(term)
            if column is None:
                missing += ((1 + math.log(count)) * self.unknown) ** 2
            else:
                weights[column] = (1 + math.log(count)) * float(self.idf[column])
        norm = math.sqrt(sum(v * v for v in weights.values()) + (missing if unknown else 0.0))
        return {column: value / norm for column, value in weights.items()} if norm else {}

    def cosines(self, terms: Counter) -> np.ndarray:
        """The cosine of `terms` with every trained question."""
        query = self._unit(terms, unknown=True)
        if not query:
            return np.zeros(self.count, dtype=np.float32)
        spans = [(self.starts[c], self.starts[c + 1], w) for c, w in query.items()]
        rows = np.concatenate([self.rows[a:b] for a, b, _ in spans])
        values = np.concatenate([self.values[a:b] * w for a, b, w in spans])
        return np.bincount(rows, weights=values, minlength=self.count).astype(np.float32)


@dataclass(frozen=True)
class QuestionMatch:
    """The trained question found for a new one, how close they are (0-1) and by how much it
    beat the next closest trained question."""

    question: str
    similarity: float
    margin: float = 1.0


class QuestionMatcher:
    """Index trained questions (and, when given, their answers); `match(text)` returns the
    trained question that `text` asks, or None.

    >>> matcher = QuestionMatcher(["How do I fix a flat tyre?", "What is a derailleur?"])
    >>> matcher.match("what does a derailleur do").question
    'What is a derailleur?'

    `threshold` None: DEFAULT_THRESHOLD, or ANSWERS_THRESHOLD with `answers` (one per question);
    a threshold above 1 turns matching off.
    """

    def __init__(
        self,
        questions: Iterable[str],
        threshold: float | None = None,
        *,
        margin: float = DEFAULT_MARGIN,
        answers: Iterable[str] | None = None,
    ) -> None:
        questions = list(questions)
        answers = list(answers) if answers is not None else None
        if answers is not None and len(answers) != len(questions):
            raise ValueError(f"{len(answers)} answers for {len(questions)} questions")
        texts: dict[str, list[str]] = {}  # question -> its answers (a repeated question: all)
        for i, question in enumerate(questions):
            if question.strip():
                texts.setdefault(question, []).extend([answers[i]] if answers else [])
        self.questions = list(texts)
        # A trained question asked again is itself, even one made only of words the cosines leave
        # out ("Hello!"): as typed (any case), or in other case and punctuation where that leaves
        # one trained question ("What is C++?" and "What is C#?" both read "what is c").
        self._typed = {q.casefold().strip(): q for q in reversed(self.questions)}
        loose = Counter(" ".join(_words(q)) for q in self.questions)
        self._loose = {key: q for q in self.questions if (key := " ".join(_words(q))) and loose[key] == 1}
        self.threshold = (ANSWERS_THRESHOLD if answers else DEFAULT_THRESHOLD) if threshold is None else threshold
        self.margin = margin
        self._spaces = [
            (WORD_SHARE, _Space([[_word_terms(q), *map(_word_terms, a)] for q, a in texts.items()])),
            (1 - WORD_SHARE, _Space([[_gram_terms(q), *map(_gram_terms, a)] for q, a in texts.items()])),
        ]

    def scores(self, text: str) -> np.ndarray:
        """The closeness of `text` to each of `self.questions` (0-1)."""
        return sum(
            share * space.cosines(terms(text))
            for (share, space), terms in zip(self._spaces, (_word_terms, _gram_terms), strict=True)
        )

    def match(self, text: str) -> QuestionMatch | None:
        """The trained question closest to `text` when its score reaches the threshold and beats
        the second closest by the margin."""
        if not self.questions or self.threshold > 1:
            return None
        exact = self._typed.get(text.casefold().strip()) or self._loose.get(" ".join(_words(text)))
        if exact is not None:
            return QuestionMatch(exact, 1.0, 1.0)
        scores = self.scores(text)
        best = int(np.argmax(scores))
        second = float(np.partition(scores, -2)[-2]) if len(scores) > 1 else 0.0
        similarity, margin = float(scores[best]), float(scores[best]) - second
        if similarity <= 0 or similarity < self.threshold or margin < self.margin:
            return None
        return QuestionMatch(self.questions[best], round(similarity, 4), round(margin, 4))
