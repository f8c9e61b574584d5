"""Chat with an exported model: onnxruntime, `tokenizers` and numpy only, so it starts at once.

The prompt is built exactly as training builds its examples (`ChatTemplate.segments`, each segment
tokenized on its own, EOS after every past answer), the conversation history is kept up to the
model's context window (oldest exchanges dropped first), and answers stop at EOS, at the start of
a new user turn, or at the token limit (a sentence the limit cut in half is trimmed).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, TextIO

import numpy as np
from tokenizers import Tokenizer

from mtnsails.core.errors import MtnsailsError
from mtnsails.core.files import atomic_write_text
from mtnsails.inference.answer_text import AnswerText
from mtnsails.inference.generation import OnnxDecoder, generate_tokens
from mtnsails.inference.generation_config import GenerationConfig, setting_label
from mtnsails.inference.optimized_graph import stored_graph
from mtnsails.inference.question_matcher import QuestionMatch, QuestionMatcher, refers_back
from mtnsails.model_dir.answer_lengths import token_limit
from mtnsails.model_dir.metadata import DEFAULT_LOG_FILE
from mtnsails.model_dir.onnx_metadata import PRECISIONS, read_onnx_directory
from mtnsails.model_dir.template import ChatTemplate, segment_ids

__all__ = ["ChatInterface", "GenerationConfig", "ChatStats", "read_onnx_directory"]
FASTEST_FIRST = ("int4", "int8")  # what `precision="auto"` prefers (bench/chat_bench.py, every CPU kind)

# What a chat user may say of an answer (`ChatInterface.feedback`); "fixed" comes with the right one.
VERDICTS = ("good", "bad", "fixed")


@dataclass
class ChatStats:
    """What the last answer cost (`ChatInterface.last_stats`; bench/chat_bench.py reads it)."""

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


class ChatInterface:
    """Chat with an ONNX model directory written by `ONNXConverter`.

    >>> chat = ChatInterface("./onnx_model")
    >>> chat.reply("What is mtnsails?")            # multi-turn: remembers the conversation
    >>> chat.generate_response("Hi", do_sample=False)   # one-off answer (original API)
    """

    def __init__(self, onnx_model_path: str | os.PathLike, device: str = "cpu", max_length: int = 256,
                 log_conversations: bool = False, log_file: str | os.PathLike | None = None,
                 auto_flush_interval: int = 10, precision: str = "auto",
                 generation: GenerationConfig | None = None, threads: int | None = None,
                 system: str | None = None, match_questions: bool = True, spin_threads: bool = True) -> None:
        """`max_length` caps the prompt tokens (history + question) given to the model.
        `spin_threads=False`: idle onnxruntime threads sleep instead of spinning, for a process
        whose Python threads share the cores with them (`serve`).
        `system` is the system prompt that opens every prompt: None uses the one the model was
        trained with (recorded in mtnsails.json, if any), "" none.
        `match_questions`: a question that matches a trained stand-alone question in other words
        (see `QuestionMatcher`) is asked as that question, alone; other questions keep as many
        earlier exchanges as the training examples had (the model learned to use no more).
        `auto_flush_interval` (original API, seconds) becomes the conversation logger's
        `flush_interval`: how often its writer thread and `flush_logs()` wake up to check on each
        other. Exchanges never wait for it: the logger writes each one as soon as it is logged.
        `precision` is "fp32", "int8", "int4" or "auto" (the fastest the directory has: int4, then
        int8, then fp32). The graph stored optimised for this CPU loads when it fits (see
        optimized_graph); `graph_file` names the graph that runs."""
        self.path = Path(onnx_model_path)
        self._model_options = {"device": device, "precision": precision, "threads": threads, "system": system,
                               "spin_threads": spin_threads}  # what `reload` opens the model with again
        meta = read_onnx_directory(self.path)
        self.template = ChatTemplate.from_dict(meta.get("template"))
        self.eos_token_id = meta.get("eos_token_id")
        self.context_length = int(meta.get("context_length") or 1024)
        self.max_length = max_length
        generation = generation or GenerationConfig()
        generation.validate()
        if generation.max_new_tokens is None:
            generation = replace(generation, max_new_tokens=token_limit(meta.get("answer_tokens"),
                                                                        self.context_length))
        self.generation = generation
        if max_length < 1:
            raise MtnsailsError(f"{setting_label('max_length')} = {max_length} must be at least 1")
        if log_conversations and not auto_flush_interval > 0:
            raise MtnsailsError(f"auto_flush_interval = {auto_flush_interval} must be above 0 (seconds)")
        self.precision = self._pick_precision(meta["files"], precision)
        self.model_file = self.path / meta["files"][self.precision]
        self.graph_file, self.decoder = self._load_decoder(meta, device, threads, spin_threads)
        try:
            self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        except Exception as error:
            raise MtnsailsError(f"{self.path / 'tokenizer.json'} cannot be read: {error}") from None
        self.history_exchanges = meta.get("history_exchanges")  # None: as many as fit
        questions = meta.get("questions") if match_questions else None
        self.matcher = QuestionMatcher(questions) if questions else None
        self.last_match: QuestionMatch | None = None  # what the last question was asked as
        self.system = meta.get("system") if system is None else system
        self.system_ids = self.system_prompt_ids(self.system)
        if len(self.system_ids) >= self._prompt_budget(self.generation.max_new_tokens):
            raise MtnsailsError(f"the system prompt is {len(self.system_ids)} tokens: it leaves no room "
                                f"for the question within {setting_label('max_length')} = {max_length} "
                                f"and the context of {self.context_length} tokens")
        self.rng = np.random.default_rng(self.generation.seed)
        self.history: list[tuple[str, str]] = []
        self._last_in_history = False  # the last answer is history[-1] (feedback corrects it there)
        self.conversation_log: list[dict] = []
        self.last_stats: ChatStats | None = None
        self.log_file = Path(log_file or DEFAULT_LOG_FILE)
        self.logger = None
        if log_conversations:
            from mtnsails.data.logger import ConversationLogger  # only chats that log need it

            self.logger = ConversationLogger(self.log_file, flush_interval=auto_flush_interval)

    def _pick_precision(self, files: dict, precision: str) -> str:
        if precision == "auto":  # fastest first, as bench/chat_bench.py measures on every CPU kind
            return next(name for name in (*FASTEST_FIRST, "fp32")
                        if name in files and (self.path / files[name]).exists())
        if precision not in (*PRECISIONS, "auto"):
            raise MtnsailsError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}, auto")
        if precision not in files or not (self.path / files[precision]).exists():
            hint = f" (convert with --quantize {precision})" if precision != "fp32" else ""
            raise MtnsailsError(f"{self.path} has no {precision} model{hint}")
        return precision

    def _load_decoder(self, meta: dict, device: str, threads: int | None, spin: bool) -> tuple[Path, OnnxDecoder]:
        """The graph stored optimised for this CPU when it fits and loads, else the portable one."""
        providers = ["CPUExecutionProvider"] if device == "cpu" else [
            "CUDAExecutionProvider", "CPUExecutionProvider"]
        shared = meta.get("kv_cache") == "shared"
        stored = stored_graph(self.path, meta, self.precision) if device == "cpu" else None
        if stored is not None:
            try:
                return stored, OnnxDecoder(stored, threads=threads, providers=providers, optimized=True,
                                           shared_cache=shared, spin=spin)
            except MtnsailsError:  # a damaged stored graph: the portable one may still be fine
                pass
        return self.model_file, OnnxDecoder(self.model_file, threads=threads, providers=providers,
                                            shared_cache=shared, spin=spin)

    # -- prompts -------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as training tokenized it (no special tokens added)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def system_prompt_ids(self, system: str | None) -> list[int]:
        """Token ids of a system prompt as it opens a prompt (none for None or "")."""
        return [token for _, ids in segment_ids(self.encode, self.template.segments([], system),
                                                self.eos_token_id) for token in ids]

    def _prompt_budget(self, new_tokens: int) -> int:
        return max(1, min(self.max_length, self.context_length - new_tokens))

    def prompt_ids(self, user_input: str, history: list[tuple[str, str]] | None = None,
                   max_new_tokens: int | None = None, system: str | None = None) -> list[int]:
        """Token ids of the prompt, built like training data, fitting the context window.

        The system prompt (if any) always opens it; the oldest exchanges are dropped until system
        + history + question fit in min(max_length, context_length - max_new_tokens) tokens; a
        question too long on its own keeps its end (the part next to the answer). `system`
        replaces the session's system prompt for this prompt ("" for none; None keeps it).
        """
        return self._prompt(user_input, history, max_new_tokens, system)[0]

    def _prompt(self, user_input: str, history: list[tuple[str, str]] | None,
                max_new_tokens: int | None, system: str | None = None) -> tuple[list[int], int]:
        """`prompt_ids`, and how many of the newest `history` exchanges it holds."""
        new_tokens = self.generation.max_new_tokens if max_new_tokens is None else max_new_tokens
        system_ids = self.system_ids if system is None else self.system_prompt_ids(system)
        user_input, history = self._as_trained(user_input, history or [])
        ids, start = self._exchanges_within(
            user_input, history, max(1, self._prompt_budget(new_tokens) - len(system_ids)))
        return system_ids + ids, len(history) - start

    def _as_trained(self, user_input: str, history: list[tuple[str, str]]
                    ) -> tuple[str, list[tuple[str, str]]]:
        """The question and history the model is asked: a question matching a trained stand-alone
        question becomes that question, alone, unless it refers back to the conversation ("it",
        "they", ...); any other keeps the newest `history_exchanges`."""
        follow_up = bool(history) and refers_back(user_input)
        self.last_match = self.matcher.match(user_input) if self.matcher and not follow_up else None
        if self.last_match is not None:
            return self.last_match.question, []
        if self.history_exchanges is not None:
            history = history[len(history) - self.history_exchanges:] if self.history_exchanges else []
        return user_input, history

    def _exchanges_within(self, user_input: str, history: list[tuple[str, str]] | None,
                          budget: int) -> tuple[list[int], int]:
        """The newest exchanges that fit in `budget` tokens (see `prompt_ids`), and the index
        of the first of them in history + question."""
        exchanges = [*(history or []), (user_input, None)]
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
        ids = first + [token for piece in pieces[start + 1:] for token in piece]
        return ids[-budget:], start

    def _exchange_ids(self, exchanges: list[tuple[str, str | None]]) -> list[list[int]]:
        """Token ids per exchange, as in the prompt of all `exchanges` (the first has no separator)."""
        pieces: list[list[int]] = []
        for segment, ids in segment_ids(self.encode, self.template.segments(exchanges), self.eos_token_id):
            if not segment.is_response:  # each exchange opens with its prompt segment
                pieces.append([])
            pieces[-1] += ids
        return pieces

    # -- generation ----------------------------------------------------------------------------

    def generate_ids(self, prompt_ids: list[int], config: GenerationConfig | None = None) -> Iterator[int]:
        """Yield new token ids for `prompt_ids` (EOS included); no text-level stops.

        Sampling draws from the session's generator (seeded once, so a seeded session is
        reproducible as a whole); a `config` with a seed of its own starts a fresh one.
        """
        config = config or self.generation
        own_seed = config.seed is not None and config.seed != self.generation.seed
        rng = np.random.default_rng(config.seed) if own_seed else self.rng
        return generate_tokens(self.decoder, prompt_ids, config, rng, self.eos_token_id,
                               self.context_length)

    def _answer(self, prompt_ids: list[int], config: GenerationConfig,
                on_text: Callable[[str], None] | None = None) -> str:
        """Generate and decode an answer, streaming safe text pieces to `on_text` as they come."""
        start = time.perf_counter()
        answer = AnswerText(self.tokenizer, [self.template.user_marker], self.eos_token_id)
        for token in self.generate_ids(prompt_ids, config):
            piece = answer.add(token)
            if on_text and piece:
                on_text(piece)
            if answer.stop_reason:
                break
        reason = {"eos": "eos", "stop": "user_turn", None: "length"}[answer.stop_reason]
        self.last_stats = ChatStats(len(prompt_ids), len(answer.ids) + (reason == "eos"),
                                    time.perf_counter() - start, reason)
        text = answer.finish(trim=reason == "length")
        if on_text and len(text) > answer.streamed:
            on_text(text[answer.streamed:])
        return text

    def _config(self, max_new_tokens: int | None = None, **overrides) -> GenerationConfig:
        if max_new_tokens is not None:
            overrides["max_new_tokens"] = max_new_tokens
        return replace(self.generation, **{k: v for k, v in overrides.items() if v is not None})

    def reply(self, user_input: str, on_text: Callable[[str], None] | None = None) -> str:
        """Answer within the ongoing conversation (history kept), log the exchange, return the answer."""
        config = self.generation
        prompt, kept = self._prompt(user_input, self.history, config.max_new_tokens)
        answer = self._answer(prompt, config, on_text)
        context = self.history[len(self.history) - kept:]
        self.history.append((user_input, answer))
        self._record(user_input, answer, context)
        self._last_in_history = True
        return answer

    def reset(self) -> None:
        """Start a new conversation (history forgotten; the log is kept)."""
        self.history.clear()
        self._last_in_history = False

    def reload(self) -> None:
        """Open the model directory again (a promoted model may have replaced it); the
        conversation, the log and the generation settings stay. On an error (raised as
        MtnsailsError) the current model stays."""
        fresh = ChatInterface(self.path, max_length=self.max_length, generation=self.generation,
                              **self._model_options)
        for name in ("template", "eos_token_id", "context_length", "precision", "model_file",
                     "decoder", "tokenizer", "system", "system_ids"):
            setattr(self, name, getattr(fresh, name))

    def generate_response(self, prompt: str, max_new_tokens: int = 50, temperature: float = 0.7,
                          top_p: float = 0.9, do_sample: bool = True, repetition_penalty: float = 1.2,
                          **overrides) -> str:
        """Answer `prompt` on its own (no history), as the original API did."""
        config = self._config(max_new_tokens, temperature=temperature, top_p=top_p, do_sample=do_sample,
                              repetition_penalty=repetition_penalty, **overrides)
        answer = self._answer(self.prompt_ids(prompt, None, config.max_new_tokens), config)
        self._record(prompt, answer)
        self._last_in_history = False
        return answer

    def batch_generate(self, prompts: list[str], max_new_tokens: int = 50, **kwargs) -> list[str]:
        """Answer each prompt independently (batch 1 each: decoding is memory-bound anyway)."""
        return [self.generate_response(prompt, max_new_tokens=max_new_tokens, **kwargs) for prompt in prompts]

    # -- logging -------------------------------------------------------------------------------

    def _record(self, user_input: str, answer: str, history: list[tuple[str, str]] = ()) -> None:
        """Keep (and log) the exchange with the history and system prompt it was asked with, so
        that it retrains the way it was asked."""
        context = {}
        if history:
            context["history"] = [{"input": question, "output": said} for question, said in history]
        if self.system:
            context["system"] = self.system
        record = {"input": user_input, "output": answer,
                  "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), **context}
        if self.logger is not None:
            record["exchange_id"] = self.logger.log(user_input, answer, **context)
        self.conversation_log.append(record)

    def feedback(self, verdict: str, correction: str | None = None) -> dict:
        """Give the last answer a verdict and return its record: "good", "bad", or "fixed" with
        `correction`, the right answer, which becomes the record's "output" while "model_output"
        keeps what the model said. A later verdict replaces an earlier one. A correction also
        replaces the answer in the history, so the conversation goes on from the right answer.

        With logging on, the logged record is amended and on disk (fsynced) when this returns;
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
        changes = {"feedback": verdict, "output": correction.strip() if fixed else said,
                   "model_output": said if fixed else None}
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

    def flush_logs(self) -> None:
        """Block until every logged exchange is on disk."""
        if self.logger is not None:
            self.logger.flush()

    def get_conversation_log(self) -> list[dict]:
        """A copy of this session's exchanges: {"input", "output", "timestamp"} records, with
        "history" and "system" when they were in the prompt and "feedback" when one was given."""
        return list(self.conversation_log)

    def clear_conversation_log(self) -> None:
        """Forget this session's exchanges in memory (the log file keeps them)."""
        self.conversation_log.clear()

    def save_conversation_log(self, file_path: str | os.PathLike | None = None) -> str:
        """Write this session's exchanges as a JSON array (the training format) and return the path."""
        path = Path(file_path or self.log_file)
        atomic_write_text(path, json.dumps(self.conversation_log, indent=2, ensure_ascii=False) + "\n")
        return str(path)

    def close(self) -> None:
        """Flush and close the conversation logger (safe to call twice)."""
        if self.logger is not None:
            self.logger.close()
            self.logger = None

    def __enter__(self) -> "ChatInterface":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- terminal ------------------------------------------------------------------------------

    def chat(self, interactive: bool = True, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
        """Run a conversation: streamed in a terminal, one answer per line when stdin is piped."""
        from mtnsails.inference.terminal_chat import TerminalChat

        TerminalChat(self, stdin, stdout).run(interactive)
