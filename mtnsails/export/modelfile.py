"""The Ollama `Modelfile` beside a GGUF file: `ollama create NAME -f Modelfile` builds a model that
chats in the trained format, stops where a turn ends and samples as mtnsails chat does.

A Modelfile quotes multi-line values in triple quotes and has no escape for them, so a system
prompt holding three double quotes cannot be written (refused, one line).
"""

from __future__ import annotations

import json

from mtnsails.core.errors import MtnsailsError
from mtnsails.export.gguf_chat import ChatFormat
from mtnsails.inference.generation_config import GenerationConfig


def _triple_quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise MtnsailsError(f'the {what} holds """, which an Ollama Modelfile cannot quote')
    return f'"""{text}"""'


def _quoted(text: str) -> str:
    """A PARAMETER value in double quotes (how Ollama's own Modelfiles write stop texts)."""
    return json.dumps(text, ensure_ascii=False)


def modelfile_text(
    gguf_file: str,
    chat: ChatFormat,
    system: str | None,
    generation: GenerationConfig,
    context_length: int | None,
    max_new_tokens: int | None,
) -> str:
    """The Modelfile for `gguf_file` (a name beside it): FROM, TEMPLATE, SYSTEM, one stop per
    end-of-turn text, chat's sampling defaults, the context length and the answer length limit."""
    lines = [
        "# Ollama model: ollama create NAME -f Modelfile (then: ollama run NAME)",
        f"FROM ./{gguf_file}",
    ]
    if chat.ollama is not None:
        lines.append(f"TEMPLATE {_triple_quoted(chat.ollama, 'chat template')}")
    else:
        lines.append("# TEMPLATE: none written; Ollama reads the chat template inside the GGUF file")
    if system:
        lines.append(f"SYSTEM {_triple_quoted(system, 'system prompt')}")
    lines += [f"PARAMETER stop {_quoted(stop)}" for stop in chat.stops]
    lines += [
        f"PARAMETER temperature {generation.temperature:g}",
        f"PARAMETER top_k {generation.top_k}",
        f"PARAMETER top_p {generation.top_p:g}",
        f"PARAMETER repeat_penalty {generation.repetition_penalty:g}",
    ]
    if context_length:
        lines.append(f"PARAMETER num_ctx {context_length}")
    if max_new_tokens:
        lines.append(f"PARAMETER num_predict {max_new_tokens}")
    return "\n".join(lines) + "\n"
