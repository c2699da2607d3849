"""Scoring a batch of feature rows with onnxruntime.

Every backend's predict body ends here: the features of a batch arrive as one float32 matrix
(rows x features), are split over the model's inputs, run in one ``InferenceSession.run`` and come
back as one matrix of outputs. Sessions are built once per model (by content hash) per process.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from math import prod
from typing import Callable, Sequence

import numpy as np

from .errors import DTypeMismatch, Error, InvalidModel, ModelRuntimeError, ShapeMismatch
from .modelcheck import check_model_bytes

# onnxruntime element types -> numpy dtypes that dbdl can feed from float features.
_ORT_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
#: output element types dbdl returns besides numbers: class labels of scikit-learn classifiers
_ORT_TEXT = {"tensor(string)": "str"}

OUTPUT_KINDS = ("scalar", "array", "class")
MAX_VALUES_PER_ROW = 1 << 24  # 64 MiB of float32 per row: far past any feature or output vector


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: its name, element type and per-row shape (batch axis removed).

    ``shape`` has None for a symbolic axis (a variable-length token axis, say). ``dims`` is the
    shape the model declares, batch axis included: ints, the names of symbolic axes, None where
    nothing is declared (None altogether in signatures stored before dbdl recorded it). ``dtype``
    is a numpy dtype name, or ``"str"`` for a text output (class labels)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    dims: tuple[int | str | None, ...] | None = None

    @property
    def per_row(self) -> int | None:
        """Values per row, or None where a trailing axis is symbolic."""
        if any(d is None for d in self.shape):
            return None
        return int(prod(self.shape))

    @property
    def is_text(self) -> bool:
        return self.dtype == "str"


@dataclass(frozen=True)
class Signature:
    """What a model takes and gives, as dbdl feeds it: one feature vector split over the inputs.

    ``batch`` is None for a model that takes any number of rows per run, or the fixed number of
    rows its inputs declare (axis 0), which dbdl could not make symbolic at registration: every
    run is then cut into slices of that many rows, the last one padded (``run_feeds``)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch: int | None = None

    @property
    def n_features(self) -> int:
        return sum(spec.per_row or 0 for spec in self.inputs)

    def output_index(self, name: str | None) -> int:
        if name is None:
            return 0
        for i, spec in enumerate(self.outputs):
            if spec.name == name:
                return i
        names = ", ".join(repr(s.name) for s in self.outputs)
        raise ShapeMismatch(f"the model has no output {name!r}; its outputs are {names}")

    def scores_output(self) -> TensorSpec | None:
        """The output a classifier's arg-max belongs to: the first numeric one with several values
        per row (scikit-learn's ``probabilities``), None if there is none."""
        for spec in self.outputs:
            if not spec.is_text and (spec.per_row is None or spec.per_row >= 2):
                return spec
        return None

    def to_json(self) -> str:
        def spec(s: TensorSpec) -> dict:
            d = {"name": s.name, "dtype": s.dtype, "shape": list(s.shape)}
            if s.dims is not None:
                d["dims"] = list(s.dims)
            return d

        data = {"inputs": [spec(s) for s in self.inputs], "outputs": [spec(s) for s in self.outputs]}
        if self.batch is not None:
            data["batch"] = self.batch
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str | dict) -> "Signature":
        data = json.loads(text) if isinstance(text, str) else text

        def specs(items: list[dict]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(d["name"], d["dtype"], tuple(d["shape"]),
                                    tuple(d["dims"]) if d.get("dims") is not None else None) for d in items)

        batch = data.get("batch")
        return cls(specs(data["inputs"]), specs(data["outputs"]), int(batch) if batch is not None else None)


_REEXPORT = ("re-export it with a batch axis: torch.onnx.export(model, example, path, dynamic_axes={'input': {0: "
             "'batch'}, 'output': {0: 'batch'}}) (or dynamic_shapes with torch.export.Dim), skl2onnx.to_onnx(model, "
             "X[:1]) (its first axis is symbolic already)")


def _declared(arg) -> list[int | str | None]:
    return [d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d else None) for d in arg.shape]


