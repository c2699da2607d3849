"""What Spark's executors run for DL-centric execution: the ``mapInArrow`` function that scores a
partition's Arrow record batches and yields the key columns and ``dbdl_prediction``.

Imports nothing of ``dbdl`` and no pyspark at import (``TaskContext`` is looked up inside a task).
The driver (``dbdl/backends/spark/dl.py``) cannot ship its own scorer — a closure over an
onnxruntime session and the connection — so it ships a ``ScoreJob``: plain data naming the pinned
model version (its ONNX bytes as a Spark broadcast, and its stored torch program as another where
torch may run), the output, the feeding options and the result kind. Each executor Python worker
builds the runtime once (``runtime.SESSIONS`` for onnxruntime, ``_MODULES`` for torch; Spark reuses
its Python workers across tasks) and every batch of every partition after the first reuses it.

The runtime, chosen per executor (``ScoreJob.runtime``):

* ``auto``: torch on the executor's GPU where the version has a torch program and the executor has
  a CUDA device (Spark's GPU resource addresses pick which); onnxruntime's CUDA provider where the
  executor's onnxruntime has one and a GPU is there; else onnxruntime on the task's cores.
* ``torch``: the torch program wherever there is one (CUDA if present, else the CPU).
* ``onnxruntime``: always onnxruntime (CPU, or CUDA with ``auto``'s rule for its provider only).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from .arrowio import OUT_TYPES, arrow_column, assemble, combined
from .errors import InvalidModel
from .runtime import (
    SESSIONS,
    Signature,
    build_feeds,
    checked_output,
    run_batch,
    shape_outputs,
    take_rows,
    valid_rows,
)

RUNTIMES = ("auto", "torch", "onnxruntime")
#: rows per model run inside one Arrow batch (as the DL strategy runs them): bounds a model's
#: intermediates while keeping the per-run overhead negligible
RUN_ROWS = 4096


@dataclass(frozen=True)
class ScoreJob:
    """Everything an executor needs to score a DL-centric source's batches (pickled with the task)."""

    kind: str  # what the scorer shapes: scalar, array or class
    table_kind: str  # the result column's kind: the same, or text (predict() of class names)
    sha256: str
    payload: Any  # a broadcast of the ONNX bytes (or the bytes)
    output: int
    ref: str
    output_name: str
    signature: str  # Signature.to_json()
    options: dict = field(default_factory=dict)  # feeding options (pad_id, feed)
    keyed: bool = False  # the first column is the key dbdl_k, not a feature
    torch_payload: Any = None  # a broadcast of the torch program, where torch may run
    runtime: str = "auto"
    run_rows: int = RUN_ROWS
    stats: Any = None  # a Spark accumulator of RunStats values (rows, workers, runtimes)


# -- what an executor reports back (a Spark accumulator; read by tests and EXPLAIN-like tools) ----

class RunStats:
    """An AccumulatorParam of dicts: rows seen and scored, batches, partitions, the worker pids
    that scored them, and rows per runtime ("onnxruntime-cpu", "torch-cuda:0", …)."""

    def zero(self, value: dict) -> dict:
        return empty_stats()

    def addInPlace(self, a: dict, b: dict) -> dict:
        for key in ("rows", "scored", "batches", "partitions"):
            a[key] = a.get(key, 0) + b.get(key, 0)
        a["pids"] = sorted(set(a.get("pids", ())) | set(b.get("pids", ())))
        runtimes = dict(a.get("runtimes", {}))
        for name, rows in b.get("runtimes", {}).items():
            runtimes[name] = runtimes.get(name, 0) + rows
        a["runtimes"] = runtimes
        return a


def empty_stats() -> dict:
    return {"rows": 0, "scored": 0, "batches": 0, "partitions": 0, "pids": [], "runtimes": {}}


# -- the partition function ---------------------------------------------------------------------

