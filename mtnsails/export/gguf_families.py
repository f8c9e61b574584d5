"""The model families the GGUF export writes, and how each one's Hugging Face checkpoint becomes
what llama.cpp loads.

For every family: the GGUF architecture, the hyperparameters llama.cpp reads for it (each from
its config.json key), and the few changes its tensors need on the way. Those changes are
llama.cpp's conventions (read from its loaders and its converter), not choices made here:
- GPT-2 stores its linear layers as Conv1D, [in, out]; GGUF wants [out, in] like every other.
- Llama's rotary embedding in llama.cpp rotates neighbouring pairs of a head, Hugging Face's
  rotates the two halves, so the rows of q_proj and k_proj are interleaved to match.
- Gemma's RMSNorm multiplies by (1 + weight); llama.cpp's multiplies by the weight, so 1 is
  added to every norm weight. Gemma's embedding scale (sqrt of the width) is applied inside
  llama.cpp, as in transformers, so the embedding is written as it is.
- Phi-3 keeps q/k/v fused (qkv_proj) and gate/up fused (gate_up_proj), as llama.cpp expects.
A setting llama.cpp cannot reproduce (another activation, rope scaling it does not share, an
attention scale it hard-codes) is refused with a one-line MtnsailsError before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gguf
import numpy as np

from mtnsails.core.errors import MtnsailsError

# Buffers that are no weights (a causal mask, cached rotary frequencies): never written.
SKIPPED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
EMBEDDING = "token_embd.weight"
OUTPUT = "output.weight"
ROPE_FREQS = "rope_freqs.weight"


@dataclass(frozen=True)
class Family:
    """How one model family is written; `model_types` are config.json's "model_type" values."""

    label: str
    model_types: tuple[str, ...]
    arch: gguf.MODEL_ARCH
    write_hparams: Callable[[gguf.GGUFWriter, dict], None]
    check: Callable[[dict], None] = lambda config: None
    transposed: tuple[str, ...] = ()  # name endings stored [in, out] (GPT-2's Conv1D)
    permute_qk: bool = False  # Llama's rotary layout (see the module docstring)
    norm_shift: float = 0.0  # added to every "*norm.weight" (Gemma)
    output_is_embedding: bool = False  # llama.cpp always uses the embedding as the output layer
    extra_tensors: Callable[[dict], dict[str, np.ndarray]] = lambda config: {}  # computed, not stored
    notes: Callable[[dict], list[str]] = lambda config: []  # what the user should know, one line each


def _get(config: dict, *keys: str, default: object = None) -> object:
    """The first of `keys` that config.json sets; `default` when none is, MtnsailsError when
    there is no default either (a config that lacks what the family needs)."""
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    if default is None:
        raise MtnsailsError(f"config.json has no {' or '.join(keys)}, which a GGUF file of this model needs")
    return default


def _refuse(config: dict, problem: str) -> None:
    raise MtnsailsError(f"cannot write {config.get('model_type')} as GGUF: {problem}")


def _rope_scaling(config: dict, allowed: tuple[str, ...] = ("linear",)) -> tuple[str, dict] | None:
    """(type, settings) of config.json's rope scaling; None without any. Linear scaling is a
    factor llama.cpp reads; Llama 3's is a table of per-frequency factors (`llama3_rope_factors`);
    others need tables this export does not build."""
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or None
    kind = scaling and (scaling.get("rope_type") or scaling.get("type"))
    if not kind or kind == "default":
        return None
    if kind not in allowed:
        _refuse(config, f"rope scaling {kind!r} is not supported (only {' and '.join(allowed)})")
    return kind, scaling


def llama3_rope_factors(config: dict) -> np.ndarray:
    """Llama 3's rope scaling as llama.cpp takes it (the rope_freqs tensor): by how much each
    rotary frequency is divided. Wavelengths shorter than the original context / high_freq_factor
    keep their frequency, those longer than original context / low_freq_factor are divided by
    `factor`, and those between blend the two smoothly."""
    _, scaling = _rope_scaling(config, allowed=("llama3",))
    _, _, width = _heads(config)
    base = float(_get(config, "rope_theta", default=10000.0))
    frequencies = 1.0 / base ** (np.arange(0, width, 2, dtype=np.float64) / width)
    factor = float(scaling.get("factor", 8.0))
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    context = float(scaling.get("original_max_position_embeddings", 8192))
    wavelengths = 2 * np.pi / frequencies
    smooth = (context / wavelengths - low) / (high - low)
    blended = 1 / ((1 - smooth) / factor + smooth)
    factors = np.where(wavelengths < context / high, 1.0, np.where(wavelengths > context / low, factor, blended))
    return factors.astype(np.float32)


