"""A model's own chat template (Jinja), rendered as transformers renders it, without torch.

Instruct models (Qwen2.5, SmolLM2, Llama 3, Gemma, Phi-3) carry a Jinja chat template in their
tokenizer, and transformers, llama.cpp and Ollama prompt them through it. `JinjaTemplate`
renders it the same way (`jinja_render`) and cuts a rendered conversation into the same
`Segment`s as `ChatTemplate`, so that training and chat build identical token ids through
`segment_ids`:

- A prompt segment is what the template adds up to and including a turn's generation prompt
  (rendered with `add_generation_prompt=True`). A response segment is what the answered turn adds
  after that, up to and including the template's end-of-turn token: learned, and with no EOS id
  after it (the end-of-turn token is the stop). What follows the end-of-turn token (a newline)
  opens the next prompt segment; after the last answer it is dropped.
- A template that writes an earlier answer differently once later turns follow (Qwen3 strips
  reasoning from history) cannot be cut turn by turn: the conversation up to the last answer is
  then one prompt segment, and only the last answer is learned.
- A template without a system role (Gemma 2's refuses one) gets the system prompt at the start of
  the first user message, a blank line after it, where Gemma 3's own template puts it.
- A template that writes the system prompt into the last user message only (Mistral v0.3's)
  drops it from a conversation that ends in an answer: the answer's text is then what the
  template writes after the same prompt without the system prompt, and the prompt learned from
  is the one chat builds (the system prompt in the last question; only the last answer learned).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from mtnsails.core.errors import MtnsailsError, first_line
from mtnsails.core.files import read_json_object
from mtnsails.model_dir.jinja_render import TemplateRefused, compile_template, render_messages
from mtnsails.model_dir.template import ChatTemplate, Segment

# The classic ChatML template (what many hub models carry): `train --chat-template chatml`.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
BUILT_IN = {"chatml": CHATML}
# The tokenizer attributes transformers hands a template (its `special_tokens_map`).
SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
    "additional_special_tokens",
)
# Texts the probes render, so that what the template writes around them can be told apart.
PROBE_SYSTEM = "mtnsails-probe-system"
PROBE_QUESTION = "mtnsails-probe-question"
PROBE_ANSWER = "mtnsails-probe-answer"
MARKER = re.compile(r"<[^<>\s]+>")  # <|im_start|>, <start_of_turn>, </s>: a template's marker tokens


def _first_token(text: str, tokens: Iterable[str]) -> str:
    """The token of `tokens` that occurs first in `text` (the longest where several start there)."""
    found = [(text.find(token), -len(token), token) for token in tokens if token and token in text]
    return min(found)[2] if found else ""


def find_end_of_turn(source: str, special_tokens: Mapping[str, object], added_tokens: Iterable[str]) -> str:
    """The token that ends an assistant turn: the first of the tokenizer's added tokens that the
    template writes after an answer ("" when it writes none)."""
    messages = [{"role": "user", "content": PROBE_QUESTION}, {"role": "assistant", "content": PROBE_ANSWER}]
    try:
        text = render_messages(source, messages, False, special_tokens)
    except TemplateRefused:
        return ""
    start = text.find(PROBE_ANSWER)
    return _first_token(text[start + len(PROBE_ANSWER) :], added_tokens) if start >= 0 else ""


def _one_template(value: object) -> str | None:
    """A tokenizer's chat template: a string, or the "default" of named ones (a dict, or the
    list of {"name", "template"} that tokenizer_config.json holds)."""
    if isinstance(value, list):
        value = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
    if isinstance(value, dict):
        value = value.get("default")
    return value if isinstance(value, str) and value.strip() else None


class _HistoryRewritten(Exception):
    """A later rendering does not start with the earlier one: the template rewrites history."""


@dataclass(frozen=True)
class JinjaTemplate:
    """A Jinja chat template, the special tokens it is rendered with (`bos_token`, ... as
    transformers passes them) and its end-of-turn token ("": none; answers then end in EOS as
    in `ChatTemplate`). It offers what `ChatTemplate` offers: `segments`, `render`,
    `prompt_text`, `stop_texts`, `stop_tokens`, `to_dict`.

    >>> template = JinjaTemplate(CHATML, end_of_turn="<|im_end|>")
    >>> template.render([("Hi", "Hello!")])
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>'
    """

    source: str
    special_tokens: Mapping[str, object] = field(default_factory=dict)
    end_of_turn: str = ""

    def __post_init__(self) -> None:
        compile_template(self.source)  # a template that is not Jinja is refused at once

    def __hash__(self) -> int:  # the special tokens are a dict: hash by what decides the rest
        return hash((self.source, self.end_of_turn))

    # -- rendering -----------------------------------------------------------------------------

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return render_messages(self.source, messages, add_generation_prompt, self.special_tokens)

    @cached_property
    def system_role(self) -> bool:
        """Whether the template takes a system message (it writes it somewhere, and does not refuse it)."""
        probe = [{"role": "system", "content": PROBE_SYSTEM}, {"role": "user", "content": PROBE_QUESTION}]
        try:
            return PROBE_SYSTEM in self._render(probe, True)
        except TemplateRefused:
            return False

    def messages(self, exchanges: list[tuple[str, str | None]], system: str | None = None) -> list[dict]:
        """The conversation as the template's messages: the system prompt (if any), then user and
        assistant messages in turn; an exchange whose answer is None has only its user message."""
        result = []
        for question, answer in exchanges:
            result.append({"role": "user", "content": question})
            if answer is not None:
                result.append({"role": "assistant", "content": answer})
        if system:
            if self.system_role:
                result.insert(0, {"role": "system", "content": system})
            elif result:
                result[0] = {"role": "user", "content": f"{system}\n\n{result[0]['content']}"}
        return result

    # -- segments ------------------------------------------------------------------------------

    def segments(self, exchanges: list[tuple[str, str | None]], system: str | None = None) -> Iterator[Segment]:
        """Yield the segments of a conversation given as (input, output) exchanges in order (see
        the module's docstring). An exchange whose output is None is the open turn of a chat
        prompt: its prompt, the generation prompt included, ends the segments."""
        exchanges = list(exchanges)
        if not exchanges:
            yield from self._system_segment(system)
            return
        try:
            pieces = self._turn_by_turn(exchanges, system)
        except _HistoryRewritten:
            pieces = self._last_turn_only(exchanges, system)
        yield from pieces

    def _system_segment(self, system: str | None) -> list[Segment]:
        """The system prompt as it opens a conversation (for its length: chat checks it fits)."""
        if not system or not self.system_role:
            return []
        try:
            return [Segment(self._render([{"role": "system", "content": system}], False), False)]
        except TemplateRefused:  # a template that wants a user message after it
            return []

    def _turn_by_turn(self, exchanges: list[tuple[str, str | None]], system: str | None) -> list[Segment]:
        messages = self.messages(exchanges, system)
        opening = len(messages) - sum(1 if answer is None else 2 for _, answer in exchanges)  # the system message
        pieces: list[Segment] = []
        done = ""  # the text the pieces so far hold
        for index, (_, answer) in enumerate(exchanges):
            user_end = opening + 2 * index + 1
            prompt = self._render(messages[:user_end], True)
            if not prompt.startswith(done):
                raise _HistoryRewritten
            pieces.append(Segment(prompt[len(done) :], False))
            if answer is None:
                break
            learned, eos = self._answer(messages[: user_end + 1], prompt, answer)
            pieces.append(Segment(learned, True, eos=eos))
            done = prompt + learned
        return pieces

    def _last_turn_only(self, exchanges: list[tuple[str, str | None]], system: str | None) -> list[Segment]:
        messages = self.messages(exchanges, system)
        answer = exchanges[-1][1]
        if answer is None:
            return [Segment(self._render(messages, True), False)]
        prompt = self._render(messages[:-1], True)
        learned, eos = self._answer(messages, prompt, answer)
        return [Segment(prompt, False), Segment(learned, True, eos=eos)]

    def _answer(self, messages: list[dict], prompt: str, answer: str) -> tuple[str, bool]:
        """The learned text of the answered turn `messages` ends with, whose generation prompt
        rendered as `prompt`: up to and including the end-of-turn token, and whether EOS must
        follow it (only where the template writes no end-of-turn token)."""
        full = self._render(messages, False)
        if not full.startswith(prompt) and messages[0]["role"] == "system":
            # Mistral's writes the system prompt into the last user message only: once that is
            # answered, the system prompt is gone. The answer reads the same without it.
            prompt, full = self._render(messages[1:-1], True), self._render(messages[1:], False)
        if not full.startswith(prompt):
            raise MtnsailsError(
                "the chat template does not write an answer after its generation prompt "
                "(add_generation_prompt=True renders differently): mtnsails cannot tell what to learn"
            )
        text = full[len(prompt) :]
        content = answer.strip()
        found = text.find(content) if content else -1
        end = found + len(content) if found >= 0 else 0
        if self.end_of_turn:
            at = text.find(self.end_of_turn, end)
            if at >= 0:
                return text[: at + len(self.end_of_turn)], False
        return text.rstrip(), True

    @cached_property
    def rewrites_history(self) -> bool:
        """True when the template writes an earlier answer differently once a later turn follows
        (then only the last answer of a conversation is learned)."""
        try:
            self._turn_by_turn([(PROBE_QUESTION, PROBE_ANSWER), (PROBE_QUESTION, None)], None)
        except _HistoryRewritten:
            return True
        except MtnsailsError:
            return False
        return False

    def render(self, exchanges: list[tuple[str, str | None]], system: str | None = None) -> str:
        """The text of a conversation as training learns it (the segments joined, no EOS)."""
        return "".join(segment.text for segment in self.segments(exchanges, system))

    def prompt_text(self, user_input: str) -> str:
        """The prompt for one question, its generation prompt included."""
        return self.render([(user_input, None)])

    @property
    def stop_texts(self) -> tuple[str, ...]:
        """Texts that end an answer where the model writes them: the end-of-turn token."""
        return (self.end_of_turn,) if self.end_of_turn else ()

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        """Tokens (by their text) whose ids end an answer: the end-of-turn token."""
        return self.stop_texts

    # -- storage -------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "chat_template": self.source,
            "special_tokens": dict(self.special_tokens),
            "end_of_turn": self.end_of_turn,
        }

    @classmethod
    def from_dict(cls, data: dict) -> JinjaTemplate:
        """The template of a `to_dict` record; ValueError naming what is wrong with it."""
        source, special, end = data.get("chat_template"), data.get("special_tokens", {}), data.get("end_of_turn", "")
        if not isinstance(source, str) or not source.strip():
            raise ValueError('"chat_template" must be the Jinja text of the template')
        if not isinstance(special, dict) or not all(
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(item, str) for item in value))
            for value in special.values()
        ):
            raise ValueError('"special_tokens" must map names (bos_token, ...) to tokens or lists of tokens')
        if not isinstance(end, str):
            raise ValueError('"end_of_turn" must be a string (the token that ends an answer, or "")')
        return cls(source, special, end)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> JinjaTemplate | None:
        """The chat template of a transformers tokenizer (None when it has none)."""
        source = _one_template(getattr(tokenizer, "chat_template", None))
        if source is None:
            return None
        special = dict(tokenizer.special_tokens_map)
        return cls(source, special, find_end_of_turn(source, special, tokenizer.get_added_vocab()))

    @classmethod
    def from_tokenizer_files(
        cls, path: str | os.PathLike, added_tokens: Iterable[str] | None = None
    ) -> JinjaTemplate | None:
        """The chat template that a saved tokenizer in `path` carries (chat_template.jinja or
        tokenizer_config.json), without transformers; None when it has none. `added_tokens`
        (their texts) default to those in tokenizer.json."""
        path = Path(path)
        config = read_json_object(path / "tokenizer_config.json")
        jinja = path / "chat_template.jinja"
        try:
            source = _one_template(jinja.read_text("utf-8")) if jinja.is_file() else None
        except (OSError, UnicodeDecodeError) as error:
            raise MtnsailsError(f"{jinja}: cannot be read ({first_line(error)})") from None
        source = source or _one_template(config.get("chat_template"))
        if source is None:
            return None
        named = {**read_json_object(path / "special_tokens_map.json"), **config}
        special = {}
        for key in SPECIAL_TOKEN_KEYS:
            value = _token_text(named.get(key))
            if value:
                special[key] = value
        if added_tokens is None:
            tokens = read_json_object(path / "tokenizer.json").get("added_tokens", [])
            added_tokens = [token.get("content", "") for token in tokens if isinstance(token, dict)]
        return cls(source, special, find_end_of_turn(source, special, added_tokens))

    def marker_tokens(self) -> list[str]:
        """The tokens the template writes around messages (<|im_start|>, <start_of_turn>, ...):
        what a tokenizer must hold as whole tokens to be prompted through it."""
        messages = [
            {"role": "system", "content": PROBE_SYSTEM},
            {"role": "user", "content": PROBE_QUESTION},
            {"role": "assistant", "content": PROBE_ANSWER},
            {"role": "user", "content": PROBE_QUESTION},
        ]
        if not self.system_role:
            messages = messages[1:]
        text = self._render(messages, True)
        for probe in (PROBE_SYSTEM, PROBE_QUESTION, PROBE_ANSWER):
            text = text.replace(probe, " ")
        return list(dict.fromkeys(MARKER.findall(text)))


def _token_text(value: object) -> str | list[str] | None:
    """A special token as tokenizer_config.json stores it (text, or {"content": text}) -> its text."""
    if isinstance(value, dict):
        value = value.get("content")
    if isinstance(value, list):
        texts = [_token_text(item) for item in value]
        return [text for text in texts if isinstance(text, str)] or None
    return value if isinstance(value, str) and value else None


Template = ChatTemplate | JinjaTemplate


def template_from_dict(data: dict | None) -> ChatTemplate | JinjaTemplate:
    """The template an `mtnsails.json` "template" record describes: a Jinja one when it holds
    "chat_template", else mtnsails' own format (the default for None)."""
    if data and "chat_template" in data:
        return JinjaTemplate.from_dict(data)
    return ChatTemplate.from_dict(data)
