"""Render a Jinja chat template as transformers' `apply_chat_template(..., tokenize=False)` does.

jinja2's immutable sandbox with `trim_blocks` and `lstrip_blocks`, transformers' helpers
`raise_exception`, `strftime_now` and `tojson` (its own, which does not escape HTML), the
`loopcontrols` extension, and `{% generation %}` blocks rendered as their body; the variables
are `messages`, `add_generation_prompt`, `tools` and `documents` (None) and the tokenizer's
special tokens. jinja2 is imported on first use: a model in mtnsails' own format never loads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache

from mtnsails.core.errors import MtnsailsError, first_line


class TemplateRefused(MtnsailsError):
    """The chat template raised on a conversation (e.g. Gemma's "System role not supported")."""


@lru_cache(maxsize=1)
def _environment():
    """jinja2's immutable sandbox as transformers sets it up for chat templates."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask markers): the
        body as it is; mtnsails finds the answer by rendering prefixes instead."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # transformers' own: jinja's escapes HTML characters
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, "jinja2.ext.loopcontrols"]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    return environment


@lru_cache(maxsize=16)
def compile_template(source: str):
    """The compiled template (cached); MtnsailsError when `source` is not valid Jinja."""
    import jinja2

    try:
        return _environment().from_string(source)
    except jinja2.TemplateError as error:
        raise MtnsailsError(f"the chat template is not valid Jinja: {first_line(error)}") from None


def render_messages(
    source: str, messages: list[dict], add_generation_prompt: bool, special_tokens: Mapping[str, object]
) -> str:
    """`source` rendered as transformers' `apply_chat_template(messages, tokenize=False)` renders it;
    TemplateRefused when the template raises."""
    template = compile_template(source)
    try:
        return template.render(
            messages=messages,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **special_tokens,
        )
    except Exception as error:  # raise_exception(), or the template's own bug (a user's file)
        raise TemplateRefused(f"the chat template refuses the conversation: {first_line(error)}") from None
