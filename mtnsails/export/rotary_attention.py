"""One GroupQueryAttention node per layer for the rotary families optimum exports alike.

optimum exports the attention of Llama (SmolLM2), Mistral, Qwen2, Qwen3, Phi-3, SmolLM3, Gemma,
Gemma 2 and Gemma 3 as about a hundred nodes per layer: three projection MatMuls, the rotary
embedding as Slice/Neg/Concat/Mul/Add on query and key (its cos/sin recomputed from position_ids
every step), the cache as Concat(past, new), the key/value heads repeated for grouped-query
attention (Unsqueeze, Expand, Reshape), the causal mask built from attention_mask, then MatMul,
Softmax, MatMul. `fuse_rotary` replaces that, layer by layer, with:

- one MatMul on the query, key and value weights side by side (one int8 or int4 matmul after
  quantization instead of three) and a Split;
- onnxruntime's RotaryEmbedding on the query and on the key, reading the graph's position_ids:
  GroupQueryAttention's own rotary (`do_rotary`) numbers a first prompt's positions from the
  first row's first position id for every row, so a left-padded row of a batch would be rotated
  by its padding and its cache would not match the positions the decode steps give it;
- GroupQueryAttention (num_heads / kv_num_heads from the graph's cache), which appends to the
  past buffer in place when that buffer is also bound as the present output, with
  attention_mask as an additive bias, as for GPT-2 (fused_attention).

Per family: Phi-3's q/k/v already come from one packed MatMul (its Slices are kept, no Split);
SmolLM3's layers without rotary (no_rope_layers) get no RotaryEmbedding; Gemma 2's and 3's
attention scale (query_pre_attn_scalar) becomes the node's `scale`, their sliding-window layers
(layer_types) its `local_window_size`, as Mistral's window on every layer; Gemma 3's sliding
layers rotate with a second cos/sin table (rope_local_base_freq). Qwen3's and Gemma 3's per-head
query/key RMS norms stay as exported, between the Split and the rotary. Gemma 2's attention
soft-capping is not in optimum's export (its sdpa path drops it, as PyTorch's sdpa attention
does), so no `softcap` is set; a graph whose scores are soft-capped does not match and stays as
exported. The graph keeps its inputs and outputs. What the rewrite does not compute (rotary
scalings whose frequencies depend on the sequence length, partial rotary, Qwen's per-layer
sliding windows) leaves the model as exported, with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtnsails.export.attention_graph import constant_value, declare, fused_node, layer_index, mask_nodes, perm
from mtnsails.inference.generation import PAST_PREFIX, PRESENT_PREFIX

ROTARY_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "gemma", "gemma2", "gemma3_text")
# Rotary scalings whose frequencies are fixed (transformers computes them once from the config):
# they fit a cos/sin table. "dynamic" and "longrope" pick them from the sequence length.
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
COS_CACHE, SIN_CACHE = "rotary_cos_cache", "rotary_sin_cache"
# Gemma 3's sliding-window layers rotate with their own base (rope_local_base_freq)
LOCAL_COS_CACHE, LOCAL_SIN_CACHE = "rotary_local_cos_cache", "rotary_local_sin_cache"


def rope_kind(config: dict) -> str:
    """The config's rotary scaling type ("default" without one)."""
    scaling = config.get("rope_scaling") or {}
    return scaling.get("rope_type") or scaling.get("type") or "default"


def rotary_unfusable_reason(config: dict) -> str | None:
    """Why a rotary-family config.json keeps its exported attention; None when it is fused."""
    model_type = config.get("model_type")
    if model_type not in ROTARY_FAMILIES:
        return f"{model_type}: the rewrite matches the attention of {', '.join(ROTARY_FAMILIES)} and GPT-2 only"
    kind = rope_kind(config)
    if kind not in STATIC_ROPE:
        return f"{kind} rotary scaling picks its frequencies from the sequence length; the fused tables are fixed"
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        return "partial rotary embedding (part of each head unrotated) is not what the rewrite computes"
    if config.get("use_sliding_window"):
        return "sliding windows on some layers only (Qwen's max_window_layers) are not what the rewrite computes"
    if config.get("pretraining_tp", 1) != 1:
        return "pretraining_tp splits each projection: not the pattern the rewrite matches"
    return None


