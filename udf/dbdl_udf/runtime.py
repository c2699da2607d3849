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
from dataclasses import asdict, dataclass
from math import prod
from typing import Callable

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

OUTPUT_KINDS = ("scalar", "array", "class")
MAX_VALUES_PER_ROW = 1 << 24  # 64 MiB of float32 per row: far past any feature or output vector


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: its name, element type and per-row shape (batch axis removed)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    @property
    def per_row(self) -> int | None:
        """Values per row, or None where a trailing axis is symbolic."""
        if any(d is None for d in self.shape):
            return None
        return int(prod(self.shape))


@dataclass(frozen=True)
class Signature:
    """What a model takes and gives, as dbdl feeds it: one feature vector split over the inputs."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

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

    def to_json(self) -> str:
        return json.dumps({"inputs": [asdict(s) for s in self.inputs], "outputs": [asdict(s) for s in self.outputs]})

    @classmethod
    def from_json(cls, text: str | dict) -> "Signature":
        data = json.loads(text) if isinstance(text, str) else text

        def specs(items: list[dict]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(d["name"], d["dtype"], tuple(d["shape"])) for d in items)

        return cls(specs(data["inputs"]), specs(data["outputs"]))


def _spec_from_ort(arg, *, is_input: bool) -> TensorSpec:
    dtype = _ORT_TO_NUMPY.get(arg.type)
    if dtype is None:
        raise InvalidModel(
            f"{'input' if is_input else 'output'} {arg.name!r} has type {arg.type}; dbdl feeds and reads "
            "numeric tensors only — export the model with numeric inputs and outputs"
        )
    shape = list(arg.shape)
    if not shape:
        raise InvalidModel(
            f"{'input' if is_input else 'output'} {arg.name!r} is a scalar; dbdl needs a leading batch axis — "
            "export with a dynamic batch dimension (torch: dynamic_shapes / dynamic_axes on axis 0)"
        )
    batch, rest = shape[0], shape[1:]
    if is_input and isinstance(batch, int) and batch > 0:
        raise InvalidModel(
            f"input {arg.name!r} has a fixed batch size of {batch}; dbdl scores whole batches — "
            "re-export with a dynamic batch axis (torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}) "
            "or dynamic_shapes)"
        )
    if not is_input and isinstance(batch, int) and batch > 0:
        # the inputs' batch axis is dynamic, so a fixed one here means the output does not follow
        # the rows (a reduction or reshape across rows): each row would get another row's values
        raise InvalidModel(
            f"output {arg.name!r} has shape {shape}, a fixed batch size of {batch}, while the inputs take any "
            "number of rows; dbdl needs one output row per input row — the model reduces or reshapes across "
            "rows (e.g. ReduceMean over axis 0, Reshape to [-1]); keep axis 0 as the batch axis and re-export"
        )
    dims: list[int | None] = [d if isinstance(d, int) and d > 0 else None for d in rest]
    known = [d for d in dims if d is not None]
    if known and prod(known) > MAX_VALUES_PER_ROW:
        raise InvalidModel(
            f"{'input' if is_input else 'output'} {arg.name!r} has shape {shape}: {prod(known)} values per row, more "
            f"than the {MAX_VALUES_PER_ROW} dbdl takes or returns per row — check the model's shapes"
        )
    if is_input and any(d is None for d in dims):
        raise InvalidModel(
            f"input {arg.name!r} has shape {shape}: only the batch axis may be dynamic, because each row's "
            "features must have one fixed length — export with a fixed feature shape"
        )
    return TensorSpec(arg.name, dtype, tuple(dims))


def signature_of(session) -> Signature:
    """The Signature of an onnxruntime session, or InvalidModel saying why dbdl cannot feed it."""
    inputs = tuple(_spec_from_ort(a, is_input=True) for a in session.get_inputs())
    outputs = tuple(_spec_from_ort(a, is_input=False) for a in session.get_outputs())
    if not inputs or not outputs:
        raise InvalidModel("the model has no inputs or no outputs; dbdl needs at least one of each")
    return Signature(inputs, outputs)


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
        raise InvalidModel(
            f"onnxruntime cannot load the model ({exc.__class__.__name__}: {str(exc).strip()[:300]}); "
            "pass a valid ONNX file, ModelProto or torch.nn.Module"
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
    """The one place a session runs: ``feeds`` for ``n`` rows in, output ``output`` as (rows x values)."""
    spec_out = signature.outputs[output]
    try:
        result = np.asarray(session.run([spec_out.name], feeds)[0])
    except Error:
        raise
    except Exception as exc:  # onnxruntime's Fail / InvalidArgument / RuntimeException, MemoryError
        text = " ".join(str(exc).split())[:400]
        raise ModelRuntimeError(
            f"model {model_ref!r} failed in onnxruntime on a batch of {n} rows ({exc.__class__.__name__}: {text}); "
            "the model cannot run on these features — check it with onnxruntime on a batch of the same shape, "
            "or register a version that accepts any number of rows"
        ) from exc
    return checked_output(result, n, spec_out, model_ref)


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


def shape_outputs(values: np.ndarray, kind: str, model_ref: str, output_name: str) -> np.ndarray:
    """Turn a (rows x values) output into what predict (scalar), predict_array or predict_class returns."""
    if kind == "array":
        return values.astype(np.float32, copy=False)
    if len(values) == 0:  # an empty batch: nothing to check the width of
        return np.zeros(0, dtype=np.int64 if kind == "class" else np.float32)
    if kind == "class":
        if values.shape[1] < 2:
            raise ShapeMismatch(
                f"model {model_ref!r} output {output_name!r} has one value per row, so it has no arg-max; "
                "compare predict(...) with a threshold instead of calling predict_class()"
            )
        return np.argmax(values, axis=1).astype(np.int64)
    if values.shape[1] != 1:
        raise ShapeMismatch(
            f"model {model_ref!r} output {output_name!r} has {values.shape[1]} values per row but predict() "
            "returns one; use predict_array() for the whole vector or predict_class() for the arg-max"
        )
    return values[:, 0].astype(np.float32, copy=False)