def score_partition(job: ScoreJob, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow's function (bound to ``job`` with functools.partial): each record batch of the
    partition → the same rows' key columns (the row key, or the features) and their prediction
    (NULL for a row not scored: a NULL feature, a NULL element)."""
    score, runtime = None, ""
    stats = empty_stats()
    stats["partitions"], stats["pids"] = 1, [os.getpid()]
    out_type = _arrow_type(job.table_kind)
    try:
        for batch in batches:
            arrays = [combined(batch.column(i)) for i in range(batch.num_columns)]
            names = batch.schema.names
            keys = 1 if job.keyed else len(arrays)
            n = batch.num_rows
            columns = [arrow_column(a) for a in arrays[1 if job.keyed else 0:]]
            valid = valid_rows(columns) if columns and n else np.zeros(n, bool)
            stats["rows"] += n
            stats["batches"] += 1
            if valid.any():
                if score is None:
                    score, runtime = batch_scorer(job)
                y = score(columns)
                prediction = assemble(job.table_kind, n, [(valid, y)], out_type)
                scored = int(valid.sum())
                stats["scored"] += scored
                stats["runtimes"][runtime] = stats["runtimes"].get(runtime, 0) + scored
            else:
                prediction = pa.nulls(n, out_type)
            yield pa.RecordBatch.from_arrays(arrays[:keys] + [prediction], names=names[:keys] + ["dbdl_prediction"])
    finally:
        if job.stats is not None:
            job.stats.add(stats)


def _arrow_type(kind: str) -> pa.DataType:
    """The Arrow type Spark reads the kind's column as (array<float>: a list with offsets)."""
    return OUT_TYPES[kind]


# -- the scorer, rebuilt on the executor ----------------------------------------------------------

def batch_scorer(job: ScoreJob) -> tuple[Callable[[list], np.ndarray], str]:
    """``score(columns)``: the predictions of the rows valid in all ``columns`` (runtime ``Column``s),
    shaped for ``job.kind`` — what ``dbdl.strategies.dl.scorer`` returns on the driver — and the
    name of the runtime it runs on."""
    signature = Signature.from_json(job.signature)
    spec = signature.outputs[job.output]
    run, runtime = _runner(job, signature)

    def score(columns: list) -> np.ndarray:
        rows = valid_rows(columns)
        x = take_rows(columns, rows)
        n = int(rows.sum())
        if n == 0:
            return shape_outputs(np.zeros((0, spec.per_row or 0), np.float32), job.kind, job.ref, spec.name, signature)
        step = max(1, job.run_rows)
        if n <= step:
            y = run(x, n)
        else:  # several runs over slices of the batch's buffers: intermediates grow with the rows fed
            y = np.concatenate([run([c.slice(i, i + step) for c in x], min(step, n - i)) for i in range(0, n, step)])
        return shape_outputs(y, job.kind, job.ref, spec.name, signature)

    return score, runtime


def _runner(job: ScoreJob, signature: Signature) -> tuple[Callable[[list, int], np.ndarray], str]:
    gpu = _gpu_device()
    use_torch = job.torch_payload is not None and (job.runtime == "torch" or job.runtime == "auto" and gpu)
    spec = signature.outputs[job.output]
    if use_torch:
        import torch

        device = gpu or "cpu"
        module = _torch_module(job, device)

        def run_torch(x: list, n: int) -> np.ndarray:
            feeds = build_feeds(signature, x, job.options, job.ref)
            with torch.no_grad():
                # writable copies: Arrow buffers are read-only
                y = module(*[torch.from_numpy(np.array(feeds[s.name])).to(device) for s in signature.inputs])
            y = y[job.output] if isinstance(y, (tuple, list)) else y
            return checked_output(y.float().cpu().numpy(), n, spec, job.ref)

        return run_torch, f"torch-{device}"
    session, signature, where = _onnx_session(job, gpu)

    def run_onnx(x: list, n: int) -> np.ndarray:
        return run_batch(session, signature, x, job.output, job.ref, job.options)

    return run_onnx, f"onnxruntime-{where}"


def task_threads() -> int:
    """Threads for one task's model runs: DBDL_UDF_THREADS, else the cores Spark gave the task
    (spark.task.cpus, 1 by default: Spark already runs one task per core)."""
    if os.environ.get("DBDL_UDF_THREADS"):
        return int(os.environ["DBDL_UDF_THREADS"])
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        return max(1, int(context.cpus())) if context is not None else 1
    except Exception:  # noqa: BLE001 - outside a task, an older pyspark
        return 1


def _payload_bytes(payload: Any) -> bytes:
    return bytes(payload.value if hasattr(payload, "value") else payload)


_LOCK = threading.Lock()
_MODULES: dict[tuple[str, str], Any] = {}
_CUDA_SESSIONS: dict[str, tuple[Any, Signature]] = {}


def _torch_module(job: ScoreJob, device: str) -> Any:
    """The version's torch program on ``device``, loaded once per worker."""
    key = (job.sha256, device)
    with _LOCK:
        module = _MODULES.get(key)
    if module is None:
        import io

        import torch

        try:
            module = torch.export.load(io.BytesIO(_payload_bytes(job.torch_payload))).module().to(device)
        except Exception as exc:
            raise InvalidModel(f"the executor cannot load the torch program of model {job.ref!r} ({type(exc).__name__}: "
                               f"{str(exc)[:200]}); install the torch version it was registered with on the "
                               "executors, or set spark.dbdl.dl.runtime=onnxruntime") from exc
        if device == "cpu":
            torch.set_num_threads(task_threads())
        with _LOCK:
            _MODULES[key] = module
    return module


def _onnx_session(job: ScoreJob, gpu: str | None) -> tuple[Any, Signature, str]:
    """onnxruntime's session of the pinned bytes: on the GPU where this onnxruntime has a CUDA
    provider and the executor a device, else on the CPU (``runtime.SESSIONS``)."""
    if gpu:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            with _LOCK:
                hit = _CUDA_SESSIONS.get(job.sha256)
            if hit is None:
                hit = _cuda_session(job, ort, gpu)
                with _LOCK:
                    _CUDA_SESSIONS[job.sha256] = hit
            return hit[0], hit[1], gpu
    session, signature = SESSIONS.get(job.sha256, lambda: _payload_bytes(job.payload), task_threads(), model=job.ref)
    return session, signature, "cpu"


def _cuda_session(job: ScoreJob, ort: Any, gpu: str) -> tuple[Any, Signature]:
    from .modelcheck import check_model_bytes
    from .runtime import signature_of

    data = _payload_bytes(job.payload)
    if hashlib.sha256(data).hexdigest() != job.sha256:
        raise InvalidModel(f"the broadcast bytes of model {job.ref!r} do not match their sha256 {job.sha256[:12]}…")
    check_model_bytes(data)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    device = int(gpu.partition(":")[2] or 0)
    session = ort.InferenceSession(data, options, providers=[("CUDAExecutionProvider", {"device_id": device}),
                                                             "CPUExecutionProvider"])
    return session, signature_of(session)


_GPU: dict[str, str | None] = {}


def _gpu_device() -> str | None:
    """This executor's CUDA device for torch ("cuda:N"), or None. Spark's GPU scheduling
    (spark.task.resource.gpu.amount) names the task's device addresses; without it, device 0.
    Without an NVIDIA driver (no /dev/nvidiactl) torch is not even imported."""
    if "cuda" not in _GPU:
        import sys

        present = None
        if "torch" in sys.modules or os.path.exists("/dev/nvidiactl"):
            try:
                import torch

                present = "cuda" if torch.cuda.is_available() else None
            except ImportError:
                present = None
        _GPU["cuda"] = present
    if _GPU["cuda"] is None:
        return None
    address = _task_gpu()
    return f"cuda:{address if address is not None else 0}"


def _task_gpu() -> str | None:
    """The first GPU address Spark's resource scheduling gave this task, if any."""
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        gpus = context.resources().get("gpu") if context is not None else None
    except Exception:  # noqa: BLE001 - no resources API, outside a task
        return None
    return gpus.addresses[0] if gpus is not None and gpus.addresses else None
