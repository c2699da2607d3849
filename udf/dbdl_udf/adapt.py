"""What registration rewrites in a model so that dbdl can feed it, each rewrite checked.

Models come from tools nobody at dbdl wrote. Three things those tools commonly produce that
onnxruntime runs but dbdl could not score, and what :func:`adapt` does about each:

- **an old opset** (below :data:`OPSET_FLOOR`, the oldest onnxruntime guarantees): upgraded to
  :data:`OPSET_TARGET` with ``onnx.version_converter``; the upgraded model's outputs must equal the
  original's on random input (run by onnxruntime, else by onnx's reference evaluator);
- **outputs that are not tensors** (skl2onnx's ZipMap: a sequence of maps of class → probability):
  a ZipMap is removed and the tensor it wrapped becomes the output (skl2onnx names it
  ``probabilities``); any other non-tensor output is dropped (at least one tensor output must stay);
- **a fixed batch size** (axis 0 of every input is 1, 2, 10, …): axis 0 is made symbolic in the
  inputs and outputs, intermediate shapes are dropped (onnxruntime infers them again) and
  ``Reshape`` shape constants whose first entry is that size take the input's first axis instead.
  The result must give, for rows fed all at once, what the ORIGINAL model gives for them fed its
  fixed number at a time; otherwise the original is kept and scored in slices of its batch size
  (``Signature.batch``, ``runtime.run_feeds``), after checking that each row's output depends on
  that row only.

Every rewrite is recorded as a :class:`Rewrite`; the registry keeps the notes and the original bytes.
The same code runs in the client (``db.models.register``) and in PostgreSQL's
``dbdl.register_model``, which adapts what it is given itself rather than trust a caller's claims.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidModel

__all__ = ["OPSET_FLOOR", "OPSET_TARGET", "Adapted", "Rewrite", "adapt"]

#: the oldest default-domain opset onnxruntime guarantees to run ("ONNX Runtime only guarantees
#: support for models stamped with opset version 7 or above"); older models are upgraded
OPSET_FLOOR = 7
#: what they are upgraded to: onnx.version_converter's adapters are complete up to here, and every
#: onnxruntime since 1.8 runs it
OPSET_TARGET = 13
_RTOL, _ATOL = 1e-4, 1e-5
_BATCH_NAME = "batch"


@dataclass(frozen=True)
class Rewrite:
    """One change made at registration: ``kind`` is ``opset``, ``zipmap``, ``dropped_output``,
    ``output_batch``, ``batch_symbolic`` or ``batch_slices``; ``note`` says what was done, in words."""

    kind: str
    note: str

    def to_dict(self) -> dict:
        return {"kind": self.kind, "note": self.note}


@dataclass(frozen=True)
class Adapted:
    onnx_bytes: bytes  # what dbdl stores and runs
    original: bytes | None  # the bytes as given, when they were rewritten
    rewrites: tuple[Rewrite, ...]


def adapt(data: bytes, session_factory) -> Adapted:
    """Rewrite ``data`` where dbdl needs it (see the module docstring). ``session_factory(bytes)``
    builds an onnxruntime session (``runtime.make_session``), raising InvalidModel. Without the
    ``onnx`` package nothing is rewritten (a fixed batch size is then scored in slices)."""
    try:
        import onnx
    except ImportError:  # a server without onnx: the model is stored as it is
        return Adapted(data, None, ())
    proto = onnx.load_from_string(data)
    rewrites: list[Rewrite] = []
    changed = False

    opset = _default_opset(proto)
    if proto.graph.node and opset and opset < OPSET_FLOOR:
        proto = _upgrade(proto, data, opset, session_factory)
        rewrites.append(Rewrite("opset", f"opset {opset} upgraded to {OPSET_TARGET} with onnx.version_converter "
                                         f"(onnxruntime guarantees opset {OPSET_FLOOR} and above); outputs checked "
                                         "unchanged on random input"))
        changed = True

    for rewrite in _tensor_outputs(proto):
        rewrites.append(rewrite)
        changed = True

    current = proto.SerializeToString() if changed else data
    if changed:
        session_factory(current)  # what onnxruntime says about the rewritten model, before anything else
    batch = _fixed_batch(proto)
    if batch is None:
        fixed = _output_batch(proto, current, session_factory)
        if fixed:
            current = proto.SerializeToString()
            rewrites.append(Rewrite("output_batch", f"output(s) {', '.join(map(repr, fixed))} declared a fixed first axis "
                                                    "although the inputs take any number of rows; they return one row "
                                                    "per input row (checked on 1 and 3 rows), so axis 0 is declared "
                                                    "symbolic (onnxmltools declares a classifier's label as [1])"))
    if batch is not None:
        symbolic, how = _symbolic_batch(proto, batch)
        done = None
        if symbolic is not None:
            candidate = symbolic.SerializeToString()
            done = _same_rows(data, candidate, batch, session_factory)
        if done is True:
            current = candidate
            rewrites.append(Rewrite("batch_symbolic", f"the inputs fixed the batch size at {batch}; axis 0 made "
                                                      f"symbolic{how}, checked: rows scored all at once match the "
                                                      f"original model run {batch} row(s) at a time"))
        else:
            _rows_independent(current, batch, session_factory)
            why = done if isinstance(done, str) else "the graph bakes the batch size in"
            rewrites.append(Rewrite("batch_slices", f"the inputs fix the batch size at {batch} and it could not be made "
                                                    f"symbolic ({why}); rows are scored {batch} at a time, the last "
                                                    "slice padded"))
    return Adapted(current, data if current != data else None, tuple(rewrites))


def _default_opset(proto) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


# -- opsets -------------------------------------------------------------------------------------


def _upgrade(proto, data: bytes, opset: int, session_factory):
    import onnx
    from onnx import version_converter

    fix = (f"upgrade it yourself: onnx.save(onnx.version_converter.convert_version(onnx.load(path), {OPSET_TARGET}), "
           "'upgraded.onnx'), check its outputs, and register upgraded.onnx — or re-export it from its framework with "
           f"a current opset (torch.onnx.export(..., opset_version=17))")
    try:
        upgraded = version_converter.convert_version(proto, OPSET_TARGET)
        # opset 13 needs IR version 7; older IR versions also want every initializer listed as an input
        upgraded.ir_version = max(upgraded.ir_version, 7)
        onnx.checker.check_model(upgraded)
    except Exception as exc:
        raise InvalidModel(f"the model has opset {opset}, older than the {OPSET_FLOOR} onnxruntime guarantees, and "
                           f"onnx.version_converter cannot upgrade it ({exc.__class__.__name__}: "
                           f"{' '.join(str(exc).split())[:200]}); {fix}") from exc
    new_bytes = upgraded.SerializeToString()
    try:
        session = session_factory(new_bytes)
    except InvalidModel as exc:
        raise InvalidModel(f"the model has opset {opset}, older than the {OPSET_FLOOR} onnxruntime guarantees; "
                           f"upgraded to opset {OPSET_TARGET} it still does not load: {exc}") from exc
    feeds = _random_feeds(session, rows=_fixed_batch(upgraded) or 2)
    if feeds is None:
        raise InvalidModel(f"the model has opset {opset}, older than the {OPSET_FLOOR} onnxruntime guarantees; dbdl "
                           f"upgraded it but cannot make test input for its inputs to check the upgrade; {fix}")
    try:
        expected = _run_original(data, feeds, session_factory)
    except Exception as exc:  # noqa: BLE001 - neither runtime runs the original: nothing to compare with
        raise InvalidModel(f"the model has opset {opset}, older than the {OPSET_FLOOR} onnxruntime guarantees; dbdl "
                           f"upgraded it to opset {OPSET_TARGET} but neither onnxruntime nor onnx's reference "
                           f"evaluator runs the original to check the upgrade ({exc.__class__.__name__}: "
                           f"{' '.join(str(exc).split())[:160]}); {fix}") from exc
    names = [o.name for o in session.get_outputs()]
    try:
        got = session.run(names, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own reason is the useful part
        raise InvalidModel(f"the model has opset {opset}, older than the {OPSET_FLOOR} onnxruntime guarantees; "
                           f"upgraded to opset {OPSET_TARGET} it fails in onnxruntime on test input "
                           f"({exc.__class__.__name__}: {' '.join(str(exc).split())[:240]}); {fix}") from exc
    for name, a, b in zip(names, got, expected):
        if not _close(a, b):
            raise InvalidModel(f"the model has opset {opset}, older than the {OPSET_FLOOR} onnxruntime guarantees; "
                               f"upgraded to opset {OPSET_TARGET} by onnx.version_converter, its output {name!r} "
                               f"differs from the original's on the same input, so dbdl does not use it; {fix}")
    return upgraded


def _run_original(data: bytes, feeds: dict, session_factory) -> list:
    try:
        session = session_factory(data)
    except InvalidModel:
        from onnx.reference import ReferenceEvaluator

        return list(ReferenceEvaluator(data).run(None, feeds))
    return session.run([o.name for o in session.get_outputs()], feeds)


# -- outputs ------------------------------------------------------------------------------------


def _tensor_outputs(proto) -> list:
    """Remove ZipMap outputs (the probabilities tensor becomes the output) and other non-tensor
    outputs; the rewrites made (the graph is changed in place)."""
    from onnx import TensorProto, helper

    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    rewrites = []
    keep = []
    for out in graph.output:
        if out.type.HasField("tensor_type"):
            keep.append(out)
            continue
        node = producers.get(out.name)
        if node is not None and node.op_type == "ZipMap" and node.domain == "ai.onnx.ml":
            labels = next((len(a.strings) or len(a.ints) for a in node.attribute
                           if a.name in ("classlabels_strings", "classlabels_int64s")), None)
            first = _first_dim(graph)
            if any(o.name == node.input[0] for o in graph.output):
                continue  # already an output of its own
            # the tensor is called 'probabilities' (what skl2onnx names it without ZipMap) where that name is free
            used = {v for n in graph.node if n is not node for v in list(n.input) + list(n.output)}
            used |= {i.name for i in graph.input} | {t.name for t in graph.initializer}
            name = "probabilities" if "probabilities" not in used else node.input[0]
            graph.node.remove(node)
            if name != node.input[0]:
                graph.node.append(helper.make_node("Identity", [node.input[0]], [name], name="dbdl_unzipmap"))
            keep.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [first, labels]))
            rewrites.append(Rewrite("zipmap", f"output {out.name!r} (a ZipMap: a sequence of maps of class to "
                                              f"probability) replaced by the tensor it wrapped, as output {name!r} "
                                              f"(one probability per class, in the model's class order)"))
        else:
            rewrites.append(Rewrite("dropped_output", f"output {out.name!r} dropped: it is not a tensor "
                                                      f"({_type_text(out)}) and dbdl returns tensors only"))
    if not rewrites:
        return []
    if not keep:
        raise InvalidModel("none of the model's outputs is a tensor; dbdl returns tensors — export the model with "
                           "tensor outputs (skl2onnx: options={id(model): {'zipmap': False}})")
    del graph.output[:]
    graph.output.extend(keep)
    _prune(graph)
    return rewrites


def _first_dim(graph):
    """Axis 0 of the first input (a size or a symbolic name), for an output built here."""
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if inputs and inputs[0].type.tensor_type.shape.dim:
        dim = inputs[0].type.tensor_type.shape.dim[0]
        if dim.HasField("dim_value"):
            return dim.dim_value
        if dim.dim_param:
            return dim.dim_param
    return "N"


def _type_text(value_info) -> str:
    kind = value_info.type.WhichOneof("value")
    return {"sequence_type": "a sequence", "map_type": "a map", "optional_type": "an optional",
            "sparse_tensor_type": "a sparse tensor"}.get(kind, kind or "untyped")


def _prune(graph) -> None:
    """Drop the nodes no output needs any more (a removed ZipMap and what fed only it)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
            for attr in node.attribute:  # names a subgraph reads from the outer scope
                for sub in list(attr.g.node if attr.HasField("g") else []) + [n for g in attr.graphs for n in g.node]:
                    needed.update(sub.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))