def rotary_layers(config: dict, count: int) -> list[bool]:
    """Whether each of `count` layers rotates its query and key (SmolLM3's no_rope_layers: 0 for
    a layer without rotary positions)."""
    flags = config.get("no_rope_layers") if config.get("model_type") == "smollm3" else None
    return [bool(flag) for flag in flags] if flags else [True] * count


def layer_windows(config, count: int) -> list[int | None]:
    """Each of `count` layers' attention window in tokens (None: the whole cache), from the
    transformers config: Mistral's sliding_window on every layer, Gemma 2's and 3's on the layers
    that layer_types marks sliding_attention."""
    window = getattr(config, "sliding_window", None)
    if not window or config.model_type not in ("mistral", "gemma2", "gemma3_text"):
        return [None] * count
    if config.model_type == "mistral":
        return [int(window)] * count
    return [int(window) if kind == "sliding_attention" else None for kind in config.layer_types]


def rotary_tables(config_dir: str | Path, positions: int, local: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [positions, head_dim / 2] as transformers computes them for this config (its
    own rope init function, the attention scaling of yarn folded in), in float32; `local`: Gemma
    3's sliding layers' (rope_local_base_freq, no scaling), as its model builds them."""
    import torch
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = AutoConfig.from_pretrained(str(config_dir))
    if local:
        config.rope_theta, config.rope_scaling = config.rope_local_base_freq, {"rope_type": "default"}
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_kind(config.to_dict())](config, "cpu")
    # as the model's rotary embedding does: float32 positions times float32 frequencies
    angles = torch.arange(positions, dtype=torch.int64).float()[:, None] * inv_freq.float()[None, :]
    return (angles.cos() * scaling).numpy(), (angles.sin() * scaling).numpy()


def _heads(name: str, producers: dict) -> str | None:
    """heads [batch, positions, heads, head_dim] when `name` is Transpose(heads) to [batch, heads,
    positions, head_dim], or a Slice of one (Phi-3 slices the rotated part: all of each head when
    partial_rotary_factor is 1); else None."""
    node = producers.get(name)
    if node is not None and node.op_type == "Slice":
        node = producers.get(node.input[0])
    if node is None or node.op_type != "Transpose" or perm(node) != [0, 2, 1, 3]:
        return None
    return node.input[0]


def _rotated(name: str, producers: dict) -> tuple[str, bool] | None:
    """(heads, True) when `name` is transformers' rotary embedding (x*cos + rotate_half(x)*sin,
    halves not interleaved; Phi-3 concatenates the unrotated rest, empty here, behind it) of
    Transpose(heads [batch, positions, heads, head_dim]); (x, False) when x [batch, heads,
    positions, head_dim] is not that Transpose (Gemma 3 normalises the heads after it); else None."""
    add = producers.get(name)
    if add is not None and add.op_type == "Concat" and len(add.input) == 2:
        if _heads(add.input[1], producers) is None:
            return None
        add = producers.get(add.input[0])
    if add is None or add.op_type != "Add":
        return None
    muls = [producers.get(input_name) for input_name in add.input]
    if len(muls) != 2 or any(mul is None or mul.op_type != "Mul" for mul in muls):
        return None
    for plain, rotated in (muls, muls[::-1]):
        for x in plain.input:
            for concat in (producers.get(input_name) for input_name in rotated.input):
                if concat is None or concat.op_type != "Concat" or len(concat.input) != 2:
                    continue
                neg, low = producers.get(concat.input[0]), producers.get(concat.input[1])
                high = producers.get(neg.input[0]) if neg is not None and neg.op_type == "Neg" else None
                if high is not None and low is not None and high.op_type == low.op_type == "Slice":
                    if high.input[0] == low.input[0] == x:
                        heads = _heads(x, producers)
                        return (x, False) if heads is None else (heads, True)
    return None


def _stored(name: str, producers: dict, initializers: dict) -> str | None:
    """The initializer `name` is, directly or through Identity nodes (the export writes one for
    each copy of an initializer whose values another already has); else None."""
    while name not in initializers:
        node = producers.get(name)
        if node is None or node.op_type != "Identity":
            return None
        name = node.input[0]
    return name


def _projection(name: str, producers: dict, initializers: dict) -> dict | None:
    """{input, weight, bias (or None), nodes, output, packed} when `name` is MatMul(input, W) [+ b],
    W and b initializers (packed None), or a Slice of such a MatMul (Phi-3's qkv_proj: packed is
    that MatMul, whose weight is already q/k/v side by side); else None."""
    node, bias, nodes, packed = producers.get(name), None, [], None
    if node is not None and node.op_type == "Slice":
        packed = _projection(node.input[0], producers, initializers)
        if packed is None or packed["packed"] is not None:
            return None
        return {**packed, "nodes": [], "output": name, "packed": packed["nodes"][0]}
    if node is not None and node.op_type == "Add":
        constant = [_stored(x, producers, initializers) for x in node.input]
        other = [x for x, stored in zip(node.input, constant) if stored is None]
        constant = [stored for stored in constant if stored is not None]
        if len(constant) != 1 or len(other) != 1:
            return None
        bias, nodes, node = constant[0], [node], producers.get(other[0])
    weight = _stored(node.input[1], producers, initializers) if node is not None and node.op_type == "MatMul" else None
    if weight is None:
        return None
    return {
        "input": node.input[0],
        "weight": weight,
        "bias": bias,
        "nodes": [node, *nodes],
        "output": name,
        "packed": None,
    }


def _biased(name: str, producers: dict, consumers: dict, initializers: dict) -> str:
    """Add(name, b)'s output when that is the only reader of `name` and b an initializer, else name."""
    readers = consumers.get(name, [])
    if len(readers) == 1 and readers[0].op_type == "Add":
        if any(_stored(x, producers, initializers) for x in readers[0].input):
            return readers[0].output[0]
    return name


