"""DL-centric execution on Spark: the source's partitions are scored where they are.

The DL strategy hands a backend ``score``, a driver-side closure over an onnxruntime session (or a
torch module) and the connection: neither travels to an executor. It also carries its recipe
(``score.recipe``, set by ``dbdl.strategies.dl.scorer``: the pinned model, the kind, the feeding
options, a hybrid plan's sub-model bytes), and from that the driver builds a ``ScoreJob``
(``dbdl_udf/sparkdl.py``) — the version's ONNX bytes as a broadcast (the one the UDF path uses, per
connection and content hash), and its stored torch program as another where torch may run. Then::

    spark.sql(source).mapInArrow(score_partition(job), keys + dbdl_prediction).persist(); .count()

Each task streams its partition's Arrow record batches (``batch_rows`` rows each, Spark's
``spark.sql.execution.arrow.maxRecordsPerBatch`` for the job) through the runtime in its executor's
Python worker; the one job (``count``) materializes the result in the executors' block managers
(memory, spilling to disk), the cached DataFrame is named as the temporary view ``table``, and the
join back into the statement reads the stored predictions: it never scores again. Dropping the view
uncaches it. No row of the source reaches the driver. See docs/spark.md, "DL-centric on Spark".

``spark.dbdl.dl.runtime`` (a Spark setting of the session: ``auto``, ``torch``, ``onnxruntime``)
says where torch may run; with ``auto`` the torch program is shipped only where executors can
have a GPU (Spark's GPU resources are configured, or local mode on a machine with one).
"""

from __future__ import annotations

import functools
import os
import weakref
from typing import Any

from ...errors import ConfigurationError, StrategyUnavailable

RUNTIME_CONF = "spark.dbdl.dl.runtime"
_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"
#: kind -> the Spark SQL type of dbdl_prediction
SPARK_TYPES = {"scalar": "float", "array": "array<float>", "class": "bigint", "text": "string"}

#: backend -> what its last DL-centric job reported (DLRun): tests and tools read it
_RUNS: weakref.WeakKeyDictionary[Any, DLRun] = weakref.WeakKeyDictionary()


class DLRun:
    """What one score_into_temp_view did: the view, the physical plan that scored it, the scored
    DataFrame (``frame``: cached until the view is dropped) and the executors' report (``stats``:
    rows, scored, batches, partitions, worker pids, rows per runtime). ``stats`` reads the job's
    accumulator, so it would also count any later rescoring."""

    def __init__(self, table: str, plan: str, accumulator: Any, frame: Any) -> None:
        self.table, self.plan, self._accumulator, self.frame = table, plan, accumulator, frame

    @property
    def stats(self) -> dict:
        return dict(self._accumulator.value)


def last_run(backend: Any) -> DLRun | None:
    return _RUNS.get(backend)


def score_into_temp_view(backend: Any, source_sql: str, score: Any, kind: str, table: str, *,
                         signature: Any = None, keyed: bool = False, batch_rows: int = 65536) -> None:
    """Backend.score_into_temp_table on Spark (see its contract in backends/base.py)."""
    from dbdl_udf.sparkdl import RunStats, ScoreJob, empty_stats, score_partition
    from pyspark import StorageLevel
    from pyspark.sql.types import StructField, StructType, _parse_datatype_string

    recipe = getattr(score, "recipe", None)
    if recipe is None:
        raise StrategyUnavailable("DL-centric execution on Spark scores on the executors and needs the scorer's recipe "
                                  "(dbdl.strategies.dl.scorer); this scorer has none — use strategy='udf'")
    model, scorer_kind = recipe["model"], recipe["kind"]
    signature = signature or model.signature
    runtime = _runtime(backend)
    with backend._lock:
        payload = _payload(backend, model.sha256, recipe.get("model_bytes"))
        torch_payload = None
        if recipe.get("model_bytes") is None and runtime != "onnxruntime" and (runtime == "torch" or _gpus_possible(backend)):
            torch_payload = _torch_payload(backend, model)
    frame = backend._sql(source_sql)
    fields = list(frame.schema.fields)
    keys = fields[:1] if keyed else fields
    out_schema = StructType([StructField(f.name, f.dataType, True) for f in keys]
                            + [StructField("dbdl_prediction", _parse_datatype_string(SPARK_TYPES[kind]), True)])
    accumulator = backend.spark.sparkContext.accumulator(empty_stats(), RunStats())
    job = ScoreJob(kind=scorer_kind, table_kind=kind, sha256=model.sha256, payload=payload,
                   output=model.output_index, ref=model.ref, output_name=model.output_spec.name,
                   signature=signature.to_json(), options=dict(recipe.get("options") or {}), keyed=keyed,
                   torch_payload=torch_payload, runtime=runtime, stats=accumulator)
    scored = frame.mapInArrow(functools.partial(score_partition, job), out_schema)
    plan = _plan(scored)
    conf = backend.spark.conf
    before = conf.get(_BATCH_CONF, None)
    try:
        conf.set(_BATCH_CONF, str(int(batch_rows)))
        # the one scoring job: the predictions stay in the executors' block managers (memory, spilling
        # to disk), where every later read of the view — the statement's join — finds them
        scored.persist(StorageLevel.MEMORY_AND_DISK)
        scored.count()
    except Exception as exc:
        scored.unpersist()
        raise backend._translate(exc, [model]) from exc
    finally:
        if before is None:
            conf.unset(_BATCH_CONF)
        else:
            conf.set(_BATCH_CONF, before)
    # dropping the view (drop_temp_table, after the statement) uncaches it: the blocks go with it
    scored.createOrReplaceTempView(table)
    _RUNS[backend] = DLRun(table, plan, accumulator, scored)


