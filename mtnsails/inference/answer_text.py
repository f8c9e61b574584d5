"""An answer's text as its tokens arrive: decoded, cut at a stop text, streamed safely.

Chat and `serve` decode answers the same way: the model's EOS ends the answer (any EOS id of its
generation config, and a chat template's end-of-turn token such as <|im_end|>), so does any stop
text it writes (the template's user marker, "User:": the model started the next turn itself),
and streamed pieces never show text a later token could still change: an incomplete multi-byte
character, trailing whitespace (the answer is stripped) or the start of a stop text. An empty
reasoning block that opens the answer (`<think>\n\n</think>`: Qwen3's template writes one into
every trained answer without reasoning) is no part of it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from tokenizers.decoders import DecodeStream

from mtnsails.core.text_rules import SENTENCE_END_IN_TEXT

if TYPE_CHECKING:
    from tokenizers import Tokenizer


def trim_dangling_sentence(text: str) -> str:
    """Cut text after its last complete sentence; text without any sentence end stays as it is."""
    ends = [match.end() for match in SENTENCE_END_IN_TEXT.finditer(text)]
    return text[: ends[-1]] if ends else text


def one_line(text: str) -> str:
    """The answer on one line, for output read line by line (piped chat): every line break that
    `str.splitlines` knows (\\r, \\x1c-\\x1e, \\x85, \\u2028 ...) becomes a space, not just \\n."""
    return " ".join(text.splitlines())


REASONING = ("<think>", "</think>")  # what opens and closes a reasoning block (Qwen3)


def without_empty_reasoning(text: str) -> tuple[str, bool]:
    """`text`, its start stripped, without an empty reasoning block that opens it; and whether
    more text could still make its start such a block (then "" is returned: hold it back)."""
    opening, closing = REASONING
    text = text.lstrip()
    if text and opening.startswith(text):
        return "", True
    if not text.startswith(opening):
        return text, False
    rest = text[len(opening) :].lstrip()
    if closing.startswith(rest) and rest != closing:
        return "", True
    return (rest[len(closing) :].lstrip(), False) if rest.startswith(closing) else (text, False)


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters streaming must hold: a possible start of a stop text,
    an incomplete multi-byte character (U+FFFD) or whitespace (the answer is stripped)."""
    size = max(
        (size for stop in stops for size in range(min(len(stop), len(text)), 0, -1) if text.endswith(stop[:size])),
        default=0,
    )
    if size:
        return size + held_back(text[:-size], ())
    stripped = text.rstrip().rstrip("\ufffd")
    return len(text) - len(stripped)


class AnswerText:
    """The text of one answer, fed token by token (`add`) until `stop_reason` is set.

    >>> answer = AnswerText(tokenizer, ["User:"], eos_token_id=0)   # doctest: +SKIP
    >>> for token in tokens:
    ...     print(answer.add(token), end="")      # the new text that is safe to show
    ...     if answer.stop_reason:
    ...         break
    >>> answer.finish()                           # the whole answer, stripped
    """

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str], eos_token_id: int | Collection[int] | None) -> None:
        """`stops`: texts that end the answer where the model writes them (not part of it);
        `eos_token_id`: the id, or ids, that end it (not part of it either)."""
        self.tokenizer = tokenizer
        self.stops = [stop for stop in stops if stop]
        self.eos_token_id = eos_token_id
        self.end_ids = frozenset(eos_token_id) if isinstance(eos_token_id, Collection) else {eos_token_id}
        self.ids: list[int] = []  # the answer's tokens (not the one that ended it)
        self.text = ""
        self.streamed = 0  # characters of the stripped answer handed out by `add`
        self.stop_reason: str | None = None  # "eos", "stop" (a stop text) or None (still going)
        self.stop_text: str | None = None  # the stop text that ended the answer
        self._stream: DecodeStream | None = DecodeStream(skip_special_tokens=False)
        self._stream_text = ""  # what the stream decoder has given so far

    def add(self, token: int) -> str:
        """Take the answer's next token; return the text that became safe to show ("" if none)."""
        if token in self.end_ids:
            self.stop_reason = "eos"
            return ""
        self.ids.append(token)
        searched = len(self.text.rstrip("\ufffd"))  # an incomplete character's U+FFFD may still change
        self.text = self._decoded(token)
        # Only the new end can hold a stop text: the text before it was searched already.
        cuts = [(cut, stop) for stop in self.stops if (cut := self.text.find(stop, max(0, searched - len(stop)))) >= 0]
        if cuts:
            cut, self.stop_text = min(cuts)
            self.text, self.stop_reason = self.text[:cut], "stop"
            return ""
        visible, undecided = without_empty_reasoning(self.text)
        if undecided:
            return ""
        safe = len(visible) - held_back(visible, self.stops)
        if safe <= self.streamed:
            return ""
        piece, self.streamed = visible[self.streamed : safe], safe
        return piece

    def _decoded(self, token: int) -> str:
        """The answer's whole text with `token` added, as decoding all its tokens gives it.

        The tokenizer's stream decoder adds each token's text (decoding every token again would
        cost more with every token of the answer). It holds a character back until
        its last byte has come; meanwhile (and from then on for a tokenizer whose stream decoder
        refuses a token) the tokens are decoded whole, an unfinished character showing as U+FFFD.
        """
        if self._stream is not None:
            try:
                piece = self._stream.step(self.tokenizer, token)
            except Exception:  # tokenizers raises its own errors for prefixes it cannot follow
                self._stream = None
            else:
                if piece is not None:
                    self._stream_text += piece
                    return self._stream_text
        return self.tokenizer.decode(self.ids, skip_special_tokens=False)

    def finish(self, trim: bool = False) -> str:
        """The whole answer, stripped; `trim` cuts a sentence left unfinished (use it when the
        token limit, not the model, ended the answer)."""
        text = self.text.replace("\ufffd", "")
        shown, undecided = without_empty_reasoning(text)
        text = text.strip() if undecided else shown.strip()
        return trim_dangling_sentence(text) if trim else text