def _ancestors(name: str, producers: dict, depth: int) -> set:
    """Tensor names `depth` producers or fewer above `name`."""
    seen, frontier = {name}, [name]
    for _ in range(depth):
        frontier = [
            input_name
            for tensor in frontier
            if tensor in producers
            for input_name in producers[tensor].input
            if input_name and input_name not in seen
        ]
        seen.update(frontier)
    return seen


def _follow(name: str, consumers: dict, op_type: str, through: tuple) -> object | None:
    """The one `op_type` node reading `name` directly or through nodes of `through` (Shape
    readers ignored); None when there is not exactly one."""
    found, frontier, seen = [], [name], set()
    while frontier:
        tensor = frontier.pop()
        for node in consumers.get(tensor, []):
            if node.op_type == op_type:
                found.append(node)
            elif node.op_type in through and id(node) not in seen:
                seen.add(id(node))
                frontier.extend(node.output)
    return found[0] if len(found) == 1 else None


def _scale(graph, name: str, producers: dict) -> tuple[str, float]:
    """(x, c) when `name` is Mul(x, constant c) (either order), else (name, 1.0)."""
    node = producers.get(name)
    if node is not None and node.op_type == "Mul":
        for constant, other in ((node.input[1], node.input[0]), (node.input[0], node.input[1])):
            value = constant_value(graph, constant)
            if value is not None and np.size(value) == 1:
                return other, float(np.ravel(value)[0])
    return name, 1.0