def _check_activation(config: dict, *keys: str, allowed: tuple[str, ...]) -> None:
    value = next((config[key] for key in keys if config.get(key) is not None), allowed[0])
    if value not in allowed:
        _refuse(config, f"activation {value!r} differs from llama.cpp's ({' or '.join(allowed)})")


def _heads(config: dict) -> tuple[int, int, int]:
    """(query heads, key/value heads, head width)."""
    heads = int(_get(config, "num_attention_heads"))
    kv_heads = int(_get(config, "num_key_value_heads", default=heads))
    width = int(_get(config, "head_dim", default=int(_get(config, "hidden_size")) // heads))
    return heads, kv_heads, width


def _write_common(writer: gguf.GGUFWriter, config: dict) -> None:
    """The hyperparameters every family after GPT-2 shares (Llama's config names)."""
    heads, kv_heads, width = _heads(config)
    writer.add_block_count(int(_get(config, "num_hidden_layers")))
    writer.add_context_length(int(_get(config, "max_position_embeddings")))
    writer.add_embedding_length(int(_get(config, "hidden_size")))
    writer.add_feed_forward_length(int(_get(config, "intermediate_size")))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(width)
    writer.add_value_length(width)
    writer.add_layer_norm_rms_eps(float(_get(config, "rms_norm_eps")))
    writer.add_rope_freq_base(float(_get(config, "rope_theta", default=10000.0)))
    writer.add_rope_dimension_count(int(width * float(_get(config, "partial_rotary_factor", default=1.0))))
    scaling = _rope_scaling(config, allowed=("linear", "llama3"))
    if scaling and scaling[0] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling[1]["factor"]))


# -- GPT-2 -------------------------------------------------------------------------------------


def _gpt2_check(config: dict) -> None:
    _check_activation(config, "activation_function", allowed=("gelu_new", "gelu_pytorch_tanh"))
    if config.get("scale_attn_by_inverse_layer_idx") or config.get("scale_attn_weights") is False:
        _refuse(config, "its attention scale differs from 1/sqrt(head width), the only one llama.cpp has")


def _gpt2_hparams(writer: gguf.GGUFWriter, config: dict) -> None:
    width = int(_get(config, "n_embd"))
    heads = int(_get(config, "n_head"))
    writer.add_block_count(int(_get(config, "n_layer")))
    # newer GPT2Config files have no n_ctx (llama.cpp's own converter needs it): n_positions is the
    # size of the position embedding, the context the model can read
    writer.add_context_length(int(_get(config, "n_positions", "n_ctx")))
    writer.add_embedding_length(width)
    writer.add_feed_forward_length(int(_get(config, "n_inner", default=4 * width)))
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_eps(float(_get(config, "layer_norm_epsilon", default=1e-5)))


# -- Llama, Qwen2, Qwen3 -----------------------------------------------------------------------


def _llama_check(config: dict) -> None:
    _check_activation(config, "hidden_act", allowed=("silu",))
    if config.get("mlp_bias"):
        _refuse(config, "its MLP has biases (mlp_bias), which llama.cpp's Llama has not")
    _rope_scaling(config, allowed=("linear", "llama3"))


def _llama_extra(config: dict) -> dict[str, np.ndarray]:
    scaling = _rope_scaling(config, allowed=("linear", "llama3"))
    return {ROPE_FREQS: llama3_rope_factors(config)} if scaling and scaling[0] == "llama3" else {}


def _smollm3_check(config: dict) -> None:
    """llama.cpp leaves out rotary embeddings on every 4th layer of SmolLM3, whatever the config."""
    _llama_check(config)
    if config.get("use_sliding_window"):
        _refuse(config, "sliding-window attention (use_sliding_window) is not written")
    layers = int(_get(config, "num_hidden_layers"))
    expected = [int((i + 1) % 4 != 0) for i in range(layers)]
    if list(config.get("no_rope_layers") or expected) != expected:
        _refuse(config, "its layers without rotary embedding differ from llama.cpp's (every 4th)")