def _spec_from_ort(arg, *, is_input: bool) -> TensorSpec:
    """The TensorSpec of one onnxruntime input or output (whether axis 0 is a batch axis is
    decided over all of them, in signature_of)."""
    what = "input" if is_input else "output"
    dtype = _ORT_TO_NUMPY.get(arg.type) or (None if is_input else _ORT_TEXT.get(arg.type))
    if dtype is None:
        if is_input:
            fix = ("export the model with numeric inputs (e.g. skl2onnx: convert the text columns before the model, "
                   "or pass initial_types=[('X', FloatTensorType([None, n]))])")
        else:
            fix = ("export the model so that its outputs are tensors (skl2onnx: options={id(model): {'zipmap': "
                   "False}} for a classifier's probabilities as a tensor)")
        raise InvalidModel(f"{what} {arg.name!r} has type {arg.type}; dbdl feeds numeric tensors and returns numeric or "
                           f"text tensors — {fix}")
    shape = list(arg.shape)
    if not shape:
        raise InvalidModel(
            f"{what} {arg.name!r} is a scalar (no axes); dbdl needs a leading batch axis, one entry per row — "
            + _REEXPORT)
    dims = _declared(arg)
    rest: list[int | None] = [d if isinstance(d, int) else None for d in dims[1:]]
    known = [d for d in rest if d is not None]
    if known and prod(known) > MAX_VALUES_PER_ROW:
        raise InvalidModel(
            f"{what} {arg.name!r} has shape {shape}: {prod(known)} values per row, more "
            f"than the {MAX_VALUES_PER_ROW} dbdl takes or returns per row — check the model's shapes"
        )
    return TensorSpec(arg.name, dtype, tuple(rest), tuple(dims))


def fixed_batch(inputs: Sequence[TensorSpec]) -> int | None:
    """The number of rows a model's inputs fix on axis 0 (every input the same), None when axis 0
    is symbolic anywhere; InvalidModel when all inputs fix it but to different sizes."""
    firsts = [s.dims[0] if s.dims else None for s in inputs]
    if not firsts or any(not isinstance(d, int) for d in firsts):
        return None
    if len(set(firsts)) > 1:
        raise InvalidModel(
            f"the model's inputs fix their first axis to different sizes ({', '.join(f'{s.name}: {d}' for s, d in zip(inputs, firsts))}); "
            "dbdl cannot tell which axis holds the rows — " + _REEXPORT)
    return int(firsts[0])


def signature_of(session) -> Signature:
    """The Signature of an onnxruntime session, or InvalidModel saying why dbdl cannot feed it.

    Inputs may have symbolic axes besides the batch axis (token sequences) and may be 1-D (an
    EmbeddingBag's flat tokens and offsets); how they are fed is ``build_feeds``' business. An
    input whose first axis is fixed makes the model a fixed-batch one (``Signature.batch``). An
    output's first axis must follow the rows: symbolic, or the inputs' fixed batch size."""
    inputs = tuple(_spec_from_ort(a, is_input=True) for a in session.get_inputs())
    outputs = tuple(_spec_from_ort(a, is_input=False) for a in session.get_outputs())
    if not inputs or not outputs:
        raise InvalidModel("the model has no inputs or no outputs; dbdl needs at least one of each — export the model "
                           "with its inputs and outputs declared (torch.onnx.export(..., input_names=[...], "
                           "output_names=[...]))")
    batch = fixed_batch(inputs)
    for spec in outputs:
        first = spec.dims[0]
        if isinstance(first, int) and first != batch:
            # the inputs' batch axis is dynamic (or another size), so a fixed one here means the output
            # does not follow the rows (a reduction or reshape across rows)
            rows = "any number of rows" if batch is None else f"{batch} rows"
            raise InvalidModel(
                f"output {spec.name!r} has shape {list(spec.dims)}, a fixed batch size of {first}, while the inputs "
                f"take {rows}; dbdl needs one output row per input row — the model reduces or reshapes across "
                "rows (e.g. ReduceMean over axis 0, Reshape to [-1]); keep axis 0 as the batch axis and " + _REEXPORT)
    return Signature(inputs, outputs, batch)


def make_session(model_bytes: bytes, threads: int = 0):
    """An onnxruntime CPU session for ``model_bytes`` (``threads=0``: onnxruntime's default).

    The bytes are checked first (no external data, no custom-operator domains): they may have
    been stored before dbdl checked them at registration, or written behind dbdl's back."""
    check_model_bytes(model_bytes)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad bytes
        text = " ".join(str(exc).split())[:400]
        if "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text:
            fix = ("an operator (or its version) has no onnxruntime kernel: re-export with another opset, "
                   "torch.onnx.export(..., opset_version=17) / skl2onnx.to_onnx(..., target_opset=17), or replace "
                   "that operator in the model")
        else:
            fix = ("the model must load with onnxruntime.InferenceSession(path) — re-export it with a current "
                   "exporter and opset (torch.onnx.export(..., opset_version=17), skl2onnx.to_onnx(..., "
                   "target_opset=17)) and check it with onnx.checker.check_model(onnx.load(path), full_check=True)")
        raise InvalidModel(
            f"onnxruntime {ort.__version__} cannot load the model ({exc.__class__.__name__}: {text}); {fix}"
        ) from exc


