"""SQL predict on embedded DuckDB against raw onnxruntime and the naive client loop (issue 14).

500,000 rows x 64 float features (a FLOAT[64] column), an MLP 64-256-256-10. The limit is raw
onnxruntime on the same numpy array with the same threads, at its best batch size and in its best
arrangement of those threads: one session with ``intra_op_num_threads = cores``, or one single-thread
session per core, each run from its own Python thread on its half of the rows (what DuckDB does
with a UDF: one chunk of 2,048 rows per DuckDB thread, one onnxruntime thread each). Every method
runs once per round, rounds interleaved, and keeps its best time. Prints each ratio with its
target (≥ 0.9); writes docs/bench/predict_duckdb.{md,json,png}.

DBDL_BENCH_ROWS overrides the row count, DBDL_BENCH_ROUNDS the number of rounds (default 5).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(__file__))
from common import features, interleaved, load_note, mlp, report, rows_env, split_over_sessions  # noqa: E402

import dbdl  # noqa: E402
from dbdl_udf.runtime import make_session  # noqa: E402

WIDTH = 64
NAIVE_ROWS = 20_000
TARGET = 0.9
RAW = "raw onnxruntime (numpy in memory, best)"
SQL = {
    "SQL predict_array → table":
        "CREATE OR REPLACE TEMP TABLE scores AS SELECT id, predict_array('mlp', feats) AS y FROM t",
    "SQL predict_class → aggregate": "SELECT sum(predict_class('mlp', feats)) FROM t",
}


def main() -> None:
    import torch

    rows = rows_env(500_000)
    rounds = int(os.environ.get("DBDL_BENCH_ROUNDS", "5"))
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
    duckdb_threads = db.sql("SELECT current_setting('threads')").fetchall()[0][0]

    # The limit: onnxruntime alone on the same array with the same threads (see the docstring).
    pooled = make_session(onnx_bytes, threads=threads)
    singles = [make_session(onnx_bytes, threads=1) for _ in range(threads)]
    name = pooled.get_inputs()[0].name

    def one_session(batch: int):
        return lambda: [pooled.run(None, {name: x[i:i + batch]}) for i in range(0, rows, batch)]

    def session_per_core(batch: int):
        return split_over_sessions(singles, name, x, batch)

    raw = {f"raw, one session of {threads} threads, batch {b:,}": one_session(b) for b in (2048, 16384, 131072)}
    raw.update({f"raw, {threads} single-thread sessions, batch {b:,}": session_per_core(b) for b in (2048, 16384)})
    for label, query in SQL.items():
        db.sql(query)  # the UDF registered and its session built before anything is timed
    methods = {**raw, **{label: (lambda q=query: db.sql(q)) for label, query in SQL.items()}}
    best = interleaved(methods, rounds)
    raw_seconds = min(best[k] for k in raw)
    pooled_seconds = min(v for k, v in best.items() if k.startswith("raw, one session"))
    results = [{"name": RAW, "rows_per_s": rows / raw_seconds}]
    results += [{"name": label, "rows_per_s": rows / best[label]} for label in raw]
    results += [{"name": label, "rows_per_s": rows / best[label]} for label in SQL]
    pooled = singles = None  # their idle thread pools must not compete with what is measured next

    # what users write today: fetch rows to the client, call the model one row at a time
    single = make_session(onnx_bytes, threads=1)
    start = time.perf_counter()
    fetched = db.backend.con.execute(f"SELECT id, feats FROM t LIMIT {NAIVE_ROWS}").fetchall()
    out = [single.run(None, {name: np.asarray(f, dtype=np.float32)[None, :]})[0] for _, f in fetched]
    naive = len(out) / (time.perf_counter() - start)
    results.append({"name": "naive client loop (fetch, one row per call)", "rows_per_s": naive})

    report("predict_duckdb", f"DuckDB SQL predict, {rows:,} rows × {WIDTH} features, MLP 64-256-256-10",
           results, reference=RAW,
           note=f"{threads} cores; DuckDB threads: {duckdb_threads}, onnxruntime threads per UDF call: "
                f"{db.backend.udf_threads}; best of {rounds} interleaved rounds; naive loop timed on "
                f"{NAIVE_ROWS:,} rows; {load_note()}.")
    for label in SQL:
        print(f"{label} ÷ best raw onnxruntime: {raw_seconds / best[label]:.3f} (target ≥ {TARGET}); "
              f"÷ one {threads}-thread session at its best batch: {pooled_seconds / best[label]:.3f}")
    print(f"SQL predict_array ÷ naive loop: {rows / best['SQL predict_array → table'] / naive:.1f}×")
    db.close()


if __name__ == "__main__":
    main()