def _window_note(config: dict) -> list[str]:
    """llama.cpp attends the whole context for Mistral and Phi-3 (its converter writes no window,
    or 0): where the model slides a shorter window, the two part only past it."""
    window, context = config.get("sliding_window"), int(_get(config, "max_position_embeddings"))
    if not window or int(window) >= context:
        return []
    return [
        f"llama.cpp attends the whole context where this model slides a {window}-token window: it "
        f"answers as the model does while a conversation fits in {window} tokens"
    ]


def _qwen_check(config: dict) -> None:
    _check_activation(config, "hidden_act", allowed=("silu",))
    if config.get("use_sliding_window"):
        _refuse(config, "sliding-window attention (use_sliding_window) is not written")
    _rope_scaling(config)


# -- Gemma -------------------------------------------------------------------------------------


def _gemma_check(config: dict) -> None:
    _check_activation(config, "hidden_activation", "hidden_act", allowed=("gelu_pytorch_tanh", "gelu_new", "gelu_fast"))
    if config.get("rope_scaling"):
        _refuse(config, "rope scaling is not written for Gemma")
    heads, _, width = _heads(config)
    scalar = config.get("query_pre_attn_scalar")
    # llama.cpp scales queries by 1/sqrt(head width) (by 1/sqrt(width/heads) for the 27B layout)
    if scalar is not None and int(scalar) not in (width, int(config["hidden_size"]) // heads):
        _refuse(config, f"query_pre_attn_scalar {scalar} differs from the head width {width}, which llama.cpp uses")


def _check_layer_pattern(config: dict, period: int) -> None:
    """llama.cpp derives which layers slide from a period (every `period`-th layer is global);
    refuse a model whose layer_types say otherwise."""
    layer_types = config.get("layer_types")
    if layer_types is None:
        return
    expected = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(len(layer_types))]
    if list(layer_types) != expected:
        _refuse(config, f"its sliding/global layer pattern differs from llama.cpp's (every {period}th global)")


def _gemma2_check(config: dict) -> None:
    _gemma_check(config)
    _check_layer_pattern(config, 2)
    if config.get("attn_logit_softcapping") is None or config.get("final_logit_softcapping") is None:
        _refuse(config, "llama.cpp caps Gemma 2's logits always; this config leaves them uncapped")


def _gemma3_check(config: dict) -> None:
    _gemma_check(config)
    if config.get("attn_logit_softcapping") is not None:
        _refuse(config, "attention logit soft-capping is not part of Gemma 3 in llama.cpp")
    pattern = config.get("sliding_window_pattern") or 6
    _check_layer_pattern(config, int(pattern))
    if int(pattern) != 6:
        _refuse(config, f"sliding_window_pattern {pattern} differs from llama.cpp's 6")


def _gemma_hparams(writer: gguf.GGUFWriter, config: dict) -> None:
    _write_common(writer, config)


def _gemma2_hparams(writer: gguf.GGUFWriter, config: dict) -> None:
    _write_common(writer, config)
    writer.add_attn_logit_softcapping(float(config["attn_logit_softcapping"]))
    writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    writer.add_sliding_window(int(_get(config, "sliding_window", default=4096)))


def _gemma3_hparams(writer: gguf.GGUFWriter, config: dict) -> None:
    _write_common(writer, config)
    if config.get("final_logit_softcapping") is not None:
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    writer.add_sliding_window(int(_get(config, "sliding_window", default=4096)))
    writer.add_rope_freq_base_swa(float(_get(config, "rope_local_base_freq", default=10000.0)))


# -- Phi-3 -------------------------------------------------------------------------------------


def _phi3_check(config: dict) -> None:
    _check_activation(config, "hidden_act", allowed=("silu",))
    if config.get("rope_scaling"):
        _refuse(config, "long-context rope scaling (rope_scaling) is not written")


def _phi3_hparams(writer: gguf.GGUFWriter, config: dict) -> None:
    _write_common(writer, config)
    context = int(_get(config, "max_position_embeddings"))
    writer.add_rope_scaling_orig_ctx_len(int(_get(config, "original_max_position_embeddings", default=context)))
    # llama.cpp ignores Phi-3's sliding window today (see _window_note); its converter writes 0
    writer.add_sliding_window(int(config.get("sliding_window") or 0))


