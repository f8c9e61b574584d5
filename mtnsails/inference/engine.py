"""`ChatEngine`: one loaded ONNX model directory and how prompts are built for it.

Everything here follows from the directory and the settings it was opened with: the graph that
runs, the tokenizer, the template, the context length, the system prompt in effect, the token
limit derived from the trained answer lengths, and the trained questions a reworded one is
matched to. An engine keeps no conversation (a `ChatSession` holds one, `serve`'s scheduler
many), so replacing a model is opening a new engine and swapping it whole: nothing of the old
model can stay behind.

The prompt is built exactly as training builds its examples (the template's `segments`, each
segment tokenized on its own, EOS after every past answer that has no end-of-turn token of its
own), keeping the newest exchanges that fit. A model's Jinja chat template (`JinjaTemplate`) is
rendered here as in training, without torch; answers stop at its end-of-turn token and at every
EOS id the model's generation config names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer

from mtnsails.core.errors import MtnsailsError
from mtnsails.inference.answer_text import AnswerText
from mtnsails.inference.generation import OnnxDecoder
from mtnsails.inference.generation_config import GenerationConfig, setting_label
from mtnsails.inference.optimized_graph import stored_graph
from mtnsails.inference.question_matcher import QuestionMatch, QuestionMatcher, refers_back
from mtnsails.model_dir.answer_lengths import token_limit
from mtnsails.model_dir.jinja_template import JinjaTemplate, template_from_dict
from mtnsails.model_dir.onnx_metadata import PRECISIONS, eos_token_ids, read_onnx_directory
from mtnsails.model_dir.template import segment_ids

FASTEST_FIRST = ("int4", "int8")  # what `precision="auto"` prefers (bench/chat_bench.py, every CPU kind)


@dataclass(frozen=True)
class EngineSettings:
    """How to open a model directory; the engine keeps them so that a reload opens the next
    model the same way.

    `precision`: "fp32", "int8", "int4" or "auto" (the fastest the directory has: int4, then
    int8, then fp32); the graph stored optimised for this CPU loads when it fits.
    `spin_threads=False`: idle onnxruntime threads sleep instead of spinning, for a process whose
    Python threads share the cores with them (`serve`).
    `max_length` caps the prompt tokens (history + question).
    `system` opens every prompt that gives none of its own: None = the one the model was trained
    with (recorded in mtnsails.json, if any), "" = none.
    `match_questions`: ask a question that matches a trained question in other words
    as that question, alone (see `QuestionMatcher`).
    `generation`: the default answer settings; `max_new_tokens=None` takes the model's limit
    (the longest trained answer plus a margin).
    """

    device: str = "cpu"
    precision: str = "auto"
    threads: int | None = None
    spin_threads: bool = True
    max_length: int = 256
    system: str | None = None
    match_questions: bool = True
    generation: GenerationConfig = field(default_factory=GenerationConfig)


@dataclass(frozen=True)
class Prompt:
    """A prompt's token ids, how many of the newest history exchanges it holds, and the trained
    question it asks in place of the user's words (None: the user's words)."""

    ids: list[int]
    kept: int
    match: QuestionMatch | None


class ChatEngine:
    """A loaded ONNX model directory written by `ONNXConverter`, ready to build prompts and decode.

    >>> engine = ChatEngine("./onnx_model", EngineSettings(precision="fp32"))  # doctest: +SKIP
    >>> engine.prompt("What is mtnsails?").ids                                  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, settings: EngineSettings | None = None) -> None:
        """Open `path` (MtnsailsError, in one line, when it cannot be used)."""
        settings = settings or EngineSettings()
        self.path = Path(path)
        self.settings = settings
        meta = read_onnx_directory(self.path)
        self.template = template_from_dict(meta.get("template"))
        self.eos_token_id = meta.get("eos_token_id")
        self.context_length = int(meta.get("context_length") or 1024)
        self.max_length = settings.max_length
        self.default_max_new_tokens = token_limit(meta.get("answer_tokens"), self.context_length)
        self.use_generation(settings.generation)
        if self.max_length < 1:
            raise MtnsailsError(f"{setting_label('max_length')} = {self.max_length} must be at least 1")
        self.precision = self._pick_precision(meta["files"], settings.precision)
        self.model_file = self.path / meta["files"][self.precision]
        self.graph_file, self.decoder = self._load_decoder(meta)
        try:
            self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        except Exception as error:
            raise MtnsailsError(f"{self.path / 'tokenizer.json'} cannot be read: {error}") from None
        # What ends an answer besides stop texts: EOS, every EOS of the generation config and the
        # template's end-of-turn token (<|im_end|>, <|eot_id|>, ...).
        stop_tokens = [self.tokenizer.token_to_id(token) for token in self.template.stop_tokens]
        self.stop_ids = frozenset(
            token for token in (self.eos_token_id, *eos_token_ids(self.path), *stop_tokens) if token is not None
        )
        # As many earlier exchanges as the training examples had: the model learned to use no
        # more (None: as many as fit).
        self.history_exchanges = meta.get("history_exchanges")
        # The answers name a question's subject again, often in other words (older exports lack them).
        self._trained = (
            (meta.get("questions"), meta.get("question_answers")) if settings.match_questions else (None, None)
        )
        self.trained_system = meta.get("system")  # the training data's system prompt, if any
        self.use_system(settings.system)

    @cached_property
    def matcher(self) -> QuestionMatcher | None:
        """The matcher of the trained questions (None: none recorded, or matching off), built on
        first use: embedding the trained questions takes a moment a chat need not wait for."""
        questions, answers = self._trained
        return QuestionMatcher(questions, answers=answers) if questions else None

    def load_matcher(self) -> None:
        """Build the matcher now rather than at the first question (a server, so that no
        request waits for it and no two threads build it)."""
        _ = self.matcher

    def use_generation(self, generation: GenerationConfig) -> None:
        """Answer with `generation` from now on (a reload keeps it); no `max_new_tokens`: the
        limit derived from the trained answer lengths."""
        generation.validate()
        self.settings = replace(self.settings, generation=generation)
        if generation.max_new_tokens is None:
            generation = replace(generation, max_new_tokens=self.default_max_new_tokens)
        self.generation = generation

    def use_system(self, system: str | None) -> None:
        """Open every prompt with `system` from now on ("" none; None the trained one; a reload
        keeps it). MtnsailsError when it leaves no room for a question."""
        text = self.trained_system if system is None else system
        ids = self.system_prompt_ids(text)
        if len(ids) >= self._prompt_budget(self.generation.max_new_tokens):
            raise MtnsailsError(
                f"the system prompt is {len(ids)} tokens: it leaves no room "
                f"for the question within {setting_label('max_length')} = {self.max_length} "
                f"and the context of {self.context_length} tokens"
            )
        self.settings = replace(self.settings, system=system)
        self.system, self.system_ids = text, ids

    def _pick_precision(self, files: dict, precision: str) -> str:
        if precision == "auto":
            return next(
                name for name in (*FASTEST_FIRST, "fp32") if name in files and (self.path / files[name]).exists()
            )
        if precision not in (*PRECISIONS, "auto"):
            raise MtnsailsError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}, auto")
        if precision not in files or not (self.path / files[precision]).exists():
            hint = f" (convert with --quantize {precision})" if precision != "fp32" else ""
            raise MtnsailsError(f"{self.path} has no {precision} model{hint}")
        return precision

    def _load_decoder(self, meta: dict) -> tuple[Path, OnnxDecoder]:
        """The graph stored optimised for this CPU when it fits and loads, else the portable one."""
        settings = self.settings
        providers = (
            ["CPUExecutionProvider"] if settings.device == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
        options = {
            "threads": settings.threads,
            "providers": providers,
            "shared_cache": meta.get("kv_cache") == "shared",
            "spin": settings.spin_threads,
        }
        stored = stored_graph(self.path, meta, self.precision) if settings.device == "cpu" else None
        if stored is not None:
            try:
                return stored, OnnxDecoder(stored, optimized=True, **options)
            except MtnsailsError:  # a damaged stored graph: the portable one may still be fine
                pass
        return self.model_file, OnnxDecoder(self.model_file, **options)

    # -- prompts -------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as training tokenized it (no special tokens added)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def system_prompt_ids(self, system: str | None) -> list[int]:
        """Token ids of a system prompt as it opens a prompt (none for None or "")."""
        return [
            token
            for _, ids in segment_ids(self.encode, self.template.segments([], system), self.eos_token_id)
            for token in ids
        ]

    def answer_text(self, stops: Sequence[str] = ()) -> AnswerText:
        """A new answer's text, ending at the template's stop texts and `stops`, at EOS and at
        the template's end-of-turn token."""
        return AnswerText(self.tokenizer, [*self.template.stop_texts, *stops], self.stop_ids)

    def _prompt_budget(self, new_tokens: int) -> int:
        return max(1, min(self.max_length, self.context_length - new_tokens))

    def prompt(
        self,
        user_input: str,
        history: list[tuple[str, str]] | None = None,
        max_new_tokens: int | None = None,
        system: str | None = None,
    ) -> Prompt:
        """The prompt for `user_input` after `history`, built like training data, fitting the context.

        A question matching a trained question (one that opened a conversation) is asked as that question, alone,
        unless it refers back to the conversation ("it", "they", ...); any other keeps the newest
        `history_exchanges`. The system prompt (if any) always opens it; the oldest exchanges are
        dropped until system + history + question fit in min(max_length, context_length -
        max_new_tokens) tokens; a question too long on its own keeps its end (the part next to
        the answer). `system` replaces the engine's system prompt for this prompt ("" for none;
        None keeps it); `max_new_tokens` None is the engine's limit.
        """
        new_tokens = self.generation.max_new_tokens if max_new_tokens is None else max_new_tokens
        system_ids = self.system_ids if system is None else self.system_prompt_ids(system)
        history = history or []
        follow_up = bool(history) and refers_back(user_input)
        match = self.matcher.match(user_input) if not follow_up and self.matcher else None
        if match is not None:
            user_input, history = match.question, []
        elif self.history_exchanges is not None:
            history = history[len(history) - self.history_exchanges :] if self.history_exchanges else []
        if isinstance(self.template, JinjaTemplate):
            system_text = self.system if system is None else system
            budget = self._prompt_budget(new_tokens)
            ids, start = rendered_prompt(
                self.template, self.encode, self.eos_token_id, system_text, user_input, history, budget
            )
            return Prompt(ids, len(history) - start, match)
        ids, start = self._exchanges_within(
            user_input, history, max(1, self._prompt_budget(new_tokens) - len(system_ids))
        )
        return Prompt(system_ids + ids, len(history) - start, match)

    def _exchanges_within(self, user_input: str, history: list[tuple[str, str]], budget: int) -> tuple[list[int], int]:
        """The newest exchanges that fit in `budget` tokens (see `prompt`), and the index
        of the first of them in history + question."""
        exchanges = [*history, (user_input, None)]
        pieces = self._exchange_ids(exchanges)
        start, used = len(pieces), 0  # keep the newest exchanges that fit, each encoded once
        while start > 0 and used + len(pieces[start - 1]) <= budget:
            start -= 1
            used += len(pieces[start])
        if start == 0:
            return [token for piece in pieces for token in piece], 0
        # Exchange start-1 did not fit with its separator; it may without (the first kept has none).
        # Older ones cannot: exchange start alone already overflows what is left for them.
        first = self._exchange_ids([exchanges[start - 1]])[0]
        if used + len(first) <= budget or start == len(pieces):
            start -= 1
        else:
            first = self._exchange_ids([exchanges[start]])[0]
        ids = first + [token for piece in pieces[start + 1 :] for token in piece]
        return ids[-budget:], start

    def _exchange_ids(self, exchanges: list[tuple[str, str | None]]) -> list[list[int]]:
        """Token ids per exchange, as in the prompt of all `exchanges` (the first has no separator)."""
        pieces: list[list[int]] = []
        for segment, ids in segment_ids(self.encode, self.template.segments(exchanges), self.eos_token_id):
            if not segment.is_response:  # each exchange opens with its prompt segment
                pieces.append([])
            pieces[-1] += ids
        return pieces


def rendered_prompt(
    template: JinjaTemplate,
    encode: Callable[[str], list[int]],
    eos_id: int | None,
    system: str | None,
    question: str,
    history: list[tuple[str, str]],
    budget: int,
) -> tuple[list[int], int]:
    """A Jinja template's prompt for `question` after the newest exchanges of `history` that fit
    in `budget` tokens together with the system prompt (rendered whole: the template decides
    where the system prompt goes), and the index of the first exchange kept. A question too long
    even alone keeps its end (next to the answer): its start is dropped until the prompt fits.
    Tokenized segment by segment, as training tokenizes (`segment_ids`)."""

    def ids(exchanges: list[tuple[str, str | None]]) -> list[int]:
        pieces = segment_ids(encode, template.segments(exchanges, system), eos_id)
        return [token for _, piece in pieces for token in piece]

    low, high = 0, len(history) + 1  # the fewest exchanges dropped that fit (len(history) + 1: none fits)
    found: list[int] | None = None
    while low < high:
        middle = (low + high) // 2
        prompt = ids([*history[middle:], (question, None)])
        if len(prompt) <= budget:
            high, found = middle, prompt
        else:
            low = middle + 1
    if found is not None:
        return found, low
    low, high = 0, len(question)  # the fewest characters of the question dropped that fit
    while low < high:
        middle = (low + high) // 2
        if len(ids([(question[middle:], None)])) <= budget:
            high = middle
        else:
            low = middle + 1
    return ids([(question[low:], None)])[-budget:], len(history)
