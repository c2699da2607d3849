"""SQL predict on embedded DuckDB against raw onnxruntime and the naive client loop.

1M rows x 64 float features, an MLP 64-256-256-10. Prints rows/s and ratios; writes
docs/bench/predict_duckdb.{md,json,png}. Rows: DBDL_BENCH_ROWS (default 1,000,000).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(__file__))
from common import best_of, features, mlp, report, rows_env  # noqa: E402

import dbdl  # noqa: E402
from dbdl_udf.runtime import make_session  # noqa: E402

WIDTH = 64
NAIVE_ROWS = 20_000


def main() -> None:
    import torch

    rows = rows_env(1_000_000)
    threads = os.cpu_count() or 1
    db = dbdl.connect("duckdb:///:memory:")
    model = mlp([WIDTH, 256, 256, 10])
    db.models.register("mlp", model, example=torch.randn(1, WIDTH))
    x = features(rows, WIDTH)
    db.backend.con.register("bench_x", pa.table({
        "id": np.arange(rows), "feats": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), WIDTH)}))
    db.sql(f"CREATE TABLE t AS SELECT id, CAST(feats AS FLOAT[{WIDTH}]) AS feats FROM bench_x")
    db.backend.con.unregister("bench_x")
    onnx_bytes = db.models.model_bytes("mlp")

    # The limit: onnxruntime alone on the same array, same threads, at its best batch size. The
    # machine's speed drifts, so the methods are timed in interleaved rounds and each keeps its best.
    session = make_session(onnx_bytes, threads=threads)
    name = session.get_inputs()[0].name
    def raw(batch: int):
        return lambda: [session.run(None, {name: x[i:i + batch]}) for i in range(0, rows, batch)]

    methods = {
        "raw onnxruntime, batch 2048": raw(2048),
        "raw onnxruntime, batch 16384": raw(16384),
        "raw onnxruntime, batch 131072": raw(131072),
        "SQL predict_array → table": lambda: db.sql(
            "CREATE OR REPLACE TEMP TABLE scores AS SELECT id, predict_array('mlp', feats) AS y FROM t"),
        "SQL predict_class → aggregate": lambda: db.sql("SELECT sum(predict_class('mlp', feats)) FROM t"),
    }
    best = {label: float("inf") for label in methods}
    for _ in range(3):
        for label, fn in methods.items():
            best[label] = min(best[label], best_of(fn, 1))
    raw_seconds = min(v for k, v in best.items() if k.startswith("raw"))
    results = [{"name": "raw onnxruntime (numpy in memory)", "rows_per_s": rows / raw_seconds}]
    results += [{"name": label, "rows_per_s": rows / seconds} for label, seconds in best.items()
                if not label.startswith("raw")]
    raw_best = results[0]["rows_per_s"]
    session = None  # its idle thread pool must not compete with what is measured next

    # what users write today: fetch rows to the client, call the model one row at a time
    single = make_session(onnx_bytes, threads=1)
    start = time.perf_counter()
    fetched = db.backend.con.execute(f"SELECT id, feats FROM t LIMIT {NAIVE_ROWS}").fetchall()
    out = [single.run(None, {name: np.asarray(f, dtype=np.float32)[None, :]})[0] for _, f in fetched]
    naive = len(out) / (time.perf_counter() - start)
    results.append({"name": "naive client loop (fetch, one row per call)", "rows_per_s": naive})

    sql_rate = results[1]["rows_per_s"]
    report("predict_duckdb", f"DuckDB SQL predict, {rows:,} rows × {WIDTH} features, MLP 64-256-256-10",
           results, reference="raw onnxruntime (numpy in memory)",
           note=f"onnxruntime threads: {threads}; naive loop timed on {NAIVE_ROWS:,} rows.")
    print(f"SQL predict ÷ raw onnxruntime: {sql_rate / raw_best:.3f} (target ≥ 0.9); "
          f"÷ naive loop: {sql_rate / naive:.1f}×")
    db.close()


if __name__ == "__main__":
    main()
