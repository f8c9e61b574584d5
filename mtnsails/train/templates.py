"""Which chat template a training run renders conversations with, and giving a model one.

In order: `--chat-template chatml|FILE` (installed into the tokenizer, see `install_template`),
`--chat-template none` (mtnsails' own "User:/Assistant:" format), a template set through the
API (`TrainingConfig.template`), the template an mtnsails model being continued was trained
with, the tokenizer's own chat template (an instruct model's), and otherwise mtnsails' own
format (distilgpt2, the embedded `tiny`).
"""

from __future__ import annotations

from pathlib import Path

from mtnsails.core.errors import MtnsailsError, first_line
from mtnsails.model_dir.jinja_template import BUILT_IN, JinjaTemplate, template_from_dict
from mtnsails.model_dir.template import ChatTemplate

NO_TEMPLATE = "none"  # --chat-template none: mtnsails' own format even for a model with a template


def template_source(choice: str) -> str:
    """The Jinja text `--chat-template` names: a built-in template ("chatml") or a file."""
    if choice in BUILT_IN:
        return BUILT_IN[choice]
    path = Path(choice).expanduser()
    try:
        source = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MtnsailsError(
            f"--chat-template {choice}: not one of {', '.join([*BUILT_IN, NO_TEMPLATE])} and cannot be read as a "
            f"Jinja file ({first_line(error)})"
        ) from None
    if not source.strip():
        raise MtnsailsError(f"--chat-template {choice}: the file is empty")
    return source


def check_choice(choice: str | None) -> None:
    """Refuse a `--chat-template` that names neither a built-in template nor a readable Jinja file."""
    if choice is not None and choice != NO_TEMPLATE:
        JinjaTemplate(template_source(choice))  # compiles it: a syntax error is refused now


def install_template(choice: str, tokenizer, model) -> list[str]:
    """Give `tokenizer` the template `choice` names; add the marker tokens it writes that the
    tokenizer lacks (<|im_start|>, <|im_end|>, ...) as special tokens, and grow the model's
    embeddings for them. Returns the tokens added."""
    source = template_source(choice)
    template = JinjaTemplate(source, dict(tokenizer.special_tokens_map))
    present = tokenizer.get_added_vocab()
    missing = [token for token in template.marker_tokens() if token not in present]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_additional_special_tokens=False)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            from transformers.utils import logging

            verbosity = logging.get_verbosity()
            logging.set_verbosity_error()  # its note on how new rows start: the caller says it in a line
            try:
                model.resize_token_embeddings(len(tokenizer))  # new rows: the mean of the others
            finally:
                logging.set_verbosity(verbosity)
    tokenizer.chat_template = source
    return missing


def training_template(
    choice: str | None, configured: ChatTemplate | JinjaTemplate, tokenizer, model, recorded: dict | None
) -> tuple[ChatTemplate | JinjaTemplate, list[str]]:
    """The template a run trains with (see the module's docstring) and the tokens installing it
    added: `choice` is `--chat-template`, `configured` the API's template, `recorded` the
    "template" record of the mtnsails model being continued (None for others)."""
    if choice == NO_TEMPLATE:  # a format of mtnsails' own that the API or the earlier model set, else the default
        earlier = template_from_dict(recorded) if recorded else None
        own = [t for t in (configured, earlier) if isinstance(t, ChatTemplate) and t != ChatTemplate()]
        return (own[0] if own else ChatTemplate()), []
    if choice:
        added = install_template(choice, tokenizer, model)
        return JinjaTemplate.from_tokenizer(tokenizer), added
    if configured != ChatTemplate():
        return configured, []
    if recorded:
        return template_from_dict(recorded), []
    return JinjaTemplate.from_tokenizer(tokenizer) or configured, []


def end_ids(template: ChatTemplate | JinjaTemplate, tokenizer, model=None) -> list[int]:
    """The ids that end an answer: EOS, the template's end-of-turn token and, with a template of
    the model's own, every EOS its generation config already names (Qwen2.5 names two)."""
    ids = [tokenizer.eos_token_id]
    if isinstance(template, JinjaTemplate):
        added = tokenizer.get_added_vocab()
        ids += [added.get(token) for token in template.stop_tokens]
        known = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids += known if isinstance(known, list) else [known]
    return [token for token in dict.fromkeys(ids) if isinstance(token, int) and token >= 0]