def _match_layer(graph, index: str, producers: dict, consumers: dict, initializers: dict) -> dict | str:
    """What the rewrite of layer `index` needs, or why its attention is not the exported pattern."""
    pattern = "not the pattern optimum exports for these families"
    found = {}
    value_concat = producers.get(f"{PRESENT_PREFIX}{index}.value")
    key_concat = producers.get(f"{PRESENT_PREFIX}{index}.key")
    for concat, kind in ((value_concat, "value"), (key_concat, "key")):
        if concat is None or concat.op_type != "Concat" or list(concat.input[:1]) != [f"{PAST_PREFIX}{index}.{kind}"]:
            return f"layer {index}: the cache is {pattern}"
    transpose = producers.get(value_concat.input[1])
    reshape = producers.get(transpose.input[0]) if transpose is not None and perm(transpose) == [0, 2, 1, 3] else None
    value = _projection(reshape.input[0], producers, initializers) if reshape and reshape.op_type == "Reshape" else None
    key_heads = _rotated(key_concat.input[1], producers)
    rotary = key_heads is not None
    if not rotary:  # SmolLM3's layers without rotary positions
        key_heads = _heads(key_concat.input[1], producers)
        key_heads = key_heads and (key_heads, True)
    # the attention output: probabilities @ (repeated) present value, Transpose, Reshape
    weighted = _follow(f"{PRESENT_PREFIX}{index}.value", consumers, "MatMul", ("Unsqueeze", "Expand", "Reshape"))
    if value is None or key_heads is None or weighted is None:
        return f"layer {index}: value, rotary key or attention output is {pattern}"
    after = consumers.get(weighted.output[0], [])
    output = [node for node in consumers.get(after[0].output[0], []) if node.op_type != "Shape"] if after else []
    if len(after) != 1 or perm(after[0]) != [0, 2, 1, 3] or len(output) != 1 or output[0].op_type != "Reshape":
        return f"layer {index}: the attention output is {pattern}"
    # probabilities: Softmax(scores + mask), NaN rows zeroed by Where(IsNaN) in recent exports
    probabilities = producers.get(weighted.input[0])
    if probabilities is not None and probabilities.op_type == "Where":
        probabilities = producers.get(probabilities.input[2])
    softmax = probabilities is not None and probabilities.op_type == "Softmax"
    add = producers.get(probabilities.input[0]) if softmax else None
    scores = None
    if add is not None and add.op_type == "Add":
        scores = next((producers[x] for x in add.input if x in producers and producers[x].op_type == "MatMul"), None)
    if scores is None:
        return f"layer {index}: the attention scores are {pattern} (soft-capped or otherwise changed)"
    query_rotated, query_scale = _scale(graph, scores.input[0], producers)
    _, key_scale = _scale(graph, scores.input[1], producers)
    query_heads = _rotated(query_rotated, producers) if rotary else _heads(query_rotated, producers)
    query_heads = (query_heads, True) if isinstance(query_heads, str) else query_heads
    if query_heads is None:
        return f"layer {index}: the rotary query is {pattern}"
    for kind, (heads, positions_first) in (("query", query_heads), ("key", key_heads)):
        found[f"{kind}_heads"], found[f"{kind}_positions_first"] = heads, positions_first
    found.update(value=value, output=output[0].output[0])
    found["scale"], found["rotary"] = query_scale * key_scale, rotary
    if value["packed"] is not None:  # the query and key: the other two Slices of the packed MatMul
        projections = [
            _projection(node.output[0], producers, initializers)
            for node in consumers.get(value["packed"].output[0], [])
            if node.op_type == "Slice" and node.output[0] != value["output"]
        ]
    else:  # the other two MatMuls reading the value projection's input
        projections = [
            _projection(_biased(node.output[0], producers, consumers, initializers), producers, initializers)
            for node in consumers.get(value["input"], [])
            if node.op_type == "MatMul" and node is not value["nodes"][0]
        ]
    for kind in ("query", "key"):
        above = _ancestors(found[f"{kind}_heads"], producers, 12)
        matches = [p for p in projections if p is not None and p["output"] in above]
        if len(matches) != 1:
            return f"layer {index}: no single {kind} projection found"
        found[kind] = matches[0]
        heads = producers.get(found[f"{kind}_heads"])
        # plain: the heads are Reshape(projection); Qwen3 normalises them first
        found[f"{kind}_plain"] = (
            heads is not None and heads.op_type == "Reshape" and heads.input[0] == matches[0]["output"]
        )
    if found["query"] is found["key"]:
        return f"layer {index}: the query and key projections are one"
    if any(found[kind]["packed"] is not value["packed"] for kind in ("query", "key")):
        return f"layer {index}: the query, key and value are not slices of one packed projection"
    return found


