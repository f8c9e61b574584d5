"""The chat format a GGUF export carries: a Jinja chat template (what llama.cpp and LM Studio
render), the same format as an Ollama Go template, and the texts that end a turn.

The format is the one the model was trained in. A model trained by mtnsails records its
template in mtnsails.json ("User: {input}\\nAssistant: {output}" unless told otherwise); the
Jinja and Go templates written from it produce exactly the text `ChatTemplate.render` builds
for training and chat, with the EOS token after every answer, so llama.cpp feeds the model what
it learned. A model without that record whose tokenizer carries a chat template (a hub chat
model) keeps that template; for the common families (ChatML, Llama 3, Gemma, Phi-3) the Ollama
template of the same family is written beside it, for others Ollama reads the GGUF's own.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mtnsails.core.errors import MtnsailsError
from mtnsails.core.files import read_json_object
from mtnsails.model_dir.metadata import read_metadata
from mtnsails.model_dir.template import ChatTemplate


@dataclass(frozen=True)
class ChatFormat:
    """A chat format in the three forms the tools read."""

    name: str  # "mtnsails" (the training template) or a known family ("chatml", ...), "custom"
    jinja: str  # tokenizer.chat_template
    ollama: str | None  # Modelfile TEMPLATE; None: Ollama falls back to the GGUF's own template
    end_of_turn: str  # the token text that ends an answer
    stops: tuple[str, ...]  # every text that ends a turn (Modelfile PARAMETER stop)


# The escapes every Jinja engine that reads a GGUF knows: llama.cpp's own lexer has no \\u.
_JINJA_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
    "\v": "\\v",
}


def _jinja_text(text: str) -> str:
    """A Jinja string literal (double quotes, backslash escapes) holding `text` exactly."""
    return '"' + "".join(_JINJA_ESCAPES.get(char, char) for char in text) + '"'


def _go_text(text: str) -> str:
    """`text` as a Go template action that prints it: literal text between actions would lose
    its white space to the `{{-` trims that keep the template readable."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"


def training_format(template: ChatTemplate, eos_text: str, system: str | None = None) -> ChatFormat:
    """The format of `ChatTemplate` as Jinja and Go templates.

    Training builds: [system + separator] prompt(exchange 1) answer EOS [separator prompt(2)
    answer EOS ...], where prompt = before + input + head ("User: " ... "\\nAssistant:") and the
    answer starts with the spaces the template leaves after the head. The generation prompt is
    the head. `system`, the system prompt training recorded, is the Jinja template's default
    when a conversation brings none (as chat uses it); Ollama gets it as the Modelfile's SYSTEM.
    """
    before, after = template.template[: -len("{output}")].split("{input}")
    head = after.rstrip(" ")
    space = after[len(head) :]
    separator = template.separator
    jinja = []
    if system:
        jinja.append(
            "{%- if messages | length == 0 or messages[0]['role'] != 'system' -%}"
            f"{{{{- {_jinja_text(system + separator)} -}}}}{{%- endif -%}}"
        )
    jinja += [
        "{%- for message in messages -%}",
        "{%- if message['role'] == 'system' -%}",
        f"{{{{- message['content'] + {_jinja_text(separator)} -}}}}",
        "{%- elif message['role'] == 'user' -%}",
        "{%- if loop.index0 > 0 and messages[loop.index0 - 1]['role'] != 'system' -%}"
        f"{{{{- {_jinja_text(separator)} -}}}}{{%- endif -%}}",
        f"{{{{- {_jinja_text(before)} + message['content'] -}}}}",
        "{%- elif message['role'] == 'assistant' -%}",
        f"{{{{- {_jinja_text(head + space)} + message['content'] + {_jinja_text(eos_text)} -}}}}",
        "{%- endif -%}",
        "{%- endfor -%}",
        f"{{%- if add_generation_prompt -%}}{{{{- {_jinja_text(head)} -}}}}{{%- endif -%}}",
    ]
    # Ollama has no generation-prompt switch: a user turn always ends with the head, so the
    # model answers next; $first keeps the separator off the first exchange, as training did.
    ollama = "\n".join(
        [
            "{{- $first := true }}",
            "{{- range .Messages }}",
            f'{{{{- if eq .Role "system" }}}}{{{{ .Content }}}}{_go_text(separator)}',
            '{{- else if eq .Role "user" }}'
            f"{{{{ if not $first }}}}{_go_text(separator)}{{{{ end }}}}{{{{ $first = false }}}}"
            f"{_go_text(before)}{{{{ .Content }}}}{_go_text(head)}",
            f'{{{{- else if eq .Role "assistant" }}}}{_go_text(space)}{{{{ .Content }}}}{_go_text(eos_text)}',
            "{{- end }}",
            "{{- end }}",
        ]
    )
    stops = tuple(dict.fromkeys(stop for stop in (eos_text, template.user_marker) if stop))
    return ChatFormat("mtnsails", "\n".join(jinja), ollama, eos_text, stops)


