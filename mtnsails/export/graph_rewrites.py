"""Rewrites of the exported graph that make CPU decoding cheaper and keep its results."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtnsails.export.attention_graph import constant_value, prune
from mtnsails.export.int4 import gemm_as_matmul
from mtnsails.export.lm_head import lm_head


def keep_last_logits(model_file: Path) -> bool:
    """Make the graph compute logits for the last input position only; True when done.

    Generation only ever reads the last position, but the exported LM head projects every prompt
    position onto the whole vocabulary (a 256-token prompt on distilgpt2: 10 GMAC and a 51 MB
    output). A Slice in front of the head's MatMul removes both (a soft-capped head, Gemma 2's,
    is sliced before its MatMul too: the capping is element-wise, see lm_head). Weights stored as
    external data stay where they are: only the graph is rewritten.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_file), load_external_data=False)
    graph = model.graph
    head = lm_head(graph)
    if head is None:  # an architecture whose head is not one MatMul: leave the graph as exported
        return False
    constants = {"last_logits_starts": -1, "last_logits_ends": np.iinfo(np.int64).max, "last_logits_axes": 1}
    graph.initializer.extend(
        numpy_helper.from_array(np.array([value], dtype=np.int64), name) for name, value in constants.items()
    )
    sliced = head.input[0] + "_last"
    graph.node.insert(
        list(graph.node).index(head),
        helper.make_node("Slice", [head.input[0], *constants], [sliced], name="last_position_only"),
    )
    head.input[0] = sliced
    logits = next(output for output in graph.output if output.name == "logits")
    logits.type.tensor_type.shape.dim[1].dim_value = 1
    onnx.save(model, str(model_file))
    return True


def _dimension_of(graph, producers: dict, name: str) -> tuple[str, int] | None:
    """(x, axis) when `name` is one dimension of tensor x as a 1-element shape, as the export
    computes it: Unsqueeze(Gather(Shape(x), axis)) or Unsqueeze(Squeeze(Slice(Shape(x), -1, end)))
    (axis -1); None otherwise."""
    unsqueeze = producers.get(name)
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or constant_value(graph, unsqueeze.input[1]) != [0]:
        return None
    picked = producers.get(unsqueeze.input[0])
    if picked is not None and picked.op_type == "Squeeze":
        picked = producers.get(picked.input[0])
        if (
            picked is None
            or picked.op_type != "Slice"
            or constant_value(graph, picked.input[1]) != [-1]
            or (len(picked.input) > 3 and constant_value(graph, picked.input[3]) != [0])
        ):
            return None
        axis = -1
    elif (
        picked is not None
        and picked.op_type == "Gather"
        and not any(attribute.name == "axis" and attribute.i for attribute in picked.attribute)
    ):
        axis = constant_value(graph, picked.input[1])
    else:
        return None
    shape = producers.get(picked.input[0])
    if shape is None or shape.op_type != "Shape" or shape.attribute or not isinstance(axis, int):
        return None
    return shape.input[0], axis


def _ranks(model) -> dict:
    """Each tensor's rank where ONNX shape inference knows it. Inference reads the weights' shapes
    only: their bytes are set aside meanwhile (inference would copy the whole model)."""
    import onnx

    weights = [(tensor, tensor.raw_data) for tensor in model.graph.initializer if len(tensor.raw_data) > 4096]
    for tensor, _ in weights:
        tensor.ClearField("raw_data")
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    finally:
        for tensor, raw in weights:
            tensor.raw_data = raw
    return {
        value.name: len(value.type.tensor_type.shape.dim)
        for value in [*inferred.input, *inferred.value_info, *inferred.output]
        if value.type.tensor_type.HasField("shape")
    }


