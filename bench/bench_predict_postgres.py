"""SQL predict inside PostgreSQL (PL/Python) against raw onnxruntime and the naive client pipeline.

1M rows x 64 float features (DBDL_BENCH_ROWS), an MLP 64-256-256-10, everything on one core
(no parallel workers; onnxruntime with one thread). Starts a throwaway PostgreSQL server (as in
the tests) unless DBDL_BENCH_PG_URL names one. Writes docs/bench/predict_postgres.{md,json,png}.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import best_of, database_url, features, mlp, report, rows_env  # noqa: E402

import dbdl  # noqa: E402
from dbdl_udf.runtime import make_session  # noqa: E402

WIDTH = 64
ROW_AT_A_TIME_ROWS = 20_000
NAIVE_ROWS = 50_000


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    import psycopg
    import torch

    rows = rows_env(1_000_000)
    with database_url("postgres", Path("."), "dbdl_bench") as url:
        db = dbdl.connect(url)
        model = mlp([WIDTH, 256, 256, 10])
        db.models.register("mlp", model, example=torch.randn(1, WIDTH))
        x = features(rows, WIDTH)
        print(f"loading {rows:,} rows …", flush=True)
        db.create_table("t", {"id": np.arange(rows), "feats": x}, replace=True)
        db.create_table("tb", {"id": np.arange(rows), "feats": [r.tobytes() for r in x.astype("<f4")]}, replace=True)
        db.sql("VACUUM ANALYZE t")
        db.sql("VACUUM ANALYZE tb")
        db.sql("SET max_parallel_workers_per_gather = 0")  # one core, like the reference
        results = []

        session = make_session(db.models.model_bytes("mlp"), threads=1)
        name = session.get_inputs()[0].name
        raw = max(rows / best_of(lambda: [session.run(None, {name: x[i:i + b]}) for i in range(0, rows, b)], 2)
                  for b in (1024, 2048, 8192))
        results.append({"name": "raw onnxruntime, 1 thread (numpy in memory)", "rows_per_s": raw})

        def into(kind: str, table: str) -> float:
            db.sql("DROP TABLE IF EXISTS scores")
            return rows / timed(lambda: db.sql(f"CALL dbdl.predict_into('mlp', 'SELECT id, feats FROM {table}', 'scores', "
                                               f"'{kind}')"))

        results.append({"name": "CALL predict_into, class, bytea features", "rows_per_s": into("class", "tb")})
        results.append({"name": "CALL predict_into, class, real[] features", "rows_per_s": into("class", "t")})
        results.append({"name": "CALL predict_into, array, bytea features", "rows_per_s": into("array", "tb")})
        results.append({"name": "CALL predict_into, array, real[] features", "rows_per_s": into("array", "t")})

        results += row_at_a_time(db, session, x)
        seconds = timed(lambda: db.sql("CREATE TABLE dl_scores AS SELECT id, predict_class('mlp', feats) AS c FROM t",
                                       strategy="dl"))
        results.append({"name": "db.sql DL-centric (binary COPY out and back) → table", "rows_per_s": rows / seconds})

        # what users write today: fetch with psycopg, score with torch, insert the results back
        def naive() -> None:
            with psycopg.connect(url, autocommit=True) as con:
                con.execute("DROP TABLE IF EXISTS naive_scores")
                con.execute("CREATE TABLE naive_scores (id bigint, prediction real[])")
                cur = con.cursor()
                cur.execute("SELECT id, feats FROM t WHERE id < %s", (NAIVE_ROWS,))
                with torch.no_grad():
                    while batch := cur.fetchmany(5000):
                        ids = [r[0] for r in batch]
                        out = model(torch.tensor([r[1] for r in batch], dtype=torch.float32)).numpy()
                        con.cursor().executemany("INSERT INTO naive_scores VALUES (%s, %s)",
                                                 list(zip(ids, out.tolist())))
        results.append({"name": "naive pipeline: psycopg fetch → torch → INSERT", "rows_per_s": NAIVE_ROWS / timed(naive)})
        db.close()

    by_name = {r["name"]: r["rows_per_s"] for r in results}
    best_into = max(v for k, v in by_name.items() if k.startswith("CALL predict_into, array"))
    naive_rate = by_name["naive pipeline: psycopg fetch → torch → INSERT"]
    report("predict_postgres", f"PostgreSQL in-database predict, {rows:,} rows × {WIDTH} features, MLP 64-256-256-10",
           results, reference="raw onnxruntime, 1 thread (numpy in memory)",
           note=f"One core: no parallel workers, onnxruntime with 1 thread. Row-at-a-time timed on "
                f"{ROW_AT_A_TIME_ROWS:,} rows, the naive pipeline on {NAIVE_ROWS:,}.")
    print(f"batched in-server (class, bytea) ÷ raw onnxruntime: {by_name['CALL predict_into, class, bytea features'] / raw:.3f} "
          f"(target ≥ 0.6); predict_into (array) into a table ÷ naive pipeline: {best_into / naive_rate:.1f}× (target ≥ 20)")


def row_at_a_time(db, session, x: np.ndarray, rounds: int = 3) -> list[dict]:
    """Row-at-a-time SELECT predict_class / predict_array (one PL/Python call per row) over the first
    ROW_AT_A_TIME_ROWS rows, interleaved in the same run with raw onnxruntime on the same rows
    (batched, 1 thread: the reference) and with one session.run per row (the floor of any
    one-call-per-row path); each row carries its ratio to that interleaved reference."""
    from common import interleaved

    n = min(ROW_AT_A_TIME_ROWS, len(x))
    rows, name = x[:n], session.get_inputs()[0].name

    def sql(text: str):  # the PL/Python functions, whatever the planner would pick
        return lambda: db.sql(text.format(n=n), strategy="udf").fetchall()

    methods = {
        "raw": lambda: [session.run(None, {name: rows[i:i + 2048]}) for i in range(0, n, 2048)],
        "raw onnxruntime, one session.run per row (1 thread)": lambda: [session.run(None, {name: rows[i:i + 1]})
                                                                        for i in range(n)],
        "row-at-a-time SELECT predict_class(...)": sql("SELECT sum(predict_class('mlp', feats)) FROM t WHERE id < {n}"),
        "row-at-a-time SELECT predict_class(...), bytea features":
            sql("SELECT sum(predict_class('mlp', feats)) FROM tb WHERE id < {n}"),
        "row-at-a-time SELECT predict_array(...)":
            sql("SELECT sum(cardinality(predict_array('mlp', feats))) FROM t WHERE id < {n}"),
    }
    best = interleaved(methods, rounds)
    out = []
    for label, seconds in best.items():
        if label != "raw":
            out.append({"name": label, "rows_per_s": n / seconds, "vs_raw_same_run": best["raw"] / seconds,
                        "us_per_row": seconds / n * 1e6})
            print(f"{label}: {seconds / n * 1e6:.2f} µs/row, ÷ raw onnxruntime in the same run "
                  f"{best['raw'] / seconds:.3f} (target ≥ 0.15 for predict_class)")
    return out


if __name__ == "__main__":
    main()
