"""int4 weight-only quantization of an exported causal LM (onnxruntime's MatMulNBits).

onnxruntime's `MatMulNBitsQuantizer` only quantizes a MatMul whose weight is an initializer. On
optimum's GPT-2 export none is: Conv1D layers are exported as Gemm, and the LM head multiplies by
`Transpose(wte)`, the embedding matrix it shares with the input Gather. So before quantizing:

- each Gemm becomes MatMul + Add on the same weight initializer (nothing is copied);
- the tied head is quantized here, once: its int4 blocks are laid out row by row of `wte`, which is
  exactly what `GatherBlockQuantized` reads, so the embedding lookup uses the same bytes and the
  fp32 `wte` leaves the file (one int4 copy instead of an fp32 matrix plus a quantized one).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtnsails.export.lm_head import lm_head

# Blocks of 64 load faster than blocks of 32 (fewer scales to pack) and decode as fast, for a
# little more logit error; accuracy level 4 (int8 activations) picks the fast kernels
# (figures on distilgpt2-sized weights: docs/performance.md).
INT4_BLOCK_SIZE = 64
INT4_ACCURACY_LEVEL = 4


@dataclass
class Int4Config:
    """How weights are quantized: `block_size` weights share one scale; `accuracy_level` is
    MatMulNBits' compute type (4: int8 activations, the fast path; 0: fp32)."""

    block_size: int = INT4_BLOCK_SIZE
    accuracy_level: int = INT4_ACCURACY_LEVEL
    quantize_head: bool = True  # the LM head (tied to the embedding) too
    symmetric: bool = True  # GatherBlockQuantized shares the head's blocks only without zero points


def _initializers(graph) -> dict:
    return {tensor.name: tensor for tensor in graph.initializer}


def gemm_as_matmul(gemm, initializers, source: str, output: str) -> list | None:
    """MatMul(source, W) [+ b] nodes writing `output` that compute Gemm(A, W, b) for rows of A
    given as `source`; None unless `gemm` is a Gemm of a constant W with no transposes and
    alpha = beta = 1."""
    from onnx import helper

    attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in gemm.attribute}
    if (
        gemm.op_type != "Gemm"
        or gemm.input[1] not in initializers
        or attributes.get("transA", 0)
        or attributes.get("transB", 0)
        or attributes.get("alpha", 1.0) != 1.0
        or attributes.get("beta", 1.0) != 1.0
    ):
        return None
    name = gemm.name or gemm.output[0]
    nodes = [helper.make_node("MatMul", [source, gemm.input[1]], [output], name=f"{name}_matmul")]
    if len(gemm.input) > 2 and gemm.input[2]:
        nodes[0].output[0] = f"{gemm.output[0]}_unbiased"
        nodes.append(helper.make_node("Add", [nodes[0].output[0], gemm.input[2]], [output], name=f"{name}_bias"))
    return nodes


def gemm_to_matmul(graph) -> int:
    """Replace each Gemm(A, W, b) (no transposes, alpha = beta = 1) by MatMul(A, W) + b; return how many."""
    initializers = _initializers(graph)
    replaced = 0
    for index, node in reversed(list(enumerate(graph.node))):
        nodes = gemm_as_matmul(node, initializers, node.input[0], node.output[0]) if node.op_type == "Gemm" else None
        if nodes is None:
            continue
        del graph.node[index]
        for offset, new in enumerate(nodes):
            graph.node.insert(index + offset, new)
        replaced += 1
    return replaced


def _block_quantize(weight: np.ndarray, config: Int4Config) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits blocks of `weight` [K, N]: packed [N, K/block, block/2] uint8 and scales [N, K/block]."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer

    quantizer = DefaultWeightOnlyQuantizer(
        DefaultWeightOnlyQuantConfig(block_size=config.block_size, is_symmetric=True, bits=4)
    )
    packed, scales, _ = quantizer.qbits_block_quant(np.ascontiguousarray(weight))
    return packed, scales


def _reads_transposed(node) -> bool:
    """True for FusedMatMul(x, W) computing x @ W.T (transB=1, nothing else changed)."""
    from onnx import helper

    attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
    return (
        node.op_type == "FusedMatMul"
        and attributes.get("transB") == 1
        and not attributes.get("transA")
        and attributes.get("alpha", 1.0) == 1.0
        and not attributes.get("transBatchA")
        and not attributes.get("transBatchB")
    )


