"""Training examples that vary each epoch, so a small model answers the way people actually ask.

A model trained only on each conversation as it is answers a question asked alone, in a fresh
chat, in the words it was taught. Each time training uses a conversation (once per epoch), it may
instead get it

- **after other exchanges**: preceded by a few exchanges drawn from the rest of the data as
  history, as a chat session puts earlier exchanges in the prompt. The drawn exchanges are
  context only (masked, never learned), so the model learns to answer the newest question
  whatever came before it, at the positions a real session puts it;
- **reworded**: with its last question reworded by general English rules (case, punctuation,
  contractions, "How do I"/"How can I"/..., question openings, dropped words, a small packaged
  synonym list), so the model keys on what is asked, not on exact words;

or both. Only the final answer of a varied example is learned; unvaried examples train as they
are, multi-turn conversations included. A varied example keeps the conversation's system prompt
half the time, so the answers do not hang on its exact text. The variants are drawn anew every
epoch (from the seed: a run is reproducible), so training sees many different contexts in as
many steps as the conversations alone.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

from mtnsails.core.errors import MtnsailsError
from mtnsails.core.settings import flag_of, setting
from mtnsails.model_dir.template import ChatTemplate, Segment, exchanges


@dataclass
class AugmentConfig:
    """Which share of the training examples is varied each epoch (0 switches a kind off).

    Off by default: on the embedded model the varied examples slow its learning more than they
    help (docs/training.md, "Answers that hold up in a chat")."""

    enabled: bool = setting(
        False,
        "vary the training examples each epoch: some after exchanges drawn from the data as history, some reworded",
        flag="--augment",
    )
    history_share: float = setting(
        0.5, "share of examples asked after exchanges drawn from the data as history", flag="--augment-history"
    )
    max_history: int = setting(
        4, "drawn exchanges before such an example: 1 to this many", flag="--augment-max-history"
    )
    reworded_share: float = setting(0.3, "share of examples whose last question is reworded", flag="--augment-reworded")

    def validate(self) -> None:
        """Raise `MtnsailsError` naming the first setting that is out of range."""
        for name in ("history_share", "reworded_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise MtnsailsError(f"{_flag(name)} must be in [0, 1], got {getattr(self, name)}")
        if self.max_history < 1:
            raise MtnsailsError(f"{_flag('max_history')} must be at least 1, got {self.max_history}")

    @property
    def active(self) -> bool:
        return self.enabled and (self.history_share > 0 or self.reworded_share > 0)


def _flag(name: str) -> str:
    """The `train` flag of an AugmentConfig field (errors name it, as TrainingConfig's do)."""
    return flag_of(next(field for field in fields(AugmentConfig) if field.name == name))


class ConversationAugmenter:
    """The training examples of conversations, drawn anew each time one is used (each epoch).

    A map-style dataset: `augmenter[i]` is conversation i as it is, after drawn history, reworded,
    or both, by the shares of `config`; its n-th use draws from a generator seeded by
    (seed, i, n), so a run is reproducible and each epoch sees other variants in as many steps
    as the originals alone. `encode` (e.g. the collator's `encode_segments`) turns the segments
    into what the data loader needs; without it items are segment lists.

    >>> examples = ConversationAugmenter(conversations, ChatTemplate(), AugmentConfig(), seed=42)
    >>> examples.variant(0, 3)          # conversation 0 at its 4th use (segments)
    """

    def __init__(
        self,
        conversations: list[dict],
        template: ChatTemplate,
        config: AugmentConfig | None = None,
        seed: int = 42,
        encode: Callable[[list[Segment]], object] | None = None,
    ) -> None:
        self.conversations = conversations
        self.template = template
        self.config = config or AugmentConfig()
        self.seed = seed
        self.encode = encode
        self.turns = [exchanges(conversation) for conversation in conversations]
        self.pool = [pair for turns in self.turns for pair in turns]
        self.uses = [0] * len(conversations)

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int):
        use, self.uses[index] = self.uses[index], self.uses[index] + 1
        segments = self.variant(index, use)
        return self.encode(segments) if self.encode else segments

    def variant(self, index: int, use: int) -> list[Segment]:
        """Conversation `index` at its `use`-th use: the same for the same seed, index and use."""
        conversation, turns = self.conversations[index], list(self.turns[index])
        if not self.config.enabled:
            return list(self.template.segments(turns, conversation.get("system")))
        rng = random.Random(f"{self.seed}:{index}:{use}")
        varied = False
        if rng.random() < self.config.reworded_share:
            turns[-1] = (reword(turns[-1][0], rng), turns[-1][1])
            varied = True
        if rng.random() < self.config.history_share:
            drawn = self._draw(turns[-1][0], rng.randint(1, self.config.max_history), rng)
            turns = [*drawn, *turns]
            varied = varied or bool(drawn)
        if not varied:
            return list(self.template.segments(turns, conversation.get("system")))
        return _learn_last(self.template, turns, _system(conversation, rng))

    def _draw(self, question: str, count: int, rng: random.Random) -> list[tuple[str, str]]:
        """Up to `count` exchanges of the data other than `question`'s, in random order."""
        picked = rng.sample(range(len(self.pool)), min(len(self.pool), count + 1))
        return [self.pool[i] for i in picked if self.pool[i][0] != question][:count]


def _system(conversation: dict, rng: random.Random) -> str | None:
    """The conversation's system prompt for a varied example, half the time: a model that saw
    its answers with and without it does not fail when chat is given another system prompt or none."""
    return conversation.get("system") if rng.random() < 0.5 else None


