"""Which decoder families `convert` exports, and what optimum's export of each needs from mtnsails.

optimum-onnx exports a family with a KV cache when its task table lists
`text-generation-with-past` for the config's `model_type`; `convert` refuses any other in one
line before it loads the model. The families tests/test_families.py runs through every stage
(train, convert fp32/int8/int4, verify, chat, serve, evaluate) are `TESTED_FAMILIES`; the others
optimum lists are exported the same way, untested (docs/families.md).

optimum's Gemma configs (Gemma, Gemma 2, Gemma 3) export no `position_ids` input: the graph then
numbers positions from the cache's length, so a left-padded row of a batch would count its
padding and a row that joins a batch later would be placed at the batch's width, and its rotary
angles would be wrong (`serve` refuses such a graph). `export_configs` adds the input to the
family's own optimum config wherever the model's forward takes it.
"""

from __future__ import annotations

import inspect
import os

from mtnsails.core.errors import MtnsailsError

TASK = "text-generation-with-past"
# model_type -> what the tiny test model of that family exercises (docs/families.md).
TESTED_FAMILIES = {
    "gpt2": "learned positions, fused attention rewrite, tied head",
    "llama": "rotary, grouped-query attention, tied head (SmolLM2 shape)",
    "mistral": "rotary, grouped-query attention, sliding window, untied head",
    "qwen2": "rotary, grouped-query attention, q/k/v biases, tied head",
    "qwen3": "rotary, grouped-query attention, q/k norms, tied head",
    "gemma2": "rotary, grouped-query attention, attention and logit soft-capping, sliding window, tied head",
    "gemma3_text": "rotary (local and global bases), grouped-query attention, q/k norms, sliding window, tied head",
    "phi3": "rotary, grouped-query attention, fused qkv and gate/up projections, untied head",
    "smollm3": "rotary with NoPE layers, grouped-query attention, tied head",
}


def _optimum_config_class(model_type: str):
    """optimum's ONNX config class for `model_type`'s KV-cache export, or None when it has none."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (fills optimum's task table)
    from optimum.exporters.tasks import TasksManager

    for name in dict.fromkeys((model_type, model_type.replace("_", "-"))):
        try:
            tasks = TasksManager.get_supported_tasks_for_model_type(name, "onnx", library_name="transformers")
        except KeyError:
            continue
        constructor = tasks.get(TASK)
        if constructor is not None:
            return getattr(constructor, "func", constructor)
    return None


def check_exportable(model_type: str | None, model_path: str | os.PathLike) -> None:
    """Refuse (MtnsailsError, one line) a model whose family optimum cannot export with a KV cache."""
    if not model_type:
        raise MtnsailsError(f"{model_path}/config.json has no model_type: cannot tell which architecture to export")
    if _optimum_config_class(model_type) is None:
        raise MtnsailsError(
            f"{model_path}: model type {model_type!r} cannot be exported to ONNX with a KV cache "
            "(optimum-onnx has no text-generation-with-past export for it; docs/families.md lists those it has)"
        )


def _forward_takes_position_ids(config) -> bool:
    """True when the causal LM class transformers maps `config` to accepts `position_ids`."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        return False
    return "position_ids" in inspect.signature(model_class.forward).parameters


def export_configs(model_path: str | os.PathLike) -> tuple[dict | None, str | None]:
    """(optimum `custom_onnx_configs` for `main_export`, or None for its own; a note for the user,
    or None). The custom config is the family's own with a `position_ids` input added, for a
    family whose optimum config lacks one while its model takes it (the Gemma families)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    base = _optimum_config_class(config.model_type)
    if base is None or not _forward_takes_position_ids(config):
        return None, None
    probe = base(config, task="text-generation", use_past=True, use_past_in_inputs=True)
    if "position_ids" in probe.inputs:
        return None, None

    class WithPositionIds(base):
        """The family's optimum config, taking each row's position ids (after the attention mask)."""

        @property
        def inputs(self) -> dict:
            inputs = {}
            for name, axes in super().inputs.items():
                inputs[name] = axes
                if name == "attention_mask":
                    inputs["position_ids"] = {0: "batch_size", 1: "sequence_length"}
            return inputs

    custom = WithPositionIds(config, task="text-generation", use_past=True, use_past_in_inputs=True)
    note = (
        f"added a position_ids input to optimum's {config.model_type} export "
        "(its own numbers positions from the cache length, wrong for left-padded batches)"
    )
    return {"model": custom}, note


# Rotary scalings whose frequencies transformers picks in Python from the sequence length: the
# export traces one short dummy sequence, so the graph keeps the short-sequence choice.
LENGTH_DEPENDENT_ROPE = ("longrope", "dynamic")


def rope_note(config: dict) -> str | None:
    """A warning for a config.json whose rotary scaling depends on the sequence length (Phi-3's
    128k `longrope`, `dynamic` NTK scaling): past the original context the ONNX graph still uses
    the short-sequence frequencies, and its logits differ from PyTorch's there."""
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind not in LENGTH_DEPENDENT_ROPE:
        return None
    limit = config.get("original_max_position_embeddings") or scaling.get("original_max_position_embeddings")
    past = f"past {limit} tokens" if limit else "past the original context"
    return (
        f"note: {kind} rotary scaling is exported as traced on a short sequence: {past} the ONNX "
        "model's answers differ from PyTorch's (docs/families.md)"
    )