def cached_temp_view(backend: Any, table: str, select_sql: str) -> None:
    """``table`` as a temporary view of ``select_sql``'s rows, materialized once in the executors'
    block managers (SparkBackend.create_temp_table_as)."""
    from pyspark import StorageLevel

    frame = backend._sql(select_sql)
    frame.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        frame.count()
    except Exception as exc:  # the query's own error (a length check's raise_error)
        frame.unpersist()
        raise backend._translate(exc) from exc
    frame.createOrReplaceTempView(table)


def _runtime(backend: Any) -> str:
    from dbdl_udf.sparkdl import RUNTIMES

    value = (backend.spark.conf.get(RUNTIME_CONF, None) or os.environ.get("DBDL_SPARK_DL_RUNTIME") or "auto").lower()
    if value not in RUNTIMES:
        raise ConfigurationError(f"{RUNTIME_CONF}={value!r} is not one of {', '.join(RUNTIMES)}; set it with "
                                 f"spark.conf.set({RUNTIME_CONF!r}, 'auto') or the URL's conf.{RUNTIME_CONF}=auto")
    return value


def _payload(backend: Any, sha256: str, model_bytes: Any) -> Any:
    """The broadcast of a version's ONNX bytes (the UDF path's, per connection and hash), or of a
    hybrid plan's sub-model bytes (``model_bytes``: a callable returning them)."""
    if model_bytes is None:
        return backend._broadcast(sha256)
    payload = backend._broadcasts.get(sha256)
    if payload is None:
        data = model_bytes() if callable(model_bytes) else model_bytes
        payload = backend._broadcasts[sha256] = backend.spark.sparkContext.broadcast(bytes(data))
    return payload


def _torch_payload(backend: Any, model: Any) -> Any:
    """The broadcast of the version's stored torch program, or None (not registered from torch, or
    this role may not read it: onnxruntime scores)."""
    key = f"torch:{model.sha256}"
    if key in backend._broadcasts:
        return backend._broadcasts[key]
    program = backend.torch_program(model.name, model.version)
    if program is None:
        return None
    payload = backend._broadcasts[key] = backend.spark.sparkContext.broadcast(bytes(program))
    return payload


def _gpus_possible(backend: Any) -> bool:
    """Whether an executor may have a GPU: Spark's GPU resources are configured, or (local mode)
    this machine has a CUDA device."""
    conf = backend.spark.sparkContext.getConf()
    for key in ("spark.executor.resource.gpu.amount", "spark.task.resource.gpu.amount"):
        try:
            if float(conf.get(key, "0") or 0) > 0:
                return True
        except ValueError:
            return True
    if backend.spark.sparkContext.master.startswith("local"):
        return _local_gpu()
    return False


@functools.lru_cache(maxsize=1)
def _local_gpu() -> bool:
    import sys

    if "torch" not in sys.modules and not os.path.exists("/dev/nvidiactl"):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _plan(frame: Any) -> str:
    try:
        return frame._jdf.queryExecution().executedPlan().toString()
    except Exception:  # noqa: BLE001 - an internal API
        return ""