def _learn_last(template: ChatTemplate, turns: list[tuple[str, str]], system: str | None) -> list[Segment]:
    """Segments of `turns` where every answer but the last is context (masked, EOS kept)."""
    segments = list(template.segments(turns, system))
    last = max(index for index, segment in enumerate(segments) if segment.is_response)
    return [
        replace(segment, learned=False) if segment.is_response and index != last else segment
        for index, segment in enumerate(segments)
    ]


# -- rewording rules ------------------------------------------------------------------------------

CONTRACTIONS = {
    "what is": "what's",
    "how is": "how's",
    "where is": "where's",
    "who is": "who's",
    "it is": "it's",
    "do not": "don't",
    "does not": "doesn't",
    "is not": "isn't",
    "can not": "can't",
    "cannot": "can't",
    "i am": "i'm",
    "that is": "that's",
    "should not": "shouldn't",
    "are not": "aren't",
    "i have": "i've",
}
# Openings of a how-to question that mean the same; the rest of the question follows unchanged.
HOW_TO = (
    "how do i",
    "how can i",
    "how should i",
    "what's the way to",
    "what is the best way to",
    "how to",
    "how would i",
    "how do you",
    "what's the best way to",
)
# Words a person often leaves out or adds without changing the question.
FILLER = {
    "the",
    "a",
    "an",
    "my",
    "your",
    "do",
    "does",
    "i",
    "you",
    "is",
    "are",
    "please",
    "to",
    "of",
    "for",
    "really",
    "actually",
    "exactly",
    "just",
}
QUESTION_WORDS = {
    "how",
    "what",
    "what's",
    "why",
    "when",
    "where",
    "which",
    "who",
    "can",
    "should",
    "could",
    "would",
    "will",
    "need",
}
OPENERS = ("", "", "", "please ", "can you tell me ", "tell me ", "quick question: ", "so ", "hey, ", "i wonder ")


def packaged_synonyms() -> list[tuple[str, ...]]:
    """Groups of interchangeable everyday words shipped with mtnsails (one group per line)."""
    # Beside this file, like the corpus: resources.files() breaks under some editable installs.
    text = (Path(__file__).resolve().parent / "resources" / "synonyms.txt").read_text("utf-8")
    return [
        tuple(word.strip() for word in line.split(","))
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    ]


@functools.lru_cache(maxsize=1)
def _synonym_index() -> dict[str, tuple[str, ...]]:
    """Each packaged synonym and the group it belongs to (read once)."""
    return {word: group for group in packaged_synonyms() for word in group}


def _swap_synonyms(text: str, rng: random.Random) -> str:
    synonyms = _synonym_index()
    words = text.split(" ")
    for index, word in enumerate(words):
        core = word.strip("?!.,").lower()
        if core in synonyms and rng.random() < 0.6:
            choice = rng.choice([other for other in synonyms[core] if other != core] or [core])
            words[index] = word.lower().replace(core, choice)
    return " ".join(words)


def _contract(text: str, rng: random.Random) -> str:
    pairs = list(CONTRACTIONS.items())
    rng.shuffle(pairs)
    for long, short in pairs:
        if re.search(rf"\b{long}\b", text):
            return re.sub(rf"\b{long}\b", short, text, count=1)
        if re.search(rf"\b{re.escape(short)}\b", text):
            return re.sub(rf"\b{re.escape(short)}\b", long, text, count=1)
    return text


def _how_to(text: str, rng: random.Random) -> str:
    for opening in sorted(HOW_TO, key=len, reverse=True):
        if text.lower().startswith(opening + " "):
            return rng.choice([other for other in HOW_TO if other != opening]) + text[len(opening) :]
    return text


def _what_is(text: str, rng: random.Random) -> str:
    match = re.fullmatch(r"(what is|what's|what are) (an? |the )?(.+?)\??", text, re.IGNORECASE)
    if match is None:
        return text
    subject = match.group(3)
    return rng.choice(
        [
            f"what does {subject} mean",
            f"explain {subject}",
            f"define {subject}",
            f"tell me about {subject}",
            f"{subject}?",
            f"what's {subject}",
        ]
    )


def _drop_filler(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    kept = [word for word in words if word.strip("?,.").lower() not in FILLER or rng.random() < 0.5]
    return " ".join(kept) if kept else text


def _drop_word(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    if len(words) < 4:
        return text
    del words[rng.randrange(len(words))]
    return " ".join(words)


def _keywords(text: str, rng: random.Random) -> str:
    """Only the words that carry the meaning, as in a search box ("clean bike chain")."""
    kept = [word for word in text.split(" ") if word.strip("?,.").lower() not in FILLER | QUESTION_WORDS]
    return " ".join(kept) if len(kept) >= 2 else text


def _swap_neighbours(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    if len(words) < 3:
        return text
    index = rng.randrange(len(words) - 1)
    words[index], words[index + 1] = words[index + 1], words[index]
    return " ".join(words)


def _opener(text: str, rng: random.Random) -> str:
    return rng.choice(OPENERS) + text


RULES = (_contract, _how_to, _what_is, _swap_synonyms, _drop_filler, _drop_word, _keywords, _swap_neighbours, _opener)


def reword(question: str, rng: random.Random) -> str:
    """A rewording of `question` by two or three general rules, drawn from `rng`.

    The result is lower case half the time, and ends with "?", nothing or "." at random, as
    people type.
    """
    text = question.strip().rstrip("?.! ")
    text = text[:1].lower() + text[1:]  # the rules match lower-case openings
    for rule in rng.sample(RULES, rng.randint(2, 3)):
        text = rule(text, rng).strip().rstrip("?")
    text = text or question
    if rng.random() < 0.5:
        text = text[:1].upper() + text[1:]
    else:
        text = text.lower()
    return text + rng.choice(("?", "?", "", "."))
