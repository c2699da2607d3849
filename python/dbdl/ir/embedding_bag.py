"""torch's ``nn.EmbeddingBag`` over fixed-size bags, as the TorchScript exporter writes it, turned
back into what it computes: ``Gather(weight, x)`` and a ``ReduceMean`` / ``ReduceSum`` /
``ReduceMax`` over the bag axis.

``torch.onnx.export`` (``dynamo=False``) of ``EmbeddingBag(mode=...)(x)`` with a 2-D ``x`` (one bag
of ``L`` indices per row, no offsets) writes the general offsets form: the offsets computed from
``Shape(x)`` (``0, L, 2L, …``), and a ``Loop`` over the bags whose body slices the flattened indices
between two offsets, gathers those rows of the weight and reduces them. The IR has no ``Loop``;
where the loop is exactly that (its data the flattened input, its table an initializer, nothing in
it or in its offsets read from the row but the input's shape), ``embedding_bags`` replaces it, and
the shape arithmetic that only fed it falls away. Any other ``Loop`` (offsets given as an input,
``per_sample_weights``, ``padding_idx``) is left alone, and stays unsupported.
"""

from __future__ import annotations

_REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax")
_BODY = ["Gather", "Gather", "Unsqueeze", "Unsqueeze", "Slice", "Gather", "Reduce", "Cast"]


def embedding_bags(proto):
    """``proto`` with each fixed-size EmbeddingBag loop replaced (a copy; ``proto`` itself where
    there is none)."""
    graph = proto.graph
    if not any(n.op_type == "Loop" for n in graph.node):
        return proto
    initializers = {t.name for t in graph.initializer}
    inputs = {v.name: v for v in graph.input if v.name not in initializers}
    producer = {o: n for n in graph.node for o in n.output}
    constants = initializers | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    replaced = {}
    for k, node in enumerate(graph.node):
        if node.op_type == "Loop":
            found = _match(node, producer, inputs, constants, initializers)
            if found:
                replaced[k] = found
    if not replaced:
        return proto
    from onnx import helper

    out = type(proto)()
    out.CopyFrom(proto)
    nodes = []
    for k, node in enumerate(out.graph.node):
        if k not in replaced:
            nodes.append(node)
            continue
        table, x, reduce_op = replaced[k]
        gathered = f"{node.output[0]}__dbdl_gather"
        nodes.append(helper.make_node("Gather", [table, x], [gathered], axis=0))
        nodes.append(helper.make_node(reduce_op, [gathered], [node.output[0]], axes=[1], keepdims=0))
    needed = {o.name for o in out.graph.output}
    kept = []
    for node in reversed(nodes):  # only what the outputs still read
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del out.graph.node[:]
    out.graph.node.extend(reversed(kept))
    return out


def _match(loop, producer, inputs, constants, initializers):
    """(table, input name, reduce op type) where ``loop`` is a fixed-size EmbeddingBag's, else None."""
    if len(loop.input) != 2 or len(loop.output) != 1 or not loop.attribute:
        return None
    body = loop.attribute[0].g
    ops = [n for n in body.node if n.op_type != "Constant"]
    if [("Reduce" if n.op_type in _REDUCE else n.op_type) for n in ops] != _BODY or len(body.output) != 2:
        return None
    _, _, _, _, sliced, lookup, reduce, _ = ops
    if body.output[1].name != reduce.output[0] or reduce.input[0] != lookup.output[0]:
        return None
    if lookup.input[1] != sliced.output[0] or lookup.input[0] not in initializers:
        return None
    if any(a.name == "axis" and a.i != 0 for a in lookup.attribute):
        return None
    flat = producer.get(sliced.input[0])
    if flat is None or flat.op_type != "Reshape" or flat.input[0] not in inputs:
        return None
    x = inputs[flat.input[0]]
    dims = x.type.tensor_type.shape.dim
    if len(dims) != 2 or dims[1].dim_value <= 0:
        return None
    # the offsets, the trip count and the bag ends: from the input's shape and constants only
    outer = [i for n in body.node for i in n.input if i and i not in {v.name for v in body.input}
             and i not in {o for m in body.node for o in m.output}]
    if not all(_shape_only(name, producer, constants, flat) for name in list(loop.input) + outer
               if name not in (sliced.input[0], lookup.input[0])):
        return None
    return lookup.input[0], x.name, reduce.op_type


def _shape_only(name, producer, constants, flat, seen=None) -> bool:
    """``name`` is computed from constants and Shape() of tensors only (never from values of the row)."""
    seen = set() if seen is None else seen
    if not name or name in constants or name in seen:
        return True
    seen.add(name)
    node = producer.get(name)
    if node is None:
        return False  # a graph input's values
    if node.op_type == "Shape":
        return True
    return all(_shape_only(i, producer, constants, flat, seen) for i in node.input)
