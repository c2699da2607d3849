"""What Spark's executors run for dbdl's UDF-centric path: the Arrow UDF of a pinned model
version (the DL-centric partition scorer is ``sparkdl.py``). Imports nothing of ``dbdl`` (a cluster's executors get this package
shipped as a zip, ``backends/spark/session.py: ship_udf_package``) and pyspark nowhere: the driver
wraps these functions.

A model reaches an executor as a Spark broadcast of its ONNX bytes, pinned on the driver when the
statement is planned; each executor Python worker builds its onnxruntime session once per
(version, threads) in the process-wide ``runtime.SESSIONS`` (Spark reuses its Python workers across
tasks, spark.python.worker.reuse), and every Arrow batch of every task after the first reuses it.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from .arrowio import OUT_TYPES, combined, dense_result, feature_matrix, udf_result
from .runtime import SESSIONS, check_features, dense_runner, run_batch

_FLOAT32 = pa.float32()


def model_threads() -> int:
    """onnxruntime threads per executor task: Spark already runs one task per core (DBDL_UDF_THREADS)."""
    return int(os.environ.get("DBDL_UDF_THREADS", "1"))


def pinned_session(sha256: str, payload: Any, ref: str) -> tuple[Any, Any]:
    """The session of a pinned version in this worker: built from the broadcast bytes on first use."""
    return SESSIONS.get(sha256, lambda: bytes(payload.value if hasattr(payload, "value") else payload),
                        model_threads(), model=ref)


def list_matrix(feats: pa.Array) -> np.ndarray | None:
    """A batch of array<float> features with no NULL row or value, all of one length, as a (rows x n)
    float32 view of the Arrow buffer (no copy); None where ``feature_matrix`` must look closer."""
    n = len(feats)
    if not n or feats.null_count or not pa.types.is_list(feats.type):
        return None
    values = feats.values
    if values.null_count or values.type != _FLOAT32:
        return None
    offsets = np.frombuffer(feats.buffers()[1], np.int32, n + 1, feats.offset * 4)
    start, total = int(offsets[0]), int(offsets[-1] - offsets[0])
    if total % n:
        return None
    width = total // n
    if not np.array_equal(np.diff(offsets), np.full(n, width, np.int32)):
        return None
    first = values.offset + start
    return np.frombuffer(values.buffers()[1], np.float32, total, first * 4).reshape(n, width)


def as_list_array(array: pa.Array) -> pa.Array:
    """A FixedSizeList result as Spark's array<float> (a list with offsets); other arrays unchanged."""
    if not pa.types.is_fixed_size_list(array.type):
        return array
    k, n = array.type.list_size, len(array)
    child = array.values.slice(array.offset * k, n * k)
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, child, mask=array.is_null() if array.null_count else None)


def model_scorer(kind: str, sha256: str, payload: Any, output: int, ref: str, output_name: str
                 ) -> Callable[[pa.Array], pa.Array]:
    """``score(feats)``: the Arrow result of one batch of features (array<float>) for a kind."""
    out_type = OUT_TYPES[kind]
    state: dict[str, Any] = {}

    def score(feats: pa.Array) -> pa.Array:
        if not state:
            session, signature = pinned_session(sha256, payload, ref)
            width = signature.outputs[output].per_row
            lean = width is not None and (kind == "array" or kind == "class" and width >= 2
                                          or kind == "scalar" and width == 1)
            state.update(session=session, signature=signature,
                         run=dense_runner(session, signature, output, ref) if lean else None,
                         fixed=pa.list_(_FLOAT32, width) if lean and kind == "array" else out_type)
        session, signature, run = state["session"], state["signature"], state["run"]
        feats = combined(feats)
        if run is not None:
            matrix = list_matrix(feats)
            if matrix is not None:
                return as_list_array(dense_result(kind, run(matrix), state["fixed"]))
        matrix, valid = feature_matrix(feats)
        n = len(feats)
        if not valid.any():
            return pa.nulls(n, out_type)
        check_features(signature, matrix.shape[1], ref)
        x = matrix if valid.all() else matrix[valid]
        y = run_batch(session, signature, x, output, ref)
        return udf_result(kind, n, valid, y, False, out_type, ref, output_name, signature)

    return score


def session_builds() -> int:
    """Sessions this worker built so far (a function: the closures Spark pickles name it, never
    SESSIONS itself, which holds a lock)."""
    return SESSIONS.builds


def arrow_udf_function(kind: str, sha256: str, payload: Any, output: int, ref: str, output_name: str,
                       build_log: str | None = None) -> Callable[[Iterator[pa.Array]], Iterator[pa.Array]]:
    """The iterator form Spark's ``arrow_udf`` takes: the session is looked up once per task, and
    each Arrow batch of the task's rows is one onnxruntime run. With ``build_log`` (a folder the
    executors can write), each task appends ``<pid> <sessions built> <batches>`` to
    ``<build_log>/<pid>.log``: where the model was loaded, and how often (tests/test_spark.py)."""
    def predict(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
        score = model_scorer(kind, sha256, payload, output, ref, output_name)
        builds, count = session_builds(), 0
        for feats in batches:
            count += 1
            yield score(feats)
        if build_log is not None:
            pid = os.getpid()
            with open(os.path.join(build_log, f"{pid}.log"), "a", encoding="utf-8") as log:
                log.write(f"{pid} {session_builds() - builds} {count}\n")

    return predict
