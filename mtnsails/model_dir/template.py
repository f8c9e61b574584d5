"""The chat template: how a conversation becomes training text and how chat builds its prompt.

Training and chat must build token sequences the same way, or the model sees at chat time
a prompt it never saw in training. Both therefore go through a template's `segments`, which
splits a conversation into pieces marked prompt or response; callers tokenize each piece and
append the EOS token id after every response that asks for it (EOS is added as an id, never as
text, so any tokenizer works). `ChatTemplate` is mtnsails' own text format ("User: ...
Assistant: ..."); a model's Jinja chat template is `mtnsails.model_dir.jinja_template`'s
`JinjaTemplate`, which yields the same kind of segments. This module imports nothing heavy: chat
uses it without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

DEFAULT_TEMPLATE = "User: {input}\nAssistant: {output}"


def exchanges(conversation: dict) -> list[tuple[str, str]]:
    """A native conversation's (input, output) exchanges in order, the final one last (a
    missing field reads as empty: the quality rules report it instead of failing)."""
    return [
        (turn.get("input", ""), turn.get("output", "")) for turn in (conversation.get("history") or []) + [conversation]
    ]


@dataclass(frozen=True)
class Segment:
    """A piece of a conversation's text; `is_response` pieces are learned unless `learned` is
    False (an answer that is only context, as in augmented history), and end in EOS unless `eos`
    is False (the text ends in the template's own end-of-turn token)."""

    text: str
    is_response: bool
    learned: bool = True
    eos: bool = True


def segment_ids(
    encode: Callable[[str], list[int]], segments: Iterable[Segment], eos_id: int | None
) -> Iterator[tuple[Segment, list[int]]]:
    """Yield each segment with its token ids: `encode(text)` of the segment alone, plus `eos_id`
    after every response with `eos`. Training (collator) and chat both build token ids with this rule."""
    for segment in segments:
        ids = list(encode(segment.text))
        if segment.is_response and segment.eos and eos_id is not None:
            ids.append(eos_id)
        yield segment, ids


@dataclass(frozen=True)
class ChatTemplate:
    """`template` holds `{input}` once and ends with `{output}`; `separator` joins exchanges.

    The part before `{output}` is the prompt. Trailing spaces of the prompt move to the start of
    the response, so "Assistant: Hi" trains as "Assistant:" + " Hi": a byte-level BPE tokenizer
    then sees " Hi" as one token in training and generates it after "Assistant:" at chat time.
    """

    template: str = DEFAULT_TEMPLATE
    separator: str = "\n"

    def __post_init__(self) -> None:
        if self.template.count("{input}") != 1 or not self.template.endswith("{output}"):
            raise ValueError(f"chat template {self.template!r} must contain '{{input}}' once and end with '{{output}}'")

    @property
    def _prompt_format(self) -> str:
        return self.template[: -len("{output}")]

    def prompt_text(self, user_input: str) -> str:
        """The prompt for one exchange, without the trailing space before the answer."""
        return self._prompt_format.replace("{input}", user_input).rstrip(" ")

    def response_text(self, output: str) -> str:
        prompt = self._prompt_format
        return prompt[len(prompt.rstrip(" ")) :] + output

    @property
    def user_marker(self) -> str:
        """Text that opens a new user turn ("User:"); generation stops when the model writes it."""
        return self._prompt_format.split("{input}")[0].strip()

    @property
    def stop_texts(self) -> tuple[str, ...]:
        """Texts that end an answer where the model writes them: the user marker."""
        return (self.user_marker,)

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        """Tokens (by their text) whose ids end an answer: none besides EOS for this format."""
        return ()

    def segments(self, exchanges: list[tuple[str, str]], system: str | None = None) -> Iterator[Segment]:
        """Yield the segments of a conversation given as (input, output) exchanges in order.

        An exchange whose output is None is the open turn of a chat prompt: only its prompt is
        yielded, so the model continues with the answer.
        """
        if system:
            yield Segment(system + self.separator, False)
        for index, (user_input, output) in enumerate(exchanges):
            separator = self.separator if index else ""
            yield Segment(separator + self.prompt_text(user_input), False)
            if output is not None:
                yield Segment(self.response_text(output), True)

    def render(self, exchanges: list[tuple[str, str]], system: str | None = None) -> str:
        """Plain text of a conversation (the original `format_for_training` text, no EOS)."""
        return "".join(segment.text for segment in self.segments(exchanges, system))

    def to_dict(self) -> dict:
        return {"template": self.template, "separator": self.separator}

    @classmethod
    def from_dict(cls, data: dict | None) -> ChatTemplate:
        data = data or {}
        return cls(
            template=data.get("template", DEFAULT_TEMPLATE),
            separator=data.get("separator", "\n"),
        )