A = gguf.MODEL_ARCH
FAMILIES = (
    Family(
        "GPT-2",
        ("gpt2",),
        A.GPT2,
        _gpt2_hparams,
        _gpt2_check,
        transposed=("c_attn.weight", "c_proj.weight", "c_fc.weight"),
    ),
    Family("Llama", ("llama",), A.LLAMA, _write_common, _llama_check, permute_qk=True, extra_tensors=_llama_extra),
    # Mistral's checkpoints are Llama's layout; llama.cpp's converter writes them as Llama too
    Family("Mistral", ("mistral",), A.LLAMA, _write_common, _llama_check, permute_qk=True, notes=_window_note),
    Family("SmolLM3", ("smollm3",), A.SMOLLM3, _write_common, _smollm3_check, permute_qk=True),
    Family("Qwen2", ("qwen2",), A.QWEN2, _write_common, _qwen_check),
    Family("Qwen3", ("qwen3",), A.QWEN3, _write_common, _qwen_check),
    Family("Gemma", ("gemma",), A.GEMMA, _gemma_hparams, _gemma_check, norm_shift=1.0, output_is_embedding=True),
    Family("Gemma 2", ("gemma2",), A.GEMMA2, _gemma2_hparams, _gemma2_check, norm_shift=1.0, output_is_embedding=True),
    Family("Gemma 3", ("gemma3_text",), A.GEMMA3, _gemma3_hparams, _gemma3_check, norm_shift=1.0),
    Family("Phi-3", ("phi3",), A.PHI3, _phi3_hparams, _phi3_check, notes=_window_note),
)


def supported_families() -> str:
    """The families as an error message lists them."""
    return ", ".join(family.label for family in FAMILIES)


def family_of(config: dict) -> Family:
    """The family of a config.json, checked; MtnsailsError naming the supported ones otherwise."""
    model_type = config.get("model_type")
    family = next((family for family in FAMILIES if model_type in family.model_types), None)
    if family is None:
        raise MtnsailsError(
            f"cannot write model type {model_type!r} as GGUF: supported families are {supported_families()}"
        )
    family.check(config)
    return family


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from [first half, second half] to interleaved pairs (see module docstring)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def gguf_names(family: Family, config: dict, weights) -> dict[str, str]:
    """Hugging Face name -> GGUF name of every tensor the file gets, read from names alone but
    for one comparison: an output layer equal to the embedding (tied) is left out, and llama.cpp
    then reuses the embedding, as the model does. MtnsailsError for a tensor llama.cpp has no
    name for, or an output layer a family cannot keep apart from its embedding."""
    names = gguf.get_tensor_name_map(family.arch, int(_get(config, "n_layer", "num_hidden_layers")))
    targets = {}
    for name in weights:
        if name.endswith(SKIPPED_SUFFIXES):
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise MtnsailsError(
                f"cannot write tensor {name} as GGUF: {family.label} has no such tensor in llama.cpp "
                "(an unusual layout or an adapter not merged into the model)"
            )
        targets[name] = target
    embedding = next((name for name, target in targets.items() if target == EMBEDDING), None)
    output = next((name for name, target in targets.items() if target == OUTPUT), None)
    if embedding is None:
        raise MtnsailsError(f"cannot write this {family.label} model as GGUF: it has no token embedding")
    if output is not None and np.array_equal(weights[output], weights[embedding]):
        del targets[output]
    elif output is not None and family.output_is_embedding:
        raise MtnsailsError(
            f"cannot write this {family.label} model as GGUF: its output layer differs from its "
            "embedding, and llama.cpp always uses the embedding as the output layer"
        )
    return targets


def gguf_tensors(family: Family, config: dict, weights, targets: dict[str, str]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (GGUF name, float32 array) for each of `targets` (gguf_names), llama.cpp's way,
    one tensor at a time. `weights` maps Hugging Face names to arrays (SafetensorsWeights)."""
    heads, kv_heads = (int(config.get("num_attention_heads") or 0), int(config.get("num_key_value_heads") or 0))
    for name, target in targets.items():
        data = weights[name]
        if name.endswith(family.transposed):
            data = data.T
        if family.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute(data, heads)
        elif family.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute(data, kv_heads or heads)
        if family.norm_shift and name.endswith("norm.weight"):
            data = data + np.float32(family.norm_shift)
        yield target, np.ascontiguousarray(data, dtype=np.float32)