class SessionCache:
    """Process-wide LRU of onnxruntime sessions keyed by (model sha256, threads).

    Building a session costs milliseconds to seconds (PostgresML #1175 saw 16 s on every new
    connection); a model version's bytes never change, so its hash is a key that never goes stale.
    """

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, int], tuple[object, Signature]] = OrderedDict()
        self._lock = threading.Lock()
        self.builds = 0

    def get(self, sha256: str, load_bytes: Callable[[], bytes], threads: int = 0, model: str | None = None):
        key = (sha256, threads)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        data = load_bytes()
        # the registry's key is a promise about the bytes: stored bytes changed behind the
        # registry's back (a direct write to the blobs table) are never served
        if hashlib.sha256(data).hexdigest() != sha256:
            what = f"model {model!r}" if model else f"the model with sha256 {sha256[:12]}…"
            raise InvalidModel(f"the stored bytes of {what} do not match their sha256 {sha256[:12]}… (they were changed "
                               "outside dbdl's registry); register the model again from its file, or drop this version")
        session = make_session(data, threads)
        entry = (session, signature_of(session))
        with self._lock:
            self._items[key] = entry
            self.builds += 1
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return entry

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


SESSIONS = SessionCache()


def check_features(signature: Signature, n_features: int, model_ref: str) -> None:
    expected = signature.n_features
    if n_features != expected:
        detail = ""
        if len(signature.inputs) > 1:
            parts = " + ".join(f"{s.name}:{s.per_row}" for s in signature.inputs)
            detail = f" ({parts}, concatenated in input order)"
        raise ShapeMismatch(
            f"model {model_ref!r} takes {expected} features per row{detail}, got {n_features}; "
            f"pass a vector of exactly {expected} numbers (e.g. a FLOAT[{expected}] column)"
        )