# -- the batch axis -----------------------------------------------------------------------------


def _graph_inputs(graph):
    init = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in init]


def _fixed_batch(proto) -> int | None:
    """The size every input fixes axis 0 at, None if any input leaves it symbolic (or the sizes
    differ, which signature_of explains)."""
    firsts = []
    for value in _graph_inputs(proto.graph):
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
        if not dims or not dims[0].HasField("dim_value") or dims[0].dim_value <= 0:
            return None
        firsts.append(dims[0].dim_value)
    return firsts[0] if firsts and len(set(firsts)) == 1 else None


def _output_batch(proto, data: bytes, session_factory) -> list[str]:
    """Outputs whose declared first axis is fixed while every input's is symbolic, and which in
    fact give one row per input row: their declaration is made symbolic (in ``proto``); their names."""
    suspects = []
    for out in proto.graph.output:
        dims = out.type.tensor_type.shape.dim if out.type.HasField("tensor_type") else []
        if dims and dims[0].HasField("dim_value"):
            suspects.append(out)
    if not suspects:
        return []
    try:
        session = session_factory(data)
    except InvalidModel:
        return []
    names = [o.name for o in suspects]
    for rows in (1, 3):
        feeds = _random_feeds(session, rows=rows)
        if feeds is None:
            return []
        try:
            got = session.run(names, feeds)
        except Exception:  # noqa: BLE001 - signature_of then explains the declared shape
            return []
        if any(np.asarray(g).shape[:1] != (rows,) for g in got):
            return []
    for out in suspects:
        dim = out.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = _BATCH_NAME
    return names


