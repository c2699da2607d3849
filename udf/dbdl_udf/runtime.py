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

from .errors import DTypeMismatch, InvalidModel, ShapeMismatch

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
    dims: list[int | None] = [d if isinstance(d, int) and d > 0 else None for d in rest]
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
    """An onnxruntime CPU session for ``model_bytes`` (``threads=0``: onnxruntime's default)."""
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


def run_batch(session, signature: Signature, features: np.ndarray, output: int = 0) -> np.ndarray:
    """Run ``session`` on a (rows x features) matrix; the chosen output as a (rows x values) matrix."""
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
    result = session.run([signature.outputs[output].name], feeds)[0]
    return np.asarray(result).reshape(n, -1)


def shape_outputs(values: np.ndarray, kind: str, model_ref: str, output_name: str) -> np.ndarray:
    """Turn a (rows x values) output into what predict (scalar), predict_array or predict_class returns."""
    if kind == "array":
        return values.astype(np.float32, copy=False)
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
