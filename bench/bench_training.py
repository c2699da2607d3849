"""Training input, epoch 1 (database → LMDB cache → PyTorch), CIFAR-shaped rows, batch 256.

The two measures of issue 14, for uint8 samples (what CIFAR's pixels are) and float32 samples:

* epoch 1 ÷ an in-memory TensorDataset through a DataLoader with the same number of workers
  (target ≥ 0.7), DuckDB and PostgreSQL;
* epoch 1 × one SELECT per row (target ≥ 20×), PostgreSQL: ``SELECT features, label FROM t WHERE
  row_id = %s`` on a table of one row per sample (bytea, primary key), the fastest per-row path.

Epoch 1 is a fresh ``db.training_set(...)`` (its own empty cache folder) in a fresh DataLoader, so
every block comes from the database and is written to LMDB on the way; the in-memory reference is
also a fresh DataLoader (its workers start inside the timing too). Forms: ``map`` —
``DataLoader(db.training_set(name), batch_size=256, num_workers=w)``; ``stream`` —
``DataLoader(db.training_set(name, shuffle=True, batch_size=256, prefetch=2), batch_size=None,
num_workers=w)``. Each measure and its reference run in turn, ``--rounds`` times; the best of
each is kept (the machine is shared). Writes docs/bench/training.{md,json,png}.

Usage: python bench/bench_training.py [--rows N] [--backends duckdb,postgres] [--dtypes uint8,float32]
[--workers 0,2] [--rounds 3]; rows also from $DBDL_BENCH_TRAINING_ROWS or $DBDL_BENCH_ROWS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import RESULTS, database_url, load_note, machine, save_figure  # noqa: E402

import dbdl  # noqa: E402

SHAPE = (3, 32, 32)
WIDTH = 3 * 32 * 32
BATCH = 256
CHUNK = 5_000
DEFAULT_ROWS = 30_000
TARGET_MEMORY = 0.7
TARGET_PER_ROW = 20.0
FORMS = ("map", "stream")


def chunks(rows: int, dtype: str):
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        rng = np.random.default_rng(start)
        x = (rng.integers(0, 256, (n, WIDTH), dtype=np.uint8) if dtype == "uint8"
             else rng.standard_normal((n, WIDTH), dtype=np.float32))
        yield start, x, rng.integers(0, 10, n)


def load_duckdb(db, rows: int, dtype: str, table: str) -> None:
    import pyarrow as pa

    element = "UTINYINT" if dtype == "uint8" else "FLOAT"
    con = db.backend.con
    con.execute(f"CREATE TABLE {table} (id BIGINT, x {element}[{WIDTH}], label BIGINT)")
    for start, x, y in chunks(rows, dtype):
        data = pa.table({"id": np.arange(start, start + len(y)),
                         "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), WIDTH), "label": y})
        con.register("chunk", data)
        con.execute(f"INSERT INTO {table} SELECT id, x::{element}[{WIDTH}], label FROM chunk")
        con.unregister("chunk")


def load_postgres(db, rows: int, dtype: str, table: str) -> None:
    """float32 rows as real[] (what users store); uint8 images as bytea (one byte a pixel)."""
    import pyarrow as pa

    from dbdl.backends.postgres.copy import binary_copy as _binary_copy

    column = "bytea" if dtype == "uint8" else "real[]"
    db.backend.execute(f"CREATE TABLE {table} (id bigint, x {column}, label bigint)")
    db.backend.execute(f"ALTER TABLE {table} ALTER COLUMN x SET STORAGE EXTERNAL")
    for start, x, y in chunks(rows, dtype):
        column = (pa.array([row.tobytes() for row in x], pa.binary()) if dtype == "uint8" else
                  pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), WIDTH))
        data = pa.table({"id": np.arange(start, start + len(y)), "x": column, "label": y})
        with db.backend.con.cursor().copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as sink:
            sink.write(_binary_copy(data))


def epoch_seconds(loader) -> tuple[float, int]:
    start = time.perf_counter()
    seen = 0
    for x, _ in loader:
        seen += len(x)
    return time.perf_counter() - start, seen


def per_row_seconds(url: str, table: str, ids: list[int], dtype: str) -> float:
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        start = time.perf_counter()
        for i in ids:
            f, label = con.execute(f"SELECT features, label FROM {table} WHERE row_id = %s", (i,)).fetchone()
            np.frombuffer(f, dtype=dtype).reshape(SHAPE)
        return time.perf_counter() - start


def run_backend(backend: str, rows: int, dtypes: list[str], workers_list: list[int], rounds: int,
                baseline_rows: int, memory: dict) -> dict:
    from torch.utils.data import DataLoader, TensorDataset

    folder = Path(tempfile.mkdtemp(prefix=f"dbdl-bench-{backend}-"))
    out: dict = {"export_s": {}, "block_rows": {}, "results": []}
    try:
        with database_url(backend, folder, "dbdl_bench_training", max_wal_size="8GB") as url:
            db = dbdl.connect(url)
            for dtype in dtypes:
                (load_duckdb if backend == "duckdb" else load_postgres)(db, rows, dtype, f"src_{dtype}")
                t0 = time.perf_counter()
                info = db.train_export(f"SELECT x, label FROM src_{dtype} ORDER BY id", f"cifar_{dtype}",
                                       shape=SHAPE, train_fraction=1.0, validation_fraction=0.0, progress=False)
                out["export_s"][dtype] = time.perf_counter() - t0
                out["block_rows"][dtype] = info.block_rows
                assert info.dtype == dtype, info.dtype
                if backend == "postgres":  # the per-row reference's table: one row per sample, as before format 2
                    db.backend.execute(f"CREATE TABLE rows_{dtype} (row_id bigint PRIMARY KEY, features bytea, "
                                       "label bigint)")
                    db.backend.execute(f"ALTER TABLE rows_{dtype} ALTER COLUMN features SET STORAGE EXTERNAL")
                    db.backend.execute(f"INSERT INTO rows_{dtype} SELECT row_id, features, label FROM "
                                       f"dbdl_data.ds_cifar_{dtype} ORDER BY row_id")
                    db.backend.execute(f"VACUUM ANALYZE rows_{dtype}")
                print(f"{backend}: {rows:,} {dtype} rows exported in {out['export_s'][dtype]:.1f} s "
                      f"(block_rows {info.block_rows})", flush=True)
            db.close()  # DataLoader workers open a DuckDB file read-only
            ids = np.random.default_rng(0).choice(rows, size=min(baseline_rows, rows), replace=False).tolist()
            best: dict = {}
            counter = [0]

            def note(key, seconds, n):
                best[key] = max(best.get(key, 0.0), n / seconds)

            def dbdl_epoch(dtype, form, w):
                counter[0] += 1
                cache = folder / f"cache-{counter[0]}"
                # DuckDB: this process and the DataLoader workers all open the file read-only
                options = {"read_only": True} if backend == "duckdb" else {}
                with dbdl.connect(url, migrate=False, **options) as reader_db:
                    if form == "map":
                        ds = reader_db.training_set(f"cifar_{dtype}", cache=cache)
                        loader = DataLoader(ds, batch_size=BATCH, num_workers=w)
                    else:
                        ds = reader_db.training_set(f"cifar_{dtype}", shuffle=True, batch_size=BATCH, prefetch=2,
                                                    cache=cache)
                        loader = DataLoader(ds, batch_size=None, num_workers=w)
                    seconds, n = epoch_seconds(loader)
                    assert n == rows, (n, rows)
                    del loader
                    ds.close()
                shutil.rmtree(cache, ignore_errors=True)
                return seconds, n

            for _ in range(rounds):
                for dtype in dtypes:
                    if backend == "postgres":
                        note(("per-row", dtype), per_row_seconds(url, f"rows_{dtype}", ids, dtype), len(ids))
                    for w in workers_list:
                        note(("memory", dtype, w), *epoch_seconds(DataLoader(
                            TensorDataset(*memory[dtype]), batch_size=BATCH, num_workers=w)))
                        for form in FORMS:
                            note((form, dtype, w), *dbdl_epoch(dtype, form, w))
                print(f"{backend}: round done — " + ", ".join(
                    f"{'/'.join(map(str, k))} {v:,.0f}/s" for k, v in best.items()), flush=True)
            for dtype in dtypes:
                for w in workers_list:
                    for form in FORMS:
                        rate = best[(form, dtype, w)]
                        row = {"dtype": dtype, "form": form, "workers": w, "epoch1_per_s": rate,
                               "memory_per_s": best[("memory", dtype, w)],
                               "vs_memory": rate / best[("memory", dtype, w)]}
                        if backend == "postgres":
                            row["per_row_per_s"] = best[("per-row", dtype)]
                            row["vs_per_row"] = rate / best[("per-row", dtype)]
                        out["results"].append(row)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def write(report: dict) -> None:
    rows = report["rows"]
    lines = [f"# Training input, epoch 1: {rows:,} CIFAR-shaped rows (3×32×32), batch {BATCH}", "",
             f"Machine: {machine()}; {report['load']} at the start. torch threads: {report['torch_threads']}. "
             "Epoch 1 = a fresh `db.training_set(...)` with an empty cache folder (every block read from the "
             "database and written to LMDB) in a fresh DataLoader; ÷ in-memory = divided by a fresh DataLoader "
             "over a TensorDataset of the same tensors with the same workers (target ≥ "
             f"{TARGET_MEMORY}); × per-row = times one `SELECT features, label … WHERE row_id = %s` per row on "
             f"PostgreSQL (a bytea table of one row per sample; target ≥ {TARGET_PER_ROW:g}×). Best of "
             f"{report['rounds']} interleaved rounds. map: `DataLoader(ds, batch_size=256)`; stream: "
             "`training_set(..., shuffle=True, batch_size=256, prefetch=2)`.", ""]
    for backend, data in report["backends"].items():
        exports = ", ".join(f"{d} {s:.1f} s (block_rows {data['block_rows'][d]})" for d, s in data["export_s"].items())
        lines += [f"## {backend}", "", f"train_export: {exports}.", ""]
        head = "| samples | form | workers | epoch 1 samples/s | in-memory samples/s | ÷ in-memory (≥ 0.7) |"
        rule = "| --- | --- | ---: | ---: | ---: | ---: |"
        if backend == "postgres":
            head += " one SELECT per row, samples/s | × per-row (≥ 20) |"
            rule += " ---: | ---: |"
        lines += [head, rule]
        for r in data["results"]:
            met = "" if r["vs_memory"] >= TARGET_MEMORY else " ✗"
            line = (f"| {r['dtype']} | {r['form']} | {r['workers']} | {r['epoch1_per_s']:,.0f} | "
                    f"{r['memory_per_s']:,.0f} | {r['vs_memory']:.2f}{met} |")
            if backend == "postgres":
                met = "" if r["vs_per_row"] >= TARGET_PER_ROW else " ✗"
                line += f" {r['per_row_per_s']:,.0f} | {r['vs_per_row']:.1f}{met} |"
            lines.append(line)
        lines.append("")
    lines.append("✗: below the target.")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "training.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "training.json").write_text(json.dumps(report, indent=2))
    plot(report)
    print("\n".join(lines))


def plot(report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(report["backends"])
    fig, axes = plt.subplots(1, len(backends), figsize=(6.5 * len(backends), 4.2), squeeze=False)
    for ax, backend in zip(axes[0], backends):
        res = report["backends"][backend]["results"]
        labels = [f"{r['dtype']}\n{r['form']} w={r['workers']}" for r in res]
        ax.bar(range(len(res)), [r["vs_memory"] for r in res], color="tab:blue")
        ax.axhline(TARGET_MEMORY, color="red", lw=1, ls="--", label=f"target {TARGET_MEMORY}")
        ax.set_xticks(range(len(res)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel("epoch 1 ÷ in-memory, same workers")
        ax.set_title(f"{backend}: {report['rows']:,} × 3×32×32")
        ax.legend(fontsize=7)
    save_figure(fig, RESULTS / "training.png")


def main(argv=None) -> None:
    import torch

    env_rows = os.environ.get("DBDL_BENCH_TRAINING_ROWS") or os.environ.get("DBDL_BENCH_ROWS")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=int(env_rows or DEFAULT_ROWS))
    parser.add_argument("--baseline-rows", type=int, default=2000)
    parser.add_argument("--backends", default="duckdb,postgres")
    parser.add_argument("--dtypes", default="uint8,float32")
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    dtypes = args.dtypes.split(",")
    memory = {}
    for dtype in dtypes:
        x = torch.empty((args.rows, *SHAPE), dtype=getattr(torch, dtype))
        y = torch.empty(args.rows, dtype=torch.int64)
        for start, xs, ys in chunks(args.rows, dtype):
            x[start:start + len(ys)] = torch.from_numpy(xs.reshape(-1, *SHAPE))
            y[start:start + len(ys)] = torch.from_numpy(ys)
        memory[dtype] = (x, y)
    report = {"rows": args.rows, "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
              "load": load_note(), "backends": {}}
    for backend in args.backends.split(","):
        report["backends"][backend] = run_backend(backend, args.rows, dtypes, [int(w) for w in args.workers.split(",")],
                                                  args.rounds, args.baseline_rows, memory)
    write(report)


if __name__ == "__main__":
    main(sys.argv[1:])
