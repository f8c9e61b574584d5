"""Graph pieces the attention rewrites share: the fused op's name, the attention mask as the
fused node reads it, value types for contrib-op outputs, constants read from the graph, and
pruning what the rewrite left unread."""

from __future__ import annotations

import numpy as np

from mtnsails.inference.generation import PAST_PREFIX, PRESENT_PREFIX

FUSED_OP = "GroupQueryAttention"


def perm(node) -> list[int]:
    """A Transpose node's permutation ([] for another node)."""
    return next((list(attribute.ints) for attribute in node.attribute if attribute.name == "perm"), [])


def mask_nodes(helper, numpy_helper, graph) -> tuple[list, dict]:
    """Nodes turning attention_mask [batch, total] into what the fused node reads: an additive
    bias [batch, 1, positions, total] (0 where attended, the lowest float where masked), each
    row's total length minus one (all rows are as long as the mask) and the total length."""
    constants = {
        "fa_one_i64": np.array([1], np.int64),
        "fa_one_i32": np.array(1, np.int32),
        "fa_one_f": np.array(1.0, np.float32),
        "fa_masked": np.array(np.finfo(np.float32).min, np.float32),
        "fa_axis0": np.array([0], np.int64),
        "fa_axis1": np.array([1], np.int64),
        "fa_axis2": np.array([2], np.int64),
        "fa_total_index": np.array(1, np.int64),
        "fa_bias_axes": np.array([1, 2], np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    node = helper.make_node
    nodes = [
        node("Shape", ["attention_mask"], ["fa_mask_shape"]),
        node("Gather", ["fa_mask_shape", "fa_total_index"], ["fa_total_i64"], axis=0),
        node("Cast", ["fa_total_i64"], ["fa_total"], to=6),  # int32, as the fused node reads it
        node("Sub", ["fa_total", "fa_one_i32"], ["fa_last"]),
        node("Slice", ["fa_mask_shape", "fa_axis0", "fa_axis1"], ["fa_batch"]),
        node("Expand", ["fa_last", "fa_batch"], ["fa_seqlens"]),
        node("Cast", ["attention_mask"], ["fa_mask_f"], to=1),
        node("Sub", ["fa_one_f", "fa_mask_f"], ["fa_hidden"]),
        node("Mul", ["fa_hidden", "fa_masked"], ["fa_bias_2d"]),
        node("Unsqueeze", ["fa_bias_2d", "fa_bias_axes"], ["fa_bias_4d"]),
        node("Shape", ["input_ids"], ["fa_ids_shape"]),
        node("Slice", ["fa_ids_shape", "fa_axis1", "fa_axis2"], ["fa_positions"]),
        node("Unsqueeze", ["fa_total_i64", "fa_axis0"], ["fa_total_1d"]),
        node("Concat", ["fa_batch", "fa_one_i64", "fa_positions", "fa_total_1d"], ["fa_bias_shape"], axis=0),
        node("Expand", ["fa_bias_4d", "fa_bias_shape"], ["fa_bias"]),
    ]
    return nodes, {"seqlens_k": "fa_seqlens", "total": "fa_total", "bias": "fa_bias"}


def declare(graph, helper, name: str, elem_type: int, width: int) -> None:
    """Give `name` the type [batch, positions, width]: onnx's shape inference knows no contrib
    op, and the quantizers need the type of what such a node writes."""
    for stale in [info for info in graph.value_info if info.name == name]:
        graph.value_info.remove(stale)
    graph.value_info.append(helper.make_tensor_value_info(name, elem_type, ["batch_size", "sequence_length", width]))


def prune(graph) -> None:
    """Remove nodes nothing reads (the unfused attention and its mask) and unused initializers."""
    outputs = {output.name for output in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if not any(name in used for name in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for tensor in [tensor for tensor in graph.initializer if tensor.name not in used]:
        graph.initializer.remove(tensor)


def constant_value(graph, name: str):
    """The value of `name` as a list when a Constant node or an initializer holds it, else None."""
    from onnx import helper, numpy_helper

    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:  # value, value_ints, value_int, ...
            value = helper.get_attribute_value(node.attribute[0])
            return numpy_helper.to_array(value).tolist() if hasattr(value, "data_type") else value
    tensor = next((tensor for tensor in graph.initializer if tensor.name == name), None)
    return numpy_helper.to_array(tensor).tolist() if tensor is not None else None


def fused_node(helper, index: str, qkv: tuple[str, str, str], mask: dict, output: str, **attributes):
    """Layer `index`'s GroupQueryAttention: query, key and value [batch, positions, width] in,
    the attention output and the layer's present key/value out; the cache is the layer's past
    input and the mask what `mask_nodes` made. `attributes`: num_heads, kv_num_heads, ..."""
    return helper.make_node(
        FUSED_OP,
        [*qkv, f"{PAST_PREFIX}{index}.key", f"{PAST_PREFIX}{index}.value", mask["seqlens_k"], mask["total"], "", "", ""]
        + [mask["bias"]],
        [output, f"{PRESENT_PREFIX}{index}.key", f"{PRESENT_PREFIX}{index}.value"],
        name=f"layer_{index}_attention",
        domain="com.microsoft",
        **attributes,
    )


def layer_index(graph) -> tuple[list[str], dict, dict]:
    """The layer numbers (from the present.N.key outputs), each tensor's producing node and each
    tensor's consuming nodes."""
    indices = [
        output.name[len(PRESENT_PREFIX) : -len(".key")]
        for output in graph.output
        if output.name.startswith(PRESENT_PREFIX) and output.name.endswith(".key")
    ]
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return indices, producers, consumers
