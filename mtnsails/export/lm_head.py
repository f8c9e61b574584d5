"""Finding the LM head of an exported causal LM graph.

Most families compute `logits = MatMul(hidden, W)`. Gemma 2 soft-caps them afterwards
(`logits = tanh(x / cap) * cap`, exported as Div, Tanh, Mul), so the head is the MatMul at the
start of a chain of element-wise nodes that ends in `logits`. The rewrites that act on the head
(last position only, the tied weight read untransposed, int4) start from here.
"""

from __future__ import annotations

HEAD_OPS = ("MatMul", "FusedMatMul")
# Element-wise nodes that may follow the head: each output position depends on the same position
# of the head's output only, so slicing positions before the head changes nothing after it.
ELEMENTWISE_OPS = ("Div", "Mul", "Tanh", "Add", "Sub", "Cast")


def lm_head(graph, output: str = "logits"):
    """The MatMul (or FusedMatMul) node whose result becomes `output` through element-wise nodes
    with one computed input each (their other inputs constants); None when there is none."""
    producers = {name: node for node in graph.node for name in node.output}
    constants = {tensor.name for tensor in graph.initializer}

    def constant(name: str) -> bool:
        producer = producers.get(name)
        return name in constants or (producer is not None and producer.op_type == "Constant")

    node = producers.get(output)
    while node is not None and node.op_type not in HEAD_OPS:
        moving = [name for name in node.input if name and not constant(name)]
        if node.op_type not in ELEMENTWISE_OPS or len(moving) != 1:
            return None
        node = producers.get(moving[0])
    return node