def quantize_tied_head(graph, config: Int4Config) -> bool:
    """Quantize a head computing MatMul(x, Transpose(E)) (or FusedMatMul(x, E, transB=1)) where
    Gather(E, ids) is the embedding.

    Both then read one int4 copy of E: MatMulNBits directly, GatherBlockQuantized through a
    Reshape to [vocab, hidden/2] bytes (onnxruntime folds it at load time). False when the graph
    has no such head (untied models are left to MatMulNBitsQuantizer).
    """
    from onnx import helper, numpy_helper

    initializers = _initializers(graph)
    producers = {output: node for node in graph.node for output in node.output}
    for head in graph.node:
        transpose = producers.get(head.input[1]) if head.op_type == "MatMul" else None
        if transpose is not None and transpose.op_type == "Transpose" and transpose.input[0] in initializers:
            name = transpose.input[0]
        elif _reads_transposed(head) and head.input[1] in initializers:  # see untranspose_head
            name, transpose = head.input[1], None
        else:
            continue
        users = [node for node in graph.node if name in node.input and node not in (transpose, head)]
        if any(
            node.op_type != "Gather"
            or node.input[0] != name
            or any(attribute.name == "axis" and attribute.i != 0 for attribute in node.attribute)
            for node in users
        ):
            continue
        weight = numpy_helper.to_array(initializers[name])  # [vocab, hidden]
        vocab, hidden = weight.shape
        if hidden % config.block_size:
            continue
        packed, scales = _block_quantize(weight.T, config)
        graph.initializer.remove(initializers[name])
        graph.initializer.extend(
            [
                numpy_helper.from_array(packed, f"{name}_Q4"),
                numpy_helper.from_array(scales, f"{name}_scales"),
                numpy_helper.from_array(np.array([vocab, hidden // 2], np.int64), f"{name}_rows_shape"),
            ]
        )
        extra = {"accuracy_level": config.accuracy_level} if config.accuracy_level else {}
        index = list(graph.node).index(head)
        graph.node.remove(head)
        graph.node.insert(
            index,
            helper.make_node(
                "MatMulNBits",
                [head.input[0], f"{name}_Q4", f"{name}_scales"],
                list(head.output),
                name=f"{head.name or name}_Q4",
                domain="com.microsoft",
                K=hidden,
                N=vocab,
                bits=4,
                block_size=config.block_size,
                **extra,
            ),
        )
        if transpose is not None:
            graph.node.remove(transpose)
        for gather in users:
            index = list(graph.node).index(gather)
            graph.node.remove(gather)
            rows = f"{gather.output[0]}_rows"
            graph.node.insert(
                index,
                helper.make_node("Reshape", [f"{name}_Q4", f"{name}_rows_shape"], [rows], name=f"{gather.name}_rows"),
            )
            graph.node.insert(
                index + 1,
                helper.make_node(
                    "GatherBlockQuantized",
                    [rows, gather.input[1], f"{name}_scales"],
                    list(gather.output),
                    name=f"{gather.name}_Q4",
                    domain="com.microsoft",
                    gather_axis=0,
                    quantize_axis=1,
                    block_size=config.block_size,
                    bits=4,
                ),
            )
        return True
    return False


def quantize_int4(source: str | os.PathLike, target: str | os.PathLike, config: Int4Config | None = None) -> bool:
    """Write `target`: `source` with every constant-weight MatMul (and Gemm) as int4 MatMulNBits.
    True when the head and the embedding share one int4 copy (a tied head, see quantize_tied_head);
    an untied head is quantized on its own and the embedding stays fp32."""
    import onnx
    from onnx import helper
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = config or Int4Config()
    model = onnx.load(str(source))
    gemm_to_matmul(model.graph)
    shared = config.quantize_head and quantize_tied_head(model.graph, config)
    head = lm_head(model.graph)
    excluded = [] if config.quantize_head or head is None else [head.name]
    quantizer = MatMulNBitsQuantizer(
        model,
        nodes_to_exclude=excluded,
        algo_config=DefaultWeightOnlyQuantConfig(
            block_size=config.block_size,
            is_symmetric=config.symmetric,
            accuracy_level=config.accuracy_level or None,
            op_types_to_quantize=("MatMul",),
        ),
    )
    quantizer_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quantizer_log.level
    quantizer_log.setLevel(logging.WARNING)  # it logs every node it visits at INFO
    try:
        quantizer.process()
    finally:
        quantizer_log.setLevel(level)
    model = quantizer.model.model
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    used = {name for node in model.graph.node for name in node.input}
    for tensor in [tensor for tensor in model.graph.initializer if tensor.name not in used]:
        model.graph.initializer.remove(tensor)
    onnx.save(model, str(Path(target)))
    return shared
