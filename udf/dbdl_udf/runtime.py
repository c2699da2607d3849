"""Scoring a batch of feature rows with onnxruntime.

Every backend's predict body ends here: each SQL argument of a batch arrives as a ``Column``
(flat values in their native dtype, a validity mask, a width or row offsets, a nested shape;
see "the feeding layer" below), ``build_feeds`` maps the Columns onto the model's inputs (dtype,
reshape, padding, offsets), one ``InferenceSession.run`` scores the batch and the output comes
back as one matrix. The older form, one float32 matrix (rows x features) split over the inputs,
still works. Sessions are built once per model (by content hash) per process.
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

from .errors import DTypeMismatch, Error, InvalidArgument, InvalidModel, ModelRuntimeError, ShapeMismatch
from .kinds import function_name
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
    options.log_severity_level = 4  # errors come back as exceptions, with their text; no duplicate on stderr
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


def run_batch(session, signature: Signature, features, output: int = 0,
              model_ref: str = "the model", options: dict | None = None) -> np.ndarray:
    """Run ``session`` on a batch of rows; the chosen output as a (rows x values) matrix.

    ``features`` is what a backend decoded for the batch: a list of ``Column`` (one per SQL
    argument; only the rows valid in every Column are fed, and the result has one row per such
    row, in order — ``valid_rows(columns)`` says which), or, as before, one (rows x features)
    matrix split over the model's inputs in order. ``build_feeds`` turns it into onnxruntime's
    feed dict; ``run_feeds`` runs the session and checks the output. The output must have one row
    per input row and the width the model declares: a model that ignores the batch axis would
    otherwise hand each row values computed from other rows."""
    if isinstance(features, (list, tuple)):
        rows = valid_rows(features)
        features = take_rows(features, rows)
        n = int(rows.sum())
    else:
        n = features.shape[0]
    spec_out = signature.outputs[output]
    if n == 0:
        return np.zeros((0, spec_out.per_row or 0), dtype=np.float32)
    feeds = build_feeds(signature, features, options, model_ref)
    return run_feeds(session, signature, feeds, n, output, model_ref)


def dense_runner(session, signature: Signature, output: int = 0,
                 model_ref: str = "the model") -> Callable[[np.ndarray], np.ndarray] | None:
    """``run(matrix)``: what ``run_batch(session, signature, matrix, output)`` returns, for the
    common case only and with as little Python per batch as can be — or None outside that case.

    The case: one float32 input of fixed per-row shape, any number of rows per run, an output of
    known width; ``matrix`` is (rows x n_features) float32, every row scored. It is fed as it is
    (a view of the caller's buffer, reshaped to the input's axes) and the output comes back as
    (rows x width), checked as ``checked_output`` checks it. A backend calls it once per chunk of
    rows, right after onnxruntime has pushed everything else out of the CPU's caches: each Python
    call made per chunk costs there, which is why this path makes few."""
    if signature.batch is not None or len(signature.inputs) != 1:
        return None
    spec, out = signature.inputs[0], signature.outputs[output]
    if spec.dtype != "float32" or not spec.per_row or out.per_row is None or out.is_text:
        return None
    name, width, features = spec.name, out.per_row, spec.per_row
    shape = (-1, *spec.shape)

    def run(matrix: np.ndarray) -> np.ndarray:
        n = matrix.shape[0]
        if matrix.shape[1] != features:
            check_features(signature, matrix.shape[1], model_ref)
        y = _run(session, out, {name: matrix.reshape(shape)}, n, model_ref)
        if y.shape != (n, width):
            return checked_output(y, n, out, model_ref)
        return y

    return run


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
    base = model_ref.split(":")[0].split("@")[0]
    return ShapeMismatch(
        f"model {model_ref!r} output {output_name!r} holds text (class names), so {function_name(kind)}() cannot return "
        f"it; call predict({base!r}, ...) for the class name, or name a numeric output, e.g. "
        f"predict_array('{base}:probabilities', ...)")


def label_class_error(model_ref: str, output_name: str, scores: str | None) -> ShapeMismatch:
    """predict_class on an output with one value per row."""
    base = model_ref.split(":")[0].split("@")[0]
    if scores is not None:
        return ShapeMismatch(
            f"model {model_ref!r} output {output_name!r} has one value per row (it is already the class), so it has "
            f"no arg-max; call predict({base!r}, ...) for the class, or predict_class('{base}:{scores}', ...) for the "
            f"arg-max of output {scores!r}")
    return ShapeMismatch(
        f"model {model_ref!r} output {output_name!r} has one value per row, so it has no arg-max; "
        "compare predict(...) with a threshold instead of calling predict_class()")



def shape_outputs(values: np.ndarray, kind: str, model_ref: str, output_name: str,
                  signature: Signature | None = None) -> np.ndarray:
    """Turn a (rows x values) output into what predict (scalar), predict_array or predict_class
    returns: float32 values, int64 classes, or (predict on a text output) an object array of str."""
    text = values.dtype.kind in "OUS"
    if text and kind == "class" and values.shape[1:] == (1,):
        scores = signature.scores_output() if signature is not None else None
        raise label_class_error(model_ref, output_name, scores.name if scores is not None else None)
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


# -- the feeding layer -------------------------------------------------------------------------
#
# A backend decodes each SQL argument of a predict call, for one batch of rows, into a Column;
# build_feeds maps the Columns onto the model's inputs:
#
# * one Column per model input, in the model's input order (``predict('m', a, b)``);
# * one Column for a model with several fixed-width inputs: the one-vector form, each row's values
#   concatenated over the inputs in order (as dbdl always took them);
# * one Column of token lists for an EmbeddingBag-style model with inputs (tokens[T], offsets[B]):
#   the flat tokens of the batch plus each row's start offset (``feed_mode``).
#
# Each input gets its own dtype (integers are never routed through float32: ids above 2**24 stay
# exact) and its per-row shape: a flat row of the right size is reshaped to the input's axes, a
# nested row must have the input's shape (axes of length 1 aside), and rows of different lengths
# are padded to the batch's longest row with the model option ``pad_id`` where the input has a
# symbolic axis. Rows whose ``valid`` is False (a NULL row or a NULL element) are not fed; the
# caller puts NULL in their place (``valid_rows`` / ``take_rows``).

FEED_MODES = ("auto", "columns", "concat", "offsets")


@dataclass
class Column:
    """One SQL argument's values for a batch of rows, as a backend decoded them.

    ``values`` holds every row's elements one after another, in their native dtype (float*,
    int*, uint8, bool). Rows have either one length, ``width`` (then ``offsets`` is None), or
    each its own: ``offsets`` (int64, n + 1 entries) gives row i as ``values[offsets[i]:offsets[i+1]]``.
    ``valid`` is False for a row that must give NULL (a NULL value, or a NULL element in it).
    ``shape`` is the per-row nested shape of the SQL value where the type says it (DuckDB
    ``FLOAT[3][32][32]`` -> (3, 32, 32)); None for a flat value.
    """

    values: np.ndarray
    valid: np.ndarray
    width: int | None = None
    offsets: np.ndarray | None = None
    shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values).reshape(-1)
        self.valid = np.asarray(self.valid, dtype=bool).reshape(-1)
        if self.offsets is not None:
            self.offsets = np.asarray(self.offsets, dtype=np.int64).reshape(-1)
            if len(self.offsets) != len(self.valid) + 1:
                raise InvalidArgument(f"a Column of {len(self.valid)} rows needs {len(self.valid) + 1} offsets, "
                                      f"got {len(self.offsets)}")
        elif self.width is None:
            n = len(self.valid)
            if n and len(self.values) % n:
                raise InvalidArgument(f"{len(self.values)} values do not split into {n} rows of one width")
            self.width = len(self.values) // n if n else 0
        if self.shape is not None:
            self.shape = tuple(int(d) for d in self.shape)

    def __len__(self) -> int:
        return len(self.valid)

    @classmethod
    def from_matrix(cls, matrix, valid=None) -> "Column":
        """A Column from a (rows x ...) array: rows of one length, the trailing axes as ``shape``."""
        arr = np.asarray(matrix)
        if arr.ndim == 1:
            arr = arr[:, None]
        n = arr.shape[0]
        valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        shape = tuple(arr.shape[1:]) if arr.ndim > 2 else None
        if np.ndim(matrix) == 1:
            shape = ()  # one number per row
        return cls(arr.reshape(-1), valid, width=int(prod(arr.shape[1:])), shape=shape)

    @classmethod
    def from_rows(cls, rows, dtype=None) -> "Column":
        """A Column from Python values, one per row: a list / array of numbers, bytes (uint8 values),
        a nested list (its shape becomes ``shape``) or None (a NULL row). A None element makes its row NULL."""
        n = len(rows)
        valid = np.ones(n, dtype=bool)
        parts: list[np.ndarray] = []
        shapes: set[tuple[int, ...]] = set()
        for i, row in enumerate(rows):
            if row is None:
                valid[i] = False
                parts.append(np.zeros(0, dtype=dtype or np.float32))
                continue
            if isinstance(row, (bytes, bytearray, memoryview)):
                arr = np.frombuffer(bytes(row), dtype=np.uint8)
            else:
                try:
                    arr = np.asarray(row, dtype=dtype)
                except (ValueError, TypeError):  # a None inside, or ragged nesting
                    arr = np.asarray(row, dtype=object)
                if arr.dtype == object:
                    flat = list(_flatten(row))
                    if any(v is None for v in flat):
                        valid[i] = False
                        parts.append(np.zeros(0, dtype=dtype or np.float32))
                        continue
                    raise DTypeMismatch(f"row {i} is not a list of numbers of one nesting shape "
                                        f"({str(row)[:60]}); pass flat lists of numbers or arrays of one shape")
            shapes.add(tuple(arr.shape))
            parts.append(arr.reshape(-1))
        live = [p for p, ok in zip(parts, valid) if ok]
        kind = np.result_type(*live) if live else np.dtype(dtype or np.float32)
        values = np.concatenate([p.astype(kind, copy=False) for p in parts]) if parts else np.zeros(0, kind)
        lengths = np.array([len(p) for p in parts], dtype=np.int64)
        live_lengths = set(lengths[valid].tolist())
        shape = None
        if len(shapes) == 1:
            only = shapes.pop()
            shape = only if len(only) != 1 else None  # () for numbers, None for flat lists
        if len(live_lengths) <= 1 and valid.all():
            return cls(values, valid, width=int(lengths[0]) if n else 0, shape=shape)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return cls(values, valid, offsets=offsets, shape=shape)

    def lengths(self) -> np.ndarray:
        """Values per row (int64)."""
        if self.offsets is None:
            return np.full(len(self), self.width or 0, dtype=np.int64)
        return np.diff(self.offsets)

    def fixed_width(self) -> int | None:
        """The one length of the valid rows, or None where they differ."""
        if self.offsets is None:
            return self.width
        lengths = self.lengths()[self.valid]
        if len(lengths) == 0:
            return 0
        return int(lengths[0]) if (lengths == lengths[0]).all() else None

    def take(self, rows: np.ndarray) -> "Column":
        """The Column restricted to the rows where the bool mask ``rows`` is True."""
        rows = np.asarray(rows, dtype=bool)
        if rows.all():
            return self
        if self.offsets is None:
            w = self.width or 0
            values = self.values.reshape(len(self), w)[rows].reshape(-1) if w else self.values[:0]
            return Column(values, self.valid[rows], width=w, shape=self.shape)
        lengths = self.lengths()[rows]
        starts = self.offsets[:-1][rows]
        index = _ranges(starts, lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return Column(self.values[index], self.valid[rows], offsets=offsets, shape=self.shape)

    def slice(self, start: int, stop: int) -> "Column":
        """Rows ``start`` to ``stop - 1``, as views of the same buffers (``take`` copies)."""
        stop = min(stop, len(self))
        if self.offsets is None:
            w = self.width or 0
            return Column(self.values[start * w:stop * w], self.valid[start:stop], width=w, shape=self.shape)
        offsets = self.offsets[start:stop + 1]
        return Column(self.values[offsets[0]:offsets[-1]], self.valid[start:stop], offsets=offsets - offsets[0],
                      shape=self.shape)

    def matrix(self) -> np.ndarray:
        """(rows x width) of a Column whose valid rows have one length (others must not be valid)."""
        w = self.fixed_width()
        if self.offsets is None:
            return self.values.reshape(len(self), w or 0)
        if self.valid.all():
            return self.values.reshape(len(self), w or 0)
        out = np.zeros((len(self), w or 0), dtype=self.values.dtype)
        if w:
            out[self.valid] = self.values[_ranges(self.offsets[:-1][self.valid], self.lengths()[self.valid])
                                          ].reshape(-1, w)
        return out


def _flatten(value):
    if isinstance(value, (list, tuple, np.ndarray)):
        for v in value:
            yield from _flatten(v)
    else:
        yield value


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges start..start+length (vectorised)."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    index = np.arange(total, dtype=np.int64)
    index += np.repeat(starts - (ends - lengths), lengths)
    return index


def valid_rows(columns: "list[Column]") -> np.ndarray:
    """Rows every Column can feed: the others give NULL."""
    valid = np.ones(len(columns[0]), dtype=bool)
    for c in columns:
        if len(c) != len(valid):
            raise InvalidArgument(f"predict's arguments have {len(valid)} and {len(c)} rows in one batch")
        valid &= c.valid
    return valid


def take_rows(columns: "list[Column]", rows: np.ndarray) -> "list[Column]":
    return [c.take(rows) for c in columns]


FEED_OPTIONS = ("pad_id", "feed")


def feed_options(options) -> dict:
    """The model options build_feeds reads (``pad_id``, ``feed``) from the model's options (a dict,
    or the JSON text dbdl.models / dbdl.model_catalog stores)."""
    if options is None:
        return {}
    if isinstance(options, (str, bytes)):
        try:
            options = json.loads(options or "{}")
        except ValueError:
            return {}
    if not isinstance(options, dict):
        return {}
    return {k: options[k] for k in FEED_OPTIONS if options.get(k) is not None}


def _is_offsets_input(spec: TensorSpec) -> bool:
    return spec.shape == () and "offset" in spec.name.lower() and np.dtype(spec.dtype).kind in "iu"


def feed_mode(signature: Signature, n_columns: int, options: dict | None = None) -> str:
    """How ``n_columns`` SQL arguments map onto the model's inputs: 'columns' (one per input),
    'concat' (one vector split over the inputs) or 'offsets' (token lists -> tokens + offsets).
    The model option ``feed`` ('offsets', 'columns', 'concat', default 'auto') can force it."""
    inputs = signature.inputs
    forced = (options or {}).get("feed", "auto") or "auto"
    if forced not in FEED_MODES:
        raise InvalidArgument(f"model option feed={forced!r} is not one of {', '.join(FEED_MODES)}")
    offsets_like = (len(inputs) == 2 and inputs[0].shape == () and inputs[1].shape == ()
                    and all(np.dtype(s.dtype).kind in "iu" for s in inputs))
    if forced == "offsets" or (forced == "auto" and n_columns == 1 and offsets_like and _is_offsets_input(inputs[1])):
        if not offsets_like:
            raise InvalidArgument(
                "model option feed='offsets' needs a model with two 1-D integer inputs (tokens[T], offsets[B]), "
                f"this one takes {_describe_inputs(signature)}; set feed='auto'")
        if n_columns != 1:
            raise ShapeMismatch(f"an offsets model takes one argument (each row's token list), got {n_columns}")
        return "offsets"
    if forced == "columns" or (forced == "auto" and n_columns == len(inputs) and n_columns > 1):
        if n_columns != len(inputs):
            raise ShapeMismatch(f"the model takes {len(inputs)} inputs ({_describe_inputs(signature)}); pass "
                                f"{len(inputs)} arguments in that order, got {n_columns}")
        return "columns"
    if n_columns == len(inputs):
        return "columns"
    if n_columns == 1:
        return "concat"
    if len(inputs) == 1:
        raise ShapeMismatch(
            f"the model takes one input ({_describe_inputs(signature)}), so predict takes one features argument after "
            f"the model; got {n_columns} — build one vector of them instead (DuckDB [a, b, c], PostgreSQL "
            "ARRAY[a, b, c])")
    raise ShapeMismatch(
        f"the model takes {len(inputs)} inputs ({_describe_inputs(signature)}); pass one argument per input in that "
        f"order, or one vector of all their values concatenated — got {n_columns} arguments")


def _describe_inputs(signature: Signature) -> str:
    return ", ".join(f"{s.name}: {s.dtype}[{', '.join('?' if d is None else str(d) for d in s.shape)}]"
                     for s in signature.inputs)


def _cast(values: np.ndarray, dtype: str, spec: TensorSpec, model_ref: str) -> np.ndarray:
    """``values`` as ``dtype`` without silent loss: integers stay exact, floats fed to an integer or
    bool input must be whole numbers in range."""
    target = np.dtype(dtype)
    src = values.dtype
    if src == target:
        return values
    if src.kind not in "fiub":
        raise DTypeMismatch(f"model {model_ref!r} input {spec.name!r} takes {target} values; got values of type "
                            f"{src} — cast the column to numbers first")
    if target.kind == "b":
        if src.kind != "b" and values.size and not np.isin(values, (0, 1)).all():
            raise DTypeMismatch(f"model {model_ref!r} input {spec.name!r} takes booleans; got numbers other than 0 "
                                "and 1 — pass a BOOLEAN[] column or 0/1 values")
        return values.astype(bool)
    if src.kind == "b" and target.kind != "b":
        raise DTypeMismatch(f"model {model_ref!r} input {spec.name!r} takes {target} values, got booleans; cast the "
                            f"column to numbers, e.g. CAST(col AS FLOAT[])")
    if target.kind in "iu":
        if src.kind == "f":
            if values.size and not np.isfinite(values).all() or (values != np.round(values)).any():
                raise DTypeMismatch(f"model {model_ref!r} input {spec.name!r} takes whole numbers ({target}); got "
                                    "fractional, NaN or infinite values — pass an integer column (BIGINT[] / INTEGER[])")
        if values.size:
            info = np.iinfo(target)
            lo, hi = values.min(), values.max()
            if lo < info.min or hi > info.max:
                raise DTypeMismatch(f"model {model_ref!r} input {spec.name!r} takes {target} values "
                                    f"({info.min}..{info.max}); got values from {lo} to {hi}")
        return values.astype(target)
    return values.astype(target)  # to a float type


def _values_text(shape) -> str:
    return "a sequence of values" if None in shape else f"{int(prod(shape))} numeric values"


def _shape_text(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _fixed_rows(col: Column, spec: TensorSpec, model_ref: str, options: dict) -> np.ndarray:
    """(rows, *spec.shape) for an input whose per-row shape has at most one symbolic axis."""
    n = len(col)
    shape = spec.shape
    unknown = [i for i, d in enumerate(shape) if d is None]
    if len(unknown) > 1:
        raise ShapeMismatch(f"model {model_ref!r} input {spec.name!r} has per-row shape {_shape_text(shape)} with "
                            "more than one symbolic axis; dbdl feeds inputs with at most one (a sequence length) — "
                            "export with fixed sizes for the other axes")
    if col.shape == () and (None in shape or prod(shape) != 1):
        raise DTypeMismatch(
            f"model {model_ref!r} input {spec.name!r} takes {_values_text(shape)} per row (shape {_shape_text(shape)}), "
            "got one number per row; pass a list or array of numbers (e.g. a FLOAT[n] column, [a, b, c] in DuckDB, "
            "ARRAY[a, b, c] in PostgreSQL)")
    if not unknown:
        need = int(prod(shape))
        width = col.fixed_width()
        if width is None:
            lengths = np.unique(col.lengths()[col.valid])
            raise ShapeMismatch(
                f"model {model_ref!r} input {spec.name!r} takes {need} values per row (shape {_shape_text(shape)}), "
                f"got rows of different lengths {lengths.tolist()[:5]}; pass rows of exactly {need} values — "
                "filter or pad them in SQL")
        if width != need:
            got = f"{width} values per row (rows of shape {_shape_text(col.shape if col.shape else (width,))})"
            raise ShapeMismatch(
                f"model {model_ref!r} takes {need} features per row for input {spec.name!r} (shape "
                f"{_shape_text(shape)}), got {got}; pass a vector of exactly {need} numbers (e.g. a FLOAT[{need}] "
                f"column) or an array of shape {_shape_text(shape)}")
        _check_nesting(col, shape, spec, model_ref)
        return col.matrix().reshape((n, *shape))
    # one symbolic axis: a sequence. Each row's length must be a multiple of the known axes.
    axis = unknown[0]
    inner = int(prod(d for d in shape if d is not None))
    lengths = col.lengths()
    bad = col.valid & (lengths % inner != 0) if inner > 1 else np.zeros(n, dtype=bool)
    if bad.any():
        raise ShapeMismatch(
            f"model {model_ref!r} input {spec.name!r} has per-row shape {_shape_text(shape)}: each row needs a multiple "
            f"of {inner} values, got a row of {int(lengths[bad][0])}")
    steps = np.where(col.valid, lengths // max(inner, 1), 0)
    longest = int(steps.max()) if n else 0
    if (steps[col.valid] == longest).all() if col.valid.any() else True:
        full = col.matrix() if col.offsets is not None or col.width else col.values.reshape(n, 0)
        if axis == 0:
            return full.reshape((n, longest, *shape[1:]))
        return full.reshape((n, *[longest if d is None else d for d in shape]))
    pad = options.get("pad_id") if options else None
    if pad is None:
        raise ShapeMismatch(
            f"model {model_ref!r} input {spec.name!r} takes sequences (shape {_shape_text(shape)}) and the rows of this "
            f"batch have different lengths ({int(steps[col.valid].min())} to {longest}); set the id to pad them with: "
            f"db.models.set_options(name, pad_id=0) (or CALL dbdl.set_model_options(name, pad_id => 0))")
    if axis != 0:
        raise ShapeMismatch(
            f"model {model_ref!r} input {spec.name!r} has its symbolic axis at position {axis + 1} of "
            f"{_shape_text(shape)}; dbdl pads only the first per-row axis — pass rows of one length")
    flat = np.full((n, longest * inner), pad, dtype=col.values.dtype if col.values.dtype.kind != "b" else np.int64)
    if col.values.dtype.kind == "f" or np.dtype(spec.dtype).kind == "f":
        flat = flat.astype(np.result_type(col.values.dtype, np.float32))
    rows = np.flatnonzero(col.valid)
    lens = lengths[rows]
    src = _ranges(col.offsets[:-1][rows], lens) if col.offsets is not None else _ranges(rows * (col.width or 0), lens)
    dst = _ranges(rows * longest * inner, lens)
    flat.reshape(-1)[dst] = col.values[src]
    return flat.reshape((n, longest, *shape[1:]))


def _check_nesting(col: Column, shape: tuple, spec: TensorSpec, model_ref: str) -> None:
    """A nested value fed to an input of several axes must have the input's shape (axes of length 1
    aside); a flat value is reshaped to any shape of its size, and a flat input takes any nesting."""
    if not col.shape or len(col.shape) < 2 or len([d for d in shape if d != 1]) < 2:
        return  # a flat value, or a flat input: nested rows are flattened in row-major order
    if tuple(d for d in col.shape if d != 1) != tuple(d for d in shape if d != 1):
        raise ShapeMismatch(
            f"model {model_ref!r} input {spec.name!r} takes rows of shape {_shape_text(shape)}, got nested rows of "
            f"shape {_shape_text(col.shape)} ({int(prod(col.shape))} values either way, in another layout); "
            "rearrange the data to the model's layout (e.g. channels first), or pass it flat if it already is "
            f"(DuckDB's array type lists the sizes innermost first: rows of shape {_shape_text(shape)} are "
            f"FLOAT{''.join(f'[{d}]' for d in reversed(shape))})")


def build_feeds(signature: Signature, columns, options: dict | None = None,
                model_ref: str = "the model") -> dict[str, np.ndarray]:
    """onnxruntime's feed dict for one batch: each input in its own dtype and per-row shape.

    ``columns`` is a list of Columns (every row valid: see ``take_rows``) or, as before, one
    (rows x features) matrix. ``options`` are the model's options (``pad_id``, ``feed``)."""
    options = options or {}
    if not isinstance(columns, (list, tuple)):
        columns = [Column.from_matrix(columns)]
    mode = feed_mode(signature, len(columns), options)
    inputs = signature.inputs
    feeds: dict[str, np.ndarray] = {}
    if mode == "offsets":
        col = columns[0]
        lengths = col.lengths()
        tokens = col.values if col.offsets is None else col.values[col.offsets[0]:col.offsets[-1]]
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(col) else np.zeros(0, np.int64)
        feeds[inputs[0].name] = np.ascontiguousarray(_cast(tokens, inputs[0].dtype, inputs[0], model_ref))
        feeds[inputs[1].name] = _cast(offsets, inputs[1].dtype, inputs[1], model_ref)
        return feeds
    if mode == "concat" and len(inputs) > 1:
        col = columns[0]
        widths = [s.per_row for s in inputs]
        if any(w is None for w in widths):
            raise ShapeMismatch(
                f"model {model_ref!r} takes {len(inputs)} inputs ({_describe_inputs(signature)}), some of variable "
                f"length, so they cannot be passed as one concatenated vector; pass one argument per input: "
                f"predict('{model_ref}', {', '.join(s.name for s in inputs)})")
        total = sum(widths)
        width = col.fixed_width()
        if width != total:
            parts = " + ".join(f"{s.name}:{s.per_row}" for s in inputs)
            got = "rows of different lengths" if width is None else str(width)
            raise ShapeMismatch(
                f"model {model_ref!r} takes {total} features per row ({parts}, concatenated in input order), got "
                f"{got}; pass a vector of exactly {total} numbers (e.g. a FLOAT[{total}] column), or one argument "
                "per input")
        matrix = col.matrix()
        start = 0
        for spec, w in zip(inputs, widths):
            part = np.ascontiguousarray(matrix[:, start:start + w]).reshape((len(col), *spec.shape))
            start += w
            feeds[spec.name] = np.ascontiguousarray(_cast(part, spec.dtype, spec, model_ref))
        return feeds
    for spec, col in zip(inputs, columns):
        part = _fixed_rows(col, spec, model_ref, options)
        feeds[spec.name] = np.ascontiguousarray(_cast(part, spec.dtype, spec, model_ref))
    return feeds
