"""`ChatInterface`: the package's chat API, a `ChatSession` that opens its own model and logger.

onnxruntime, `tokenizers` and numpy only, so it starts at once. It keeps the original API
(`generate_response`, `batch_generate`, `chat`, the conversation-log methods) and shows the loaded
model's parts (`decoder`, `tokenizer`, `matcher`, ...) as its own attributes, read from the
current `ChatEngine`, so that they follow a reload.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from mtnsails.core.errors import MtnsailsError
from mtnsails.core.files import atomic_write_text
from mtnsails.inference.engine import ChatEngine, EngineSettings
from mtnsails.inference.generation_config import GenerationConfig
from mtnsails.inference.session import ChatSession, ChatStats
from mtnsails.inference.terminal_chat import TerminalChat
from mtnsails.model_dir.metadata import DEFAULT_LOG_FILE
from mtnsails.model_dir.onnx_metadata import read_onnx_directory

__all__ = ["ChatInterface", "GenerationConfig", "ChatStats", "read_onnx_directory"]


def _from_engine(name: str) -> property:
    """The loaded model's attribute `name`, read on (and set on) the current engine."""
    return property(
        lambda self: getattr(self.engine, name),
        lambda self, value: setattr(self.engine, name, value),
        doc=f"`ChatEngine.{name}` of the model loaded now.",
    )


class ChatInterface(ChatSession):
    """Chat with an ONNX model directory written by `ONNXConverter`.

    >>> chat = ChatInterface("./onnx_model")
    >>> chat.reply("What is mtnsails?")            # multi-turn: remembers the conversation
    >>> chat.generate_response("Hi", do_sample=False)   # one-off answer (original API)
    """

    path = _from_engine("path")
    template = _from_engine("template")
    eos_token_id = _from_engine("eos_token_id")
    context_length = _from_engine("context_length")
    max_length = _from_engine("max_length")
    precision = _from_engine("precision")
    model_file = _from_engine("model_file")
    graph_file = _from_engine("graph_file")
    decoder = _from_engine("decoder")
    tokenizer = _from_engine("tokenizer")
    history_exchanges = _from_engine("history_exchanges")
    matcher = _from_engine("matcher")
    system_ids = _from_engine("system_ids")
    encode = _from_engine("encode")
    system_prompt_ids = _from_engine("system_prompt_ids")

    def __init__(
        self,
        onnx_model_path: str | os.PathLike,
        device: str = "cpu",
        max_length: int = 256,
        log_conversations: bool = False,
        log_file: str | os.PathLike | None = None,
        auto_flush_interval: int = 10,
        precision: str = "auto",
        generation: GenerationConfig | None = None,
        threads: int | None = None,
        system: str | None = None,
        match_questions: bool = True,
        spin_threads: bool = True,
    ) -> None:
        """Open `onnx_model_path` as `EngineSettings` describes `device`, `max_length`, `precision`,
        `generation`, `threads`, `system`, `match_questions` and `spin_threads`.
        `log_conversations` appends every exchange to `log_file` (training format; default
        chat_log.json). `auto_flush_interval` (seconds) is the logger's `flush_interval`: how often
        its writer thread and `flush_logs()` wake up to check on each other."""
        if log_conversations and not auto_flush_interval > 0:
            raise MtnsailsError(f"auto_flush_interval = {auto_flush_interval} must be above 0 (seconds)")
        settings = EngineSettings(
            device=device,
            precision=precision,
            threads=threads,
            spin_threads=spin_threads,
            max_length=max_length,
            system=system,
            match_questions=match_questions,
            generation=generation or GenerationConfig(),
        )
        engine = ChatEngine(onnx_model_path, settings)
        self.log_file = Path(log_file or DEFAULT_LOG_FILE)
        logger = None
        if log_conversations:
            from mtnsails.data.logger import ConversationLogger  # only chats that log need it

            logger = ConversationLogger(self.log_file, flush_interval=auto_flush_interval)
        super().__init__(engine, logger)

    def generate_response(
        self,
        prompt: str,
        max_new_tokens: int = 50,
        temperature: float = 0.7,
        top_p: float = 0.9,
        do_sample: bool = True,
        repetition_penalty: float = 1.2,
        **overrides,
    ) -> str:
        """Answer `prompt` on its own (no history), as the original API did."""
        overrides.update(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            do_sample=do_sample,
            repetition_penalty=repetition_penalty,
        )
        config = replace(self.generation, **{k: v for k, v in overrides.items() if v is not None})
        answer = self._answer(self.prompt_ids(prompt, None, config.max_new_tokens), config)
        self._record(prompt, answer)
        self._last_in_history = False
        return answer

    def batch_generate(self, prompts: list[str], max_new_tokens: int = 50, **kwargs) -> list[str]:
        """Answer each prompt independently (batch 1 each: decoding is memory-bound anyway)."""
        return [self.generate_response(prompt, max_new_tokens=max_new_tokens, **kwargs) for prompt in prompts]

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

    def chat(self, interactive: bool = True, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
        """Run a conversation: streamed in a terminal, one answer per line when stdin is piped."""
        TerminalChat(self, stdin, stdout).run(interactive)