def _weights(graph, names: list, base_dir: Path) -> list[np.ndarray]:
    from onnx import numpy_helper

    tensors = {tensor.name: tensor for tensor in graph.initializer}
    return [numpy_helper.to_array(tensors[name], str(base_dir)) for name in names]


def fuse_rotary(model, config: dict, config_dir: Path, base_dir: Path) -> str | None:
    """Rewrite `model` (an onnx ModelProto, in memory) as the module says; None when done, else why
    not (the model then unchanged)."""
    from onnx import helper, numpy_helper

    reason = rotary_unfusable_reason(config)
    if reason is not None:
        return reason
    graph = model.graph
    inputs = {value.name: value for value in graph.input}
    if "position_ids" not in inputs:
        return "the graph has no position_ids input"
    indices, producers, consumers = layer_index(graph)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    layers = {index: _match_layer(graph, index, producers, consumers, initializers) for index in indices}
    if not layers:
        return "the graph has no present.N.key outputs"
    for layer in layers.values():
        if isinstance(layer, str):
            return layer
    cache_type = inputs[f"{PAST_PREFIX}{indices[0]}.key"].type.tensor_type
    kv_heads, head_size = cache_type.shape.dim[1].dim_value, cache_type.shape.dim[3].dim_value
    if not kv_heads or not head_size or head_size % 8:
        return f"head size {head_size} is not a multiple of 8 (onnxruntime's CPU kernel refuses it)"
    first = next(iter(layers.values()))
    query_width = _weights(graph, [first["query"]["weight"]], base_dir)[0].shape[1]
    if first["query"]["packed"] is not None:  # the packed q/k/v weight: the key and value are the rest
        query_width -= 2 * kv_heads * head_size
    if query_width % head_size:
        return f"query width {query_width} is not a whole number of {head_size}-wide heads"
    heads = query_width // head_size
    expected = rotary_layers(config, len(indices))
    for index, layer in layers.items():
        if layer["rotary"] != expected[int(index)]:
            return f"layer {index}: rotary in the graph {layer['rotary']}, in config.json {expected[int(index)]}"
    positions = int(config.get("max_position_embeddings") or 0)
    if positions <= 0:
        return "config.json has no max_position_embeddings: the rotary tables need a length"
    from transformers import AutoConfig

    windows = layer_windows(AutoConfig.from_pretrained(str(config_dir)), len(indices))
    if len(windows) != len(indices):
        return f"config.json's layer_types name {len(windows)} layers, the graph has {len(indices)}"
    attributes = {"num_heads": heads, "kv_num_heads": kv_heads}

    cos, sin = rotary_tables(config_dir, positions)
    graph.initializer.extend([numpy_helper.from_array(cos, COS_CACHE), numpy_helper.from_array(sin, SIN_CACHE)])
    local_rope = config.get("model_type") == "gemma3_text"
    if local_rope:
        cos, sin = rotary_tables(config_dir, positions, local=True)
        graph.initializer.extend(
            [numpy_helper.from_array(cos, LOCAL_COS_CACHE), numpy_helper.from_array(sin, LOCAL_SIN_CACHE)]
        )
    nodes_before_mask, mask = mask_nodes(helper, numpy_helper, graph)
    elem_type = cache_type.elem_type
    node = helper.make_node
    for index, layer in layers.items():
        window = windows[int(index)]
        tables = (LOCAL_COS_CACHE, LOCAL_SIN_CACHE) if local_rope and window else (COS_CACHE, SIN_CACHE)
        if layer["value"]["packed"] is None:
            _pack(graph, index, [layer["query"], layer["key"], layer["value"]], base_dir)
        attention = []
        rotated = {}
        for kind, count in (("query", heads), ("key", kv_heads)):
            source = layer[kind]["output"]
            if not layer[f"{kind}_plain"]:  # normalised heads [batch, positions, heads, head_dim] back to 3-D
                heads_name = layer[f"{kind}_heads"]
                if not layer[f"{kind}_positions_first"]:  # Gemma 3's, [batch, heads, positions, head_dim]
                    heads_name = f"layer_{index}_{kind}_normed_heads"
                    attention.append(node("Transpose", [layer[f"{kind}_heads"]], [heads_name], perm=[0, 2, 1, 3]))
                source = f"layer_{index}_{kind}_normed"
                attention.append(node("Reshape", [heads_name, "fa_flat_heads"], [source]))
            rotated[kind] = source
            if layer["rotary"]:
                rotated[kind] = f"layer_{index}_{kind}_rotated"
                attention.append(
                    node(
                        "RotaryEmbedding",
                        [source, "position_ids", *tables],
                        [rotated[kind]],
                        domain="com.microsoft",
                    )
                )
                declare(graph, helper, rotated[kind], elem_type, count * head_size)
        settings = dict(attributes)
        if abs(layer["scale"] * np.sqrt(head_size) - 1) > 1e-6:  # Gemma 2 and 3: query_pre_attn_scalar
            settings["scale"] = layer["scale"]
        if window and window < positions:
            # measured against PyTorch (tests/test_rotary_attention.py): the window itself matches
            # its tokens, one less does not
            settings["local_window_size"] = window
        attention.append(
            fused_node(
                helper,
                index,
                (rotated["query"], rotated["key"], layer["value"]["output"]),
                mask,
                layer["output"],
                **settings,
            )
        )
        # the fused nodes take the place of the attention output's Reshape (everything they read
        # is computed before it) and of the cache Concats
        position = next(i for i, n in enumerate(graph.node) if layer["output"] in n.output)
        del graph.node[position]
        for offset, new in enumerate(attention):
            graph.node.insert(position + offset, new)
        declare(graph, helper, layer["output"], elem_type, heads * head_size)
        for name in (f"{PRESENT_PREFIX}{index}.key", f"{PRESENT_PREFIX}{index}.value"):
            concat = next(i for i, n in enumerate(graph.node) if name in n.output and n.op_type == "Concat")
            del graph.node[concat]
    graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "fa_flat_heads"))
    for offset, new in enumerate(nodes_before_mask):  # from graph inputs only: first
        graph.node.insert(offset, new)
    return None