def unflatten_linears(model_file: Path) -> int:
    """Let each linear layer multiply the [batch, positions, in] activations as they are.

    The export runs GPT-2's Conv1D layers as Reshape(x, [-1, in]) -> Gemm -> Reshape(back to
    [batch, positions, out]), the shapes computed at every step by about ten Shape, Gather,
    Slice, Squeeze, Unsqueeze and Concat nodes per layer: over 250 of the graph's 380 nodes at
    distilgpt2's size, each a kernel launch per token. MatMul(x, W) + b computes the same rows
    from x directly. Returns how many linear layers were rewritten (0 for other exports).
    """
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    graph = model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ranks = _ranks(model)
    rewritten = 0
    for gemm in [node for node in graph.node if node.op_type == "Gemm"]:
        flatten, after = producers.get(gemm.input[0]), consumers.get(gemm.output[0], [])
        if (
            flatten is None
            or flatten.op_type != "Reshape"
            or len(consumers[flatten.output[0]]) != 1
            or len(after) != 1
            or after[0].op_type != "Reshape"
        ):
            continue
        source = flatten.input[0]
        nodes = gemm_as_matmul(gemm, initializers, source, after[0].output[0])
        flat_shape, out_shape = producers.get(flatten.input[1]), producers.get(after[0].input[1])
        if (
            nodes is None
            or flat_shape is None
            or out_shape is None
            or "Concat" != flat_shape.op_type
            or "Concat" != out_shape.op_type
        ):
            continue
        # flatten: [-1, x.shape[-1]]; after: [x.shape[0], ..., x.shape[k], out] for every leading
        # axis of x (a Reshape that dropped an axis of size 1 would change the result's rank)
        if (
            len(flat_shape.input) != 2
            or constant_value(graph, flat_shape.input[0]) != [-1]
            or _dimension_of(graph, producers, flat_shape.input[1]) != (source, -1)
        ):
            continue
        leading = [_dimension_of(graph, producers, name) for name in out_shape.input[:-1]]
        if (
            not leading
            or leading != [(source, axis) for axis in range(len(leading))]
            or ranks.get(source) != len(leading) + 1
            or constant_value(graph, out_shape.input[-1]) is None
        ):
            continue
        index = list(graph.node).index(gemm)
        graph.node.remove(gemm)
        for offset, node in enumerate(nodes):
            graph.node.insert(index + offset, node)
        graph.node.remove(after[0])
        rewritten += 1
    if rewritten:
        prune(graph)
        onnx.save(model, str(model_file))
    return rewritten


def untranspose_head(model_file: Path) -> None:
    """Let a tied LM head read the embedding matrix as it is stored, without a Transpose.

    The export computes logits as MatMul(hidden, Transpose(wte)). onnxruntime folds that Transpose
    at every load (a 154 MB copy on distilgpt2) and the stored optimised graph would keep the
    folded copy beside `wte`. FusedMatMul with transB reads `wte` directly: one copy, on disk and
    in memory.
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(model_file), load_external_data=False)
    graph = model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    head = lm_head(graph)
    transpose = producers.get(head.input[1]) if head is not None and head.op_type == "MatMul" else None
    if (
        transpose is None
        or transpose.op_type != "Transpose"
        or transpose.input[0] not in initializers
        or any(attribute.name == "perm" and list(attribute.ints) != [1, 0] for attribute in transpose.attribute)
    ):
        return
    index = list(graph.node).index(head)
    graph.node.remove(head)
    graph.node.insert(
        index,
        helper.make_node(
            "FusedMatMul",
            [head.input[0], transpose.input[0]],
            list(head.output),
            name=head.name,
            domain="com.microsoft",
            transB=1,
        ),
    )
    if not any(transpose.output[0] in node.input for node in graph.node):
        graph.node.remove(transpose)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(model_file))


def retie_head(model_file: Path, tied: bool = True) -> bool:
    """Let a tied LM head read the embedding matrix again where the export stored a copy; True
    when done.

    For some families (Gemma 3) optimum's exporter does not recognise the head weight as the
    embedding it is tied to ("Found different candidate ONNX initializers (likely duplicate) for
    the tied weights") and stores it twice: the embedding [vocab, hidden] for the input Gather and
    its transpose [hidden, vocab] for the head's MatMul. With a large vocabulary (Gemma's 262,144
    tokens) that copy is most of the file. The head is made to read Transpose(embedding) instead,
    the form GPT-2's export has, so that `untranspose_head` and int4's shared blocks apply too.
    Done only when the copy equals the embedding's transpose exactly (`tied=False`, config.json's
    `tie_word_embeddings`, skips the comparison).
    """
    import onnx
    from onnx import helper, numpy_helper

    if not tied:
        return False
    model = onnx.load(str(model_file), load_external_data=False)
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    head = lm_head(graph)
    if head is None or head.op_type != "MatMul" or head.input[1] not in initializers:
        return False
    copy = initializers[head.input[1]]
    if len(copy.dims) != 2 or sum(copy.name in node.input for node in graph.node) != 1:
        return False
    hidden, vocab = copy.dims
    base = str(Path(model_file).parent)
    for name in dict.fromkeys(node.input[0] for node in graph.node if node.op_type == "Gather"):
        embedding = initializers.get(name)
        if embedding is None or list(embedding.dims) != [vocab, hidden]:
            continue
        if not np.array_equal(numpy_helper.to_array(copy, base), numpy_helper.to_array(embedding, base).T):
            continue
        transposed = f"{name}_transposed_for_head"
        graph.node.insert(
            list(graph.node).index(head),
            helper.make_node("Transpose", [name], [transposed], name="tied_head_transpose", perm=[1, 0]),
        )
        head.input[1] = transposed
        graph.initializer.remove(copy)
        onnx.save(model, str(model_file))
        return True
    return False
