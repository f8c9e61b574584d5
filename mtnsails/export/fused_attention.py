"""One fused attention node per layer, whose KV cache can grow in place.

optimum exports GPT-2's attention as separate nodes: every step concatenates the whole cache
with the new key and value (`present = Concat(past, new)`), transposes and scales the key cache
again for the scores, and int8 quantization then quantizes that cache too. Those copies grow
with the history (with 900 tokens of history a step cost 1.7x (fp32) to 3x (int8, int4) a step
with 20). `fuse_attention` replaces each layer's attention by onnxruntime's GroupQueryAttention
(as many key/value heads as query heads, i.e. plain multi-head attention): given a past buffer
that is also bound as the present output, it writes the new key and value into that buffer and
reads the cache where it lies. The graph keeps its inputs and outputs (attention_mask,
position_ids, past_key_values.*, present.*), so a caller that binds a fresh present every step
(`BatchDecoder`) still works; the attention mask becomes an additive bias, so left padding
stays hidden.
"""

from __future__ import annotations

import os
from pathlib import Path

from mtnsails.core.files import read_json_object
from mtnsails.export.attention_graph import declare, fused_node, layer_index, mask_nodes, perm, prune
from mtnsails.export.rotary_attention import fuse_rotary, rotary_unfusable_reason
from mtnsails.inference.generation import PAST_PREFIX, PRESENT_PREFIX


def unfusable_reason(config: dict) -> str | None:
    """Why a model of this config.json keeps its exported attention (None: GPT-2 with its usual
    1/sqrt(head size) scale, what the fused node computes, or a rotary family that
    rotary_attention rewrites)."""
    model_type = config.get("model_type")
    if model_type != "gpt2":
        return rotary_unfusable_reason(config)
    if (
        not config.get("scale_attn_weights", True)
        or config.get("scale_attn_by_inverse_layer_idx")
        or config.get("reorder_and_upcast_attn")
    ):
        return "GPT-2 with another attention scale than 1/sqrt(head size), the only one the fused node computes"
    return None


def _match_layer(index: str, producers: dict, consumers: dict) -> dict | None:
    """The tensors around layer `index`'s attention: query/key/value [batch, positions, hidden]
    from one Split, and the attention output [batch, positions, hidden]; None when the layer is
    not the exported pattern (Concat(past, Transpose(Reshape(new))) per cache, probabilities @
    present value, Transpose, Reshape)."""
    found = {}
    splits = set()
    for kind in ("key", "value"):
        concat = producers.get(f"{PRESENT_PREFIX}{index}.{kind}")
        if concat is None or concat.op_type != "Concat" or list(concat.input[:1]) != [f"{PAST_PREFIX}{index}.{kind}"]:
            return None
        transpose = producers.get(concat.input[1])
        if transpose is None or transpose.op_type != "Transpose" or perm(transpose) != [0, 2, 1, 3]:
            return None
        reshape = producers.get(transpose.input[0])
        split = producers.get(reshape.input[0]) if reshape is not None and reshape.op_type == "Reshape" else None
        if split is None or split.op_type != "Split" or len(split.output) != 3:
            return None
        splits.add(split.name or id(split))
        found[kind] = reshape.input[0]
        found["split"] = split
    split = found.pop("split")
    if len(splits) != 1 or list(split.output[1:]) != [found["key"], found["value"]]:
        return None
    found["query"] = split.output[0]
    weighted = [node for node in consumers.get(f"{PRESENT_PREFIX}{index}.value", []) if node.op_type == "MatMul"]
    if len(weighted) != 1:
        return None
    transpose = consumers.get(weighted[0].output[0], [])
    if len(transpose) != 1 or transpose[0].op_type != "Transpose" or perm(transpose[0]) != [0, 2, 1, 3]:
        return None
    reshape = [node for node in consumers.get(transpose[0].output[0], []) if node.op_type != "Shape"]
    if len(reshape) != 1 or reshape[0].op_type != "Reshape":
        return None
    found["output"] = reshape[0].output[0]
    return found


def fuse_attention(model_file: str | os.PathLike, config_file: str | os.PathLike) -> bool:
    """Rewrite `model_file` in place with one GroupQueryAttention node per layer; True when done.

    False (the file untouched) for models other than GPT-2 with its standard attention scale, or
    a graph whose attention is not the pattern optimum exports for it (`attention_fusion` says why).
    """
    return attention_fusion(model_file, config_file) is None


def attention_fusion(model_file: str | os.PathLike, config_file: str | os.PathLike) -> str | None:
    """`fuse_attention`, returning None when the attention was fused, else why it was not (the
    file then untouched). GPT-2 is rewritten here, the rotary families by rotary_attention."""
    import onnx
    from onnx import helper

    config = read_json_object(Path(config_file))
    reason = unfusable_reason(config)
    if reason is not None:
        return reason
    model = onnx.load(str(model_file), load_external_data=False)
    if "attention_mask" not in {value.name for value in model.graph.input}:
        return "the graph has no attention_mask input"
    if config.get("model_type") == "gpt2":
        reason = _fuse_gpt2(model)
    else:
        reason = fuse_rotary(model, config, Path(config_file).parent, Path(model_file).parent)
    if reason is not None:
        return reason
    prune(model.graph)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(model_file))
    return None


def _fuse_gpt2(model) -> str | None:
    """Rewrite GPT-2's attention in `model` (in memory); None when done, else why not (unchanged)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inputs = {value.name: value for value in graph.input}
    indices, producers, consumers = layer_index(graph)
    layers = {index: _match_layer(index, producers, consumers) for index in indices}
    if not layers or any(layer is None for layer in layers.values()):
        return "the graph's attention is not the pattern optimum exports for GPT-2"
    cache_type = inputs[f"{PAST_PREFIX}{indices[0]}.key"].type.tensor_type
    heads, head_size = cache_type.shape.dim[1].dim_value, cache_type.shape.dim[3].dim_value
    if not heads or not head_size or head_size % 8:
        # onnxruntime's CPU kernel loads such a node but refuses to run it: "head_size must be a
        # multiple of 8" on the first step, so the model keeps its exported attention.
        return f"head size {head_size} is not a multiple of 8 (onnxruntime's CPU kernel refuses it)"
    before, mask = mask_nodes(helper, numpy_helper, graph)
    for index, layer in layers.items():
        # The fused node takes the place of the attention output's Reshape: every input it reads
        # is computed before that, and only the output projection (after it) reads its output.
        nodes = list(graph.node)
        position = next(i for i, node in enumerate(nodes) if layer["output"] in node.output)
        graph.node.insert(
            position,
            fused_node(
                helper,
                index,
                (layer["query"], layer["key"], layer["value"]),
                mask,
                layer["output"],
                num_heads=heads,
                kv_num_heads=heads,
            ),
        )
        del graph.node[position + 1]
        declare(graph, helper, layer["output"], cache_type.elem_type, heads * head_size)
        for name in (f"{PRESENT_PREFIX}{index}.key", f"{PRESENT_PREFIX}{index}.value"):
            concat = next(i for i, node in enumerate(graph.node) if name in node.output and node.op_type == "Concat")
            del graph.node[concat]
    for offset, node in enumerate(before):  # from graph inputs only: first
        graph.node.insert(offset, node)
    return None
