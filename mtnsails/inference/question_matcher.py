"""`QuestionMatcher`: find the trained question that a new question asks in other words.

A small model answers the questions it was trained on, in the words it was trained on; asked
"sink tap keeps leaking" instead of "How do I fix a dripping kitchen faucet?" it answers
something else. So chat asks the model the closest trained question when the new one is close
enough: the answer still comes from the model, the question is put the way the model learned it.

Closeness (docs/question-matching.md has the figures): the cosine of two sentence vectors from
WordLlama, a static embedding distilled from a large language model's token embeddings (the
`wordllama` package ships its 256-wide model, 16 MB, so nothing is downloaded). It knows general
English: "tap" is near "faucet", "notebook" near "laptop", which no word overlap can see.

- A trained question's score is `QUESTION_SHARE` times the cosine with the question plus the rest
  times the cosine with its answer(s), when the answers are known (the answer names the subject
  again, often in other words); with the questions alone, the cosine with the question.
- A message of several sentences is also scored by its first question sentence alone, and the
  higher score counts: context around a question ("It happens mostly in the evening.") dilutes
  its vector.

Decision: a trained question asked again (any case, any punctuation) is itself; a question of
nothing but words that frame a question ("How do I?", "Hello there") matches nothing; otherwise
the best trained question is taken when its score reaches the threshold AND beats the second
best by the margin, and the question is asked as typed when not. A question that changes only
the subject ("Why is my laptop fan so loud?" for "Why is my bathroom fan so loud?") can still be
taken: a near miss scores like a rewording.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtnsails.core.errors import MtnsailsError

# Chosen with bench/matcher_bench.py on its tuning and development sets (bicycle, houseplant,
# cooking; repair, finance, pets: 120 rewordings, each set's near misses and the trained questions
# of the other sets as other topics): the most rewordings asked right with at most 3 % of the
# other-topic questions swapped and at most 3 wrong swaps in 120. The held-out sets chose
# nothing. Figures: docs/question-matching.md.
DEFAULT_THRESHOLD = 0.44  # trained questions only (models trained before answers were recorded)
DEFAULT_MARGIN = 0.10
ANSWERS_THRESHOLD = 0.38  # questions with their answers, as chat builds it for a model trained now
ANSWERS_MARGIN = 0.07
QUESTION_SHARE = 0.7  # cosine with the question vs with its answers (0.5 to 0.8 alike)

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


def _words(text: str) -> list[str]:
    return _NOT_WORD.sub(" ", text.casefold().replace("\u2019", "'").replace("'", "")).split()


def refers_back(text: str) -> bool:
    """True when `text` has a word such as "it" or "they" that needs the earlier exchanges."""
    return any(word in REFERRING_WORDS for word in _words(text))


def _content(text: str) -> list[str]:
    return [word for word in _words(text) if word not in FUNCTION_WORDS]


_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


def question_sentence(text: str) -> str | None:
    """The first sentence of `text` that ends in "?", when `text` has other sentences too."""
    sentences = [part for part in _SENTENCE_END.split(text.strip()) if part]
    return next((part for part in sentences if part.endswith("?")), None) if len(sentences) > 1 else None


@functools.lru_cache(maxsize=1)
def sentence_embedder():
    """WordLlama's 256-wide model from the files its package ships (loaded once, no download)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import wordllama
        from wordllama import WordLlama
    except ImportError as error:
        raise MtnsailsError(f"question matching needs the wordllama package ({error}): pip install wordllama") from None
    finally:  # its import calls logging.basicConfig(level=INFO): every library's INFO lines would print
        root.handlers[:], root.level = handlers, level
    try:
        # The package keeps its tokenizer under <cache_dir>/tokenizers: its own folder holds one.
        return WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
    except (OSError, ValueError) as error:
        raise MtnsailsError(f"question matching: wordllama's shipped model cannot be loaded ({error})") from None


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (a zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def embed(texts: list[str]) -> np.ndarray:
    """Unit sentence vectors [len(texts), 256] (a text with no tokens: zeros)."""
    if not texts:
        return np.zeros((0, 256), dtype=np.float32)
    return _unit_rows(np.asarray(sentence_embedder().embed(texts), dtype=np.float32))


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

    `threshold` and `margin` None: DEFAULT_THRESHOLD and DEFAULT_MARGIN, or ANSWERS_THRESHOLD and
    ANSWERS_MARGIN with `answers` (one per question); a threshold above 1 turns matching off.
    """

    def __init__(
        self,
        questions: Iterable[str],
        threshold: float | None = None,
        *,
        margin: float | None = None,
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
        # A trained question asked again is itself, even one made only of words that frame a
        # question ("Hello!"): as typed (any case), or in other case and punctuation where that
        # leaves one trained question ("What is C++?" and "What is C#?" both read "what is c").
        self._typed = {q.casefold().strip(): q for q in reversed(self.questions)}
        loose: dict[str, list[str]] = {}
        for q in self.questions:
            loose.setdefault(" ".join(_words(q)), []).append(q)
        self._loose = {key: found[0] for key, found in loose.items() if key and len(found) == 1}
        self._alike = {key for key, found in loose.items() if len(found) > 1}  # too alike to pick one
        self.threshold = (ANSWERS_THRESHOLD if answers else DEFAULT_THRESHOLD) if threshold is None else threshold
        self.margin = (ANSWERS_MARGIN if answers else DEFAULT_MARGIN) if margin is None else margin
        self._question_vectors = embed(self.questions)
        self._answer_vectors = None
        if answers:
            # a question trained with several answers: the direction of the mean of their vectors
            owner = np.repeat(np.arange(len(texts)), [len(found) for found in texts.values()])
            sums = np.zeros((len(texts), self._question_vectors.shape[1]), dtype=np.float32)
            np.add.at(sums, owner, embed([answer for found in texts.values() for answer in found]))
            self._answer_vectors = _unit_rows(sums)

    def _cosines(self, text: str) -> np.ndarray:
        vector = embed([text])[0]
        scores = self._question_vectors @ vector
        if self._answer_vectors is not None:
            scores = QUESTION_SHARE * scores + (1 - QUESTION_SHARE) * (self._answer_vectors @ vector)
        return scores

    def scores(self, text: str) -> np.ndarray:
        """The closeness of `text` to each of `self.questions` (-1 to 1; 0 for a question of
        nothing but words that frame a question)."""
        if not self.questions or not _content(text):
            return np.zeros(len(self.questions), dtype=np.float32)
        scores = self._cosines(text)
        part = question_sentence(text)
        return np.maximum(scores, self._cosines(part)) if part and _content(part) else scores

    def match(self, text: str) -> QuestionMatch | None:
        """The trained question closest to `text` when its score reaches the threshold and beats
        the second closest by the margin."""
        if not self.questions or self.threshold > 1:
            return None
        loose = " ".join(_words(text))
        exact = self._typed.get(text.casefold().strip()) or self._loose.get(loose)
        if exact is not None:
            return QuestionMatch(exact, 1.0, 1.0)
        if loose in self._alike:
            return None
        scores = self.scores(text)
        best = int(np.argmax(scores))
        second = float(np.partition(scores, -2)[-2]) if len(scores) > 1 else 0.0
        similarity, margin = float(scores[best]), float(scores[best]) - second
        if similarity <= 0 or similarity < self.threshold or margin < self.margin:
            return None
        return QuestionMatch(self.questions[best], round(similarity, 4), round(margin, 4))
