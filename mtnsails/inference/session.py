"""`ChatSession`: one conversation with a `ChatEngine`, its feedback and its log.

The session holds what belongs to the conversation: the history, the random generator, what the
last question was asked as, the exchanges with their verdicts, and the conversation logger it is
handed (as `serve` is handed one). The model and everything derived from it live in the engine;
`reload` opens a new engine and swaps it in one assignment, so the conversation goes on with the
new model whole. Answers stop at EOS (or the template's end-of-turn token), at the start of a new
user turn, or at the token limit (a sentence the limit cut in half is trimmed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from mtnsails.core.errors import MtnsailsError
from mtnsails.inference.engine import ChatEngine, Prompt
from mtnsails.inference.generation import generate_tokens
from mtnsails.inference.generation_config import GenerationConfig
from mtnsails.inference.question_matcher import QuestionMatch

if TYPE_CHECKING:
    from mtnsails.data.logger import ConversationLogger

# What a chat user may say of an answer (`ChatSession.feedback`); "fixed" comes with the right one.
VERDICTS = ("good", "bad", "fixed")


@dataclass
class ChatStats:
    """What the last answer cost (`ChatSession.last_stats`; bench/chat_bench.py reads it)."""

    prompt_tokens: int
    new_tokens: int
    seconds: float
    stop_reason: str  # "eos", "user_turn", "length"

    @property
    def truncated(self) -> bool:
        """True when the token limit stopped the answer (it may be missing its end)."""
        return self.stop_reason == "length"

    @property
    def tokens_per_second(self) -> float:
        """New tokens per second of generation (0 when nothing was timed)."""
        return self.new_tokens / self.seconds if self.seconds else 0.0


class ChatSession:
    """A conversation with `engine`; every exchange goes to `logger` too when one is given.

    >>> with ChatSession(ChatEngine("./onnx_model")) as session:   # doctest: +SKIP
    ...     session.reply("What is mtnsails?")                     # history kept
    """

    def __init__(self, engine: ChatEngine, logger: ConversationLogger | None = None) -> None:
        """`logger` is closed with the session (`close`)."""
        self.engine = engine
        self.logger = logger
        self.rng = np.random.default_rng(engine.generation.seed)
        self.history: list[tuple[str, str]] = []
        self._last_in_history = False  # the last answer is history[-1] (feedback corrects it there)
        self.last_match: QuestionMatch | None = None  # what the last question was asked as
        self.conversation_log: list[dict] = []
        self.last_stats: ChatStats | None = None

    @property
    def generation(self) -> GenerationConfig:
        """The answer settings in effect (the token limit resolved for the loaded model); set it
        to answer otherwise from now on (`ChatEngine.use_generation`)."""
        return self.engine.generation

    @generation.setter
    def generation(self, config: GenerationConfig) -> None:
        self.engine.use_generation(config)

    @property
    def system(self) -> str | None:
        """The system prompt in effect (None or "": none); set it to open prompts otherwise from
        now on ("" none, None the trained one; `ChatEngine.use_system`)."""
        return self.engine.system

    @system.setter
    def system(self, text: str | None) -> None:
        self.engine.use_system(text)

    def prompt_ids(
        self,
        user_input: str,
        history: list[tuple[str, str]] | None = None,
        max_new_tokens: int | None = None,
        system: str | None = None,
    ) -> list[int]:
        """Token ids of the prompt for `user_input` (see `ChatEngine.prompt`); `last_match`
        says which trained question, if any, it asks."""
        return self._prompt(user_input, history, max_new_tokens, system).ids

    def _prompt(
        self,
        user_input: str,
        history: list[tuple[str, str]] | None,
        max_new_tokens: int | None,
        system: str | None = None,
    ) -> Prompt:
        prompt = self.engine.prompt(user_input, history, max_new_tokens, system)
        self.last_match = prompt.match
        return prompt

    def generate_ids(self, prompt_ids: list[int], config: GenerationConfig | None = None) -> Iterator[int]:
        """Yield new token ids for `prompt_ids` (EOS included); no text-level stops.

        Sampling draws from the session's generator (seeded once, so a seeded session is
        reproducible as a whole); a `config` with a seed of its own starts a fresh one.
        """
        engine = self.engine
        config = config or engine.generation
        own_seed = config.seed is not None and config.seed != engine.generation.seed
        rng = np.random.default_rng(config.seed) if own_seed else self.rng
        return generate_tokens(engine.decoder, prompt_ids, config, rng, engine.eos_token_id, engine.context_length)

    def _answer(
        self, prompt_ids: list[int], config: GenerationConfig, on_text: Callable[[str], None] | None = None
    ) -> str:
        """Generate and decode an answer, streaming safe text pieces to `on_text` as they come."""
        engine = self.engine
        start = time.perf_counter()
        answer = engine.answer_text()
        for token in self.generate_ids(prompt_ids, config):
            piece = answer.add(token)
            if on_text and piece:
                on_text(piece)
            if answer.stop_reason:
                break
        reason = {"eos": "eos", "stop": "user_turn", None: "length"}[answer.stop_reason]
        self.last_stats = ChatStats(
            len(prompt_ids), len(answer.ids) + (reason == "eos"), time.perf_counter() - start, reason
        )
        text = answer.finish(trim=reason == "length")
        if on_text and len(text) > answer.streamed:
            on_text(text[answer.streamed :])
        return text

    def reply(self, user_input: str, on_text: Callable[[str], None] | None = None) -> str:
        """Answer within the ongoing conversation (history kept), log the exchange, return the answer."""
        config = self.generation
        prompt = self._prompt(user_input, self.history, config.max_new_tokens)
        answer = self._answer(prompt.ids, config, on_text)
        context = self.history[len(self.history) - prompt.kept :]
        self.history.append((user_input, answer))
        self._record(user_input, answer, context)
        self._last_in_history = True
        return answer

    def reset(self) -> None:
        """Start a new conversation (history forgotten; the log is kept)."""
        self.history.clear()
        self._last_in_history = False

    def reload(self) -> None:
        """Open the model directory again with the same settings (a promoted model may have
        replaced it) and go on with it; the conversation and the log stay. On an error (raised
        as MtnsailsError) the current model stays."""
        self.engine = ChatEngine(self.engine.path, self.engine.settings)

    # -- the log -------------------------------------------------------------------------------

    def _record(self, user_input: str, answer: str, history: list[tuple[str, str]] = ()) -> None:
        """Keep (and log) the exchange with the history and system prompt it was asked with, so
        that it retrains the way it was asked."""
        context = {}
        if history:
            context["history"] = [{"input": question, "output": said} for question, said in history]
        if self.system:
            context["system"] = self.system
        record = {
            "input": user_input,
            "output": answer,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **context,
        }
        if self.logger is not None:
            record["exchange_id"] = self.logger.log(user_input, answer, **context)
        self.conversation_log.append(record)

    def feedback(self, verdict: str, correction: str | None = None) -> dict:
        """Give the last answer a verdict and return its record: "good", "bad", or "fixed" with
        `correction`, the right answer, which becomes the record's "output" while "model_output"
        keeps what the model said. A later verdict replaces an earlier one. A correction also
        replaces the answer in the history, so the conversation goes on from the right answer.

        With a logger, the logged record is amended and on disk (fsynced) when this returns;
        MtnsailsError when there is no answer yet, a fix has no text, or the log cannot be written.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        fixed = verdict == "fixed"
        if fixed and not (correction or "").strip():
            raise MtnsailsError("a fix needs the right answer (it is blank)")
        if not fixed and correction is not None:
            raise ValueError(f"only a fix takes a correction, not {verdict!r}")
        if not self.conversation_log:
            raise MtnsailsError("there is no answer to give feedback on yet")
        record = self.conversation_log[-1]
        said = record.get("model_output", record["output"])
        changes = {
            "feedback": verdict,
            "output": correction.strip() if fixed else said,
            "model_output": said if fixed else None,
        }
        for key, value in changes.items():
            if value is None:
                record.pop(key, None)
            else:
                record[key] = value
        if self._last_in_history:
            self.history[-1] = (record["input"], record["output"])
        if self.logger is not None:
            self.logger.amend(record["exchange_id"], **changes)
            self.logger.flush()
        return dict(record)

    def close(self) -> None:
        """Flush and close the conversation logger (safe to call twice)."""
        if self.logger is not None:
            self.logger.close()
            self.logger = None

    def __enter__(self) -> ChatSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
