"""The chat format a GGUF export carries: a Jinja chat template (what llama.cpp and LM Studio
render), the same format as an Ollama Go template, and the texts that end a turn.

The format is the one the model was trained in, as its mtnsails.json records it: mtnsails' own
("User: {input}\\nAssistant: {output}" unless told otherwise), whose Jinja and Go templates
written here produce exactly the text `ChatTemplate.render` builds for training and chat, EOS
after every answer; or a Jinja chat template (`JinjaTemplate`: the model's own, or one train
gave it), written as it is. A model without that record keeps its tokenizer's chat template, if
it has one. For a Jinja template of a common family (ChatML, Llama 3, Gemma, Phi-3) the Ollama
template of the same format is written beside it; for others Ollama reads the GGUF's own.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mtnsails.core.errors import MtnsailsError
from mtnsails.model_dir.jinja_template import JinjaTemplate
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
    default_system: str | None = None  # what the template writes when a conversation has no system prompt
    writes_bos: bool = False  # the template starts a conversation with the BOS token's text


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


# Chat families recognised in a Jinja template by a marker only they use, with Ollama's template
# of the same format (system prompts where each family's own template writes them: Gemma's first
# user turn takes it, a blank line after it).
KNOWN_FORMATS = {
    "chatml": (
        "<|im_start|>",
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n"
        "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        '{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant\n{{ end }}\n'
        "{{- end }}",
    ),
    "llama3": (
        "<|start_header_id|>",
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n"
        "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n"
        '{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}\n'
        "{{- end }}",
    ),
    "gemma": (
        "<start_of_turn>",
        '{{- $system := "" }}\n'
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
        '{{- if eq .Role "system" }}{{ $system = .Content }}\n'
        '{{- else if eq .Role "user" }}<start_of_turn>user\n'
        '{{ if $system }}{{ $system }}\n\n{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>\n'
        "{{ if $last }}<start_of_turn>model\n{{ end }}\n"
        "{{- else }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}\n"
        "{{- end }}",
    ),
    "phi3": (
        "<|assistant|>",
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n"
        "<|{{ .Role }}|>\n{{ .Content }}<|end|>\n"
        '{{ if and $last (ne .Role "assistant") }}<|assistant|>\n{{ end }}\n'
        "{{- end }}",
    ),
}
# A ChatML template that writes a system turn of its own when a conversation has none (Qwen2.5's
# "You are Qwen, ..."): Ollama gets that text as the Modelfile's SYSTEM, so it writes it too.
_CHATML_SYSTEM = re.compile(r"^(?:<[^<>\s]+>)?<\|im_start\|>system\n(.*?)<\|im_end\|>\n", re.DOTALL)


def tokenizer_format(template: JinjaTemplate, eos_text: str) -> ChatFormat:
    """A model's own Jinja template, with Ollama's template of its family when known."""
    end_of_turn = template.end_of_turn or eos_text
    stops = tuple(dict.fromkeys((end_of_turn, eos_text)))
    try:
        rendered = template.prompt_text("mtnsails-probe")
    except MtnsailsError:  # a template that refuses the probe: nothing to learn from it
        rendered = ""
    bos = template.special_tokens.get("bos_token")
    writes_bos = isinstance(bos, str) and bool(bos) and rendered.startswith(bos)
    for name, (marker, ollama) in KNOWN_FORMATS.items():
        if marker in template.source:
            found = _CHATML_SYSTEM.match(rendered) if name == "chatml" else None
            default_system = found.group(1) if found else None
            return ChatFormat(name, template.source, ollama, end_of_turn, stops, default_system, writes_bos)
    return ChatFormat("custom", template.source, None, end_of_turn, stops, writes_bos=writes_bos)


def chat_format(model_dir: str | os.PathLike, eos_text: str) -> ChatFormat:
    """The format `model_dir`'s model chats in (see the module docstring for the rule)."""
    model_dir = Path(model_dir)
    metadata = read_metadata(model_dir)
    recorded = metadata.get("template")
    try:
        if isinstance(recorded, dict) and "chat_template" in recorded:
            return tokenizer_format(JinjaTemplate.from_dict(recorded), eos_text)
        own = None if isinstance(recorded, dict) else JinjaTemplate.from_tokenizer_files(model_dir)
        if own is not None:
            return tokenizer_format(own, eos_text)
        template = ChatTemplate.from_dict(recorded if isinstance(recorded, dict) else None)
    except ValueError as error:
        raise MtnsailsError(f"{model_dir / 'mtnsails.json'}: {error}") from None
    system = metadata.get("system")
    return training_format(template, eos_text, system if isinstance(system, str) else None)