# Chat families recognised in a tokenizer's Jinja template by a marker only they use: the token
# that ends a turn, and Ollama's template for the family (as its model library writes them).
KNOWN_FORMATS = {
    "chatml": (
        "<|im_start|>",
        "<|im_end|>",
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n"
        "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        '{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant\n{{ end }}\n'
        "{{- end }}",
    ),
    "llama3": (
        "<|start_header_id|>",
        "<|eot_id|>",
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n"
        "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n"
        '{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}\n'
        "{{- end }}",
    ),
    "gemma": (
        "<start_of_turn>",
        "<end_of_turn>",
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
        '{{- if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n'
        "{{ else }}<start_of_turn>user\n{{ .Content }}<end_of_turn>\n"
        "{{ if $last }}<start_of_turn>model\n{{ end }}\n"
        "{{- end }}\n"
        "{{- end }}",
    ),
    "phi3": (
        "<|assistant|>",
        "<|end|>",
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n"
        "<|{{ .Role }}|>\n{{ .Content }}<|end|>\n"
        '{{ if and $last (ne .Role "assistant") }}<|assistant|>\n{{ end }}\n'
        "{{- end }}",
    ),
}


def tokenizer_format(jinja: str, eos_text: str) -> ChatFormat:
    """A tokenizer's own Jinja template, with Ollama's template of its family when known."""
    for name, (marker, end_of_turn, ollama) in KNOWN_FORMATS.items():
        if marker in jinja:
            stops = tuple(dict.fromkeys((end_of_turn, eos_text)))
            return ChatFormat(name, jinja, ollama, end_of_turn, stops)
    return ChatFormat("custom", jinja, None, eos_text, (eos_text,))


def tokenizer_chat_template(model_dir: Path) -> str | None:
    """The chat template a saved tokenizer carries: chat_template.jinja, else tokenizer_config's
    "chat_template" (a string, or a list of named templates of which "default" is used)."""
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text("utf-8")
    template = read_json_object(model_dir / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):
        template = next((item.get("template") for item in template if item.get("name") == "default"), None)
    return template if isinstance(template, str) and template.strip() else None


def chat_format(model_dir: str | os.PathLike, eos_text: str) -> ChatFormat:
    """The format `model_dir`'s model chats in (see the module docstring for the rule)."""
    model_dir = Path(model_dir)
    metadata = read_metadata(model_dir)
    recorded = metadata.get("template")
    own = tokenizer_chat_template(model_dir)
    if isinstance(recorded, dict) and isinstance(recorded.get("chat_template"), str):
        return tokenizer_format(recorded["chat_template"], eos_text)
    if own is not None and not (isinstance(recorded, dict) and "template" in recorded):
        return tokenizer_format(own, eos_text)
    try:
        template = ChatTemplate.from_dict(recorded if isinstance(recorded, dict) else None)
    except ValueError as error:
        raise MtnsailsError(f"{model_dir / 'mtnsails.json'}: {error}") from None
    system = metadata.get("system")
    return training_format(template, eos_text, system if isinstance(system, str) else None)