def _pack(graph, index: str, projections: list, base_dir: Path) -> None:
    """One MatMul on the q/k/v weights side by side [+ their biases] and a Split writing the three
    projections' outputs, in place of the three projections."""
    from onnx import helper, numpy_helper

    node = helper.make_node
    weights = _weights(graph, [p["weight"] for p in projections], base_dir)
    widths = [weight.shape[1] for weight in weights]
    packed = f"layer_{index}_qkv"
    graph.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), f"{packed}_weight"))
    packing = [node("MatMul", [projections[0]["input"], f"{packed}_weight"], [packed], name=f"{packed}_matmul")]
    if any(p["bias"] for p in projections):
        biases = [
            _weights(graph, [p["bias"]], base_dir)[0] if p["bias"] else np.zeros(width, weights[0].dtype)
            for p, width in zip(projections, widths)
        ]
        graph.initializer.append(numpy_helper.from_array(np.concatenate(biases), f"{packed}_bias"))
        packing.append(node("Add", [packed, f"{packed}_bias"], [f"{packed}_biased"], name=f"{packed}_bias_add"))
        packed = f"{packed}_biased"
    graph.initializer.append(numpy_helper.from_array(np.array(widths, np.int64), f"layer_{index}_qkv_widths"))
    # the Split writes the three projections' outputs: whatever read them (Qwen3's norms) still does
    packing.append(node("Split", [packed, f"layer_{index}_qkv_widths"], [p["output"] for p in projections], axis=-1))
    old = [n for p in projections for n in p["nodes"]]
    start = min(i for i, n in enumerate(graph.node) if any(n is o for o in old))
    for stale in old:
        graph.node.remove(stale)
    for offset, new in enumerate(packing):
        graph.node.insert(start + offset, new)