def as_float_matrix(values, n_rows: int, n_features: int) -> np.ndarray:
    """A (rows x features) float32 view of a flat buffer, without a copy where the dtype allows."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiub":
        raise DTypeMismatch(
            f"features must be numbers, got values of type {arr.dtype}; cast the column to FLOAT[] first"
        )
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return arr.reshape(n_rows, n_features)


def run_batch(session, signature: Signature, features, output: int = 0,
              model_ref: str = "the model") -> np.ndarray:
    """Run ``session`` on a batch of rows; the chosen output as a (rows x values) matrix.

    ``features`` is what a backend decoded for the batch (today one (rows x features) matrix,
    split over the model's inputs in order). ``build_feeds`` turns it into onnxruntime's feed
    dict; ``run_feeds`` runs the session and checks the output. The output must have one row per
    input row and the width the model declares: a model that ignores the batch axis would
    otherwise hand each row values computed from other rows."""
    n = features.shape[0]
    spec_out = signature.outputs[output]
    if n == 0:
        return np.zeros((0, spec_out.per_row or 0), dtype=np.float32)
    return run_feeds(session, signature, build_feeds(signature, features), n, output, model_ref)


def build_feeds(signature: Signature, features) -> dict[str, np.ndarray]:
    """onnxruntime's feed dict for one batch: each input in its own dtype and per-row shape."""
    n = features.shape[0]
    feeds = {}
    start = 0
    for spec in signature.inputs:
        width = spec.per_row or 0
        part = features[:, start : start + width] if len(signature.inputs) > 1 else features
        start += width
        part = part.reshape((n, *spec.shape))
        if part.dtype != np.dtype(spec.dtype):
            part = part.astype(spec.dtype)
        feeds[spec.name] = np.ascontiguousarray(part)
    return feeds


def run_feeds(session, signature: Signature, feeds: dict[str, np.ndarray], n: int, output: int = 0,
              model_ref: str = "the model") -> np.ndarray:
    """The one place a session runs: ``feeds`` for ``n`` rows in, output ``output`` as (rows x values).

    A model with a fixed batch size (``signature.batch``) runs on slices of exactly that many
    rows, the last one padded by repeating its last row; the padding rows' outputs are dropped."""
    spec_out = signature.outputs[output]
    batch = signature.batch
    if batch is None or n == batch:
        return checked_output(_run(session, spec_out, feeds, n, model_ref), n, spec_out, model_ref)
    parts = []
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        piece = {}
        for name, value in feeds.items():
            if value.shape[:1] != (n,):
                piece[name] = value  # not fed by row
                continue
            part = value[start:stop]
            if stop - start < batch:
                part = np.concatenate([part, np.repeat(part[-1:], batch - (stop - start), axis=0)])
            piece[name] = part
        result = checked_output(_run(session, spec_out, piece, batch, model_ref), batch, spec_out, model_ref)
        parts.append(result[: stop - start])
    return np.concatenate(parts)


def _run(session, spec_out: TensorSpec, feeds: dict[str, np.ndarray], n: int, model_ref: str) -> np.ndarray:
    try:
        return np.asarray(session.run([spec_out.name], feeds)[0])
    except Error:
        raise
    except Exception as exc:  # onnxruntime's Fail / InvalidArgument / RuntimeException, MemoryError
        text = " ".join(str(exc).split())[:400]
        raise ModelRuntimeError(
            f"model {model_ref!r} failed in onnxruntime on a batch of {n} rows ({exc.__class__.__name__}: {text}); "
            "the model cannot run on these features — check it with onnxruntime on a batch of the same shape, "
            "or register a version that accepts any number of rows"
        ) from exc


def checked_output(result: np.ndarray, n: int, spec: TensorSpec, model_ref: str) -> np.ndarray:
    """A model's output for ``n`` rows as (rows x values), or ModelRuntimeError when it has another
    row count or another width than ``spec`` declares (the same rule for onnxruntime and torch)."""
    result = np.asarray(result)
    if result.ndim == 0 or result.shape[0] != n:
        raise ModelRuntimeError(
            f"model {model_ref!r} returned output {spec.name!r} of shape {list(result.shape)} for a batch of "
            f"{n} rows; dbdl needs exactly one output row per input row — the model mixes rows (e.g. a Concat, "
            "Tile, Reshape or reduction over axis 0): keep axis 0 as the batch axis and register a fixed version"
        )
    width = int(prod(result.shape[1:]))
    declared = spec.per_row
    if declared is not None and width != declared:
        raise ModelRuntimeError(
            f"model {model_ref!r} returned {width} values per row for output {spec.name!r} (shape "
            f"{list(result.shape)} for {n} rows) but declares {declared} (shape {list(spec.shape)}); fix the "
            "model's declared output shape or its graph, then register it again"
        )
    return result.reshape(n, width)


def text_output_error(model_ref: str, output_name: str, kind: str) -> ShapeMismatch:
    """predict_array / predict_class on an output that holds text (a classifier's class names)."""
    return ShapeMismatch(
        f"model {model_ref!r} output {output_name!r} holds text (class names), so {_SQL_KINDS[kind]}() cannot return "
        f"it; call predict({model_ref.split(':')[0]!r}, ...) for the class name, or name the numeric output, e.g. "
        f"predict_array('{model_ref.split(':')[0]}:probabilities', ...)")


def label_class_error(model_ref: str, output_name: str, scores: str | None) -> ShapeMismatch:
    """predict_class on an output with one value per row."""
    base = model_ref.split(":")[0]
    if scores is not None:
        return ShapeMismatch(
            f"model {model_ref!r} output {output_name!r} has one value per row (it is already the class), so it has "
            f"no arg-max; call predict({base!r}, ...) for the class, or predict_class('{base}:{scores}', ...) for the "
            f"arg-max of output {scores!r}")
    return ShapeMismatch(
        f"model {model_ref!r} output {output_name!r} has one value per row, so it has no arg-max; "
        "compare predict(...) with a threshold instead of calling predict_class()")


_SQL_KINDS = {"scalar": "predict", "array": "predict_array", "class": "predict_class"}


def shape_outputs(values: np.ndarray, kind: str, model_ref: str, output_name: str,
                  signature: Signature | None = None) -> np.ndarray:
    """Turn a (rows x values) output into what predict (scalar), predict_array or predict_class
    returns: float32 values, int64 classes, or (predict on a text output) an object array of str."""
    text = values.dtype.kind in "OUS"
    if text and kind != "scalar":
        raise text_output_error(model_ref, output_name, kind)
    if kind == "array":
        return values.astype(np.float32, copy=False)
    if len(values) == 0:  # an empty batch: nothing to check the width of
        return np.zeros(0, dtype=object if text else np.int64 if kind == "class" else np.float32)
    if kind == "class":
        if values.shape[1] < 2:
            scores = signature.scores_output() if signature is not None else None
            raise label_class_error(model_ref, output_name, scores.name if scores is not None else None)
        return np.argmax(values, axis=1).astype(np.int64)
    if values.shape[1] != 1:
        raise ShapeMismatch(
            f"model {model_ref!r} output {output_name!r} has {values.shape[1]} values per row but predict() "
            "returns one; use predict_array() for the whole vector or predict_class() for the arg-max"
        )
    if text:
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values[:, 0]], dtype=object)
    return values[:, 0].astype(np.float32, copy=False)