def _symbolic_batch(proto, batch: int):
    """A copy of ``proto`` with axis 0 symbolic, or (None, why); the second item describes what
    else was rewritten."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    for value in list(_graph_inputs(graph)) + list(graph.output):
        if not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].Clear()
            dims[0].dim_param = _BATCH_NAME
    del graph.value_info[:]
    # Reshape targets that spell the batch size: take axis 0 from the input instead (0 = "copy")
    inits = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    reshaped = 0
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.domain not in ("", "ai.onnx"):
            continue
        source = node.input[1]
        if source in inits:
            shape = numpy_helper.to_array(inits[source])
        elif source in constants and constants[source].attribute and constants[source].attribute[0].HasField("t"):
            shape = numpy_helper.to_array(constants[source].attribute[0].t)
        else:
            continue
        if shape.ndim != 1 or not len(shape) or int(shape[0]) != batch or (shape == 0).any():
            continue
        new = shape.copy()
        new[0] = 0
        name = f"{source}__dbdl_batch_{reshaped}"
        graph.initializer.append(numpy_helper.from_array(new.astype(np.int64), name))
        if model.ir_version < 4:  # IR version 3 lists every initializer among the inputs
            graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, [len(new)]))
        node.input[1] = name
        for attr in node.attribute:  # allowzero=1 would read the 0 as a zero-sized axis
            if attr.name == "allowzero":
                attr.i = 0
        reshaped += 1
    how = f" and {reshaped} Reshape target(s) take axis 0 from their input" if reshaped else ""
    return model, how


def _same_rows(original: bytes, candidate: bytes, batch: int, session_factory) -> bool | str:
    """True when ``candidate`` on many rows at once gives what ``original`` gives for them fed
    ``batch`` at a time; else the reason in words."""
    try:
        session = session_factory(candidate)
        reference = session_factory(original)
    except InvalidModel as exc:
        return f"onnxruntime does not load it with a symbolic batch axis: {str(exc)[:160]}"
    rows = 2 * batch + 1
    feeds = _random_feeds(reference, rows=rows, along=batch)
    if feeds is None:
        return "no test input could be made for its inputs"
    names = [o.name for o in reference.get_outputs()]
    expected = [[] for _ in names]
    for start in range(0, rows, batch):
        piece = {k: _pad(v[start:start + batch], batch) for k, v in feeds.items()}
        try:
            out = reference.run(names, piece)
        except Exception as exc:  # noqa: BLE001
            return f"the original fails on test input: {' '.join(str(exc).split())[:160]}"
        for name, acc, value in zip(names, expected, out):
            if np.asarray(value).ndim == 0:
                return f"output {name!r} is a scalar, not one value per row"
            acc.append(np.asarray(value)[: min(batch, rows - start)])
    expected = [np.concatenate(e) for e in expected]
    for n in (rows, 1):
        try:
            got = session.run(names, {k: v[:n] for k, v in feeds.items()})
        except Exception as exc:  # noqa: BLE001
            return f"with axis 0 symbolic, onnxruntime fails on {n} row(s): {' '.join(str(exc).split())[:160]}"
        for name, a, b in zip(names, got, expected):
            if np.asarray(a).shape[:1] != (n,) or not _close(np.asarray(a), b[:n]):
                return f"with axis 0 symbolic, output {name!r} differs from the original's for {n} row(s)"
    return True


def _rows_independent(data: bytes, batch: int, session_factory) -> None:
    """A fixed-batch model scored in slices must give each row an output that depends on that
    row alone (the padding rows of the last slice must not change the real ones)."""
    if batch == 1:
        return
    session = session_factory(data)
    feeds = _random_feeds(session, rows=batch, along=batch)
    if feeds is None:
        return
    names = [o.name for o in session.get_outputs()]
    changed = {k: v.copy() for k, v in feeds.items()}
    for k, v in changed.items():
        other = _random_feeds(session, rows=batch, along=batch, seed=1)[k]
        v[-1] = other[-1]
    try:
        a = session.run(names, feeds)
        b = session.run(names, changed)
    except Exception:  # noqa: BLE001 - it fails on random input: the first real query says why
        return
    rolled = {k: np.roll(v, 1, axis=0) for k, v in feeds.items()}
    try:
        c = session.run(names, rolled)
    except Exception:  # noqa: BLE001
        return
    for name, x, z in zip(names, a, c):
        x, z = np.asarray(x), np.asarray(z)
        if x.shape[:1] == (batch,) and not _close(np.roll(x, 1, axis=0), z):
            raise InvalidModel(
                f"the model's inputs fix the batch size at {batch}, and its output {name!r} for a row changes with the "
                "row's position in the batch (e.g. a constant of shape [batch, ...] added to the rows), so dbdl cannot "
                "score rows in slices; re-export it with a batch axis: torch.onnx.export(model.eval(), example, path, "
                "dynamic_axes={'input': {0: 'batch'}, 'output': {0: 'batch'}})")
    for name, x, y in zip(names, a, b):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape[:1] == (batch,) and not _close(x[:-1], y[:-1]):
            raise InvalidModel(
                f"the model's inputs fix the batch size at {batch}, and its output {name!r} for one row changes when "
                "another row of the batch changes (it mixes rows, e.g. a normalisation over axis 0), so dbdl cannot "
                "score rows in slices; re-export it with a batch axis whose rows are independent: "
                "torch.onnx.export(model.eval(), example, path, dynamic_axes={'input': {0: 'batch'}, 'output': {0: "
                "'batch'}})")


def _pad(value: np.ndarray, batch: int) -> np.ndarray:
    if len(value) >= batch:
        return value
    return np.concatenate([value, np.repeat(value[-1:], batch - len(value), axis=0)])


_SYMBOLIC_SIZE = 3  # a symbolic axis other than the batch axis, in test input


def _random_feeds(session, rows: int, along: int | None = None, seed: int = 0) -> dict | None:
    """Test input for every input of ``session``: ``rows`` on axis 0 (which is symbolic, or
    ``along`` rows fixed), other symbolic axes of size 3; None for an input dbdl cannot make
    (text). Integers are small (0 or 1: valid indices for any embedding), floats normal."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in session.get_inputs():
        shape = []
        for i, d in enumerate(arg.shape):
            if i == 0:
                shape.append(rows)
            else:
                shape.append(d if isinstance(d, int) and d > 0 else _SYMBOLIC_SIZE)
        kind = arg.type
        if kind in ("tensor(float)", "tensor(double)", "tensor(float16)"):
            dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}[kind]
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif kind.startswith("tensor(int") or kind.startswith("tensor(uint"):
            feeds[arg.name] = rng.integers(0, 2, size=shape).astype(np.dtype(kind[7:-1]))
        elif kind == "tensor(bool)":
            feeds[arg.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            return None
    return feeds


def _close(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "OUS" or b.dtype.kind in "OUS":
        return bool((a.astype(str) == b.astype(str)).all())
    return bool(np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=_RTOL, atol=_ATOL, equal_nan=True))
