"""Training input: samples/s from a dataset table into PyTorch, on DuckDB and PostgreSQL.

200k rows x 3x32x32 float32 (CIFAR-10's shape, synthetic; --rows to change), batch 256:

* in-memory TensorDataset through a DataLoader with the same workers (the limit);
* one SELECT per row (what a transfer tool without range reads does; timed on --baseline-rows);
* dbdl map-style (``DataLoader(db.training_set(...), batch_size=256)``, default 12 MiB blocks) and
  the shuffled stream (``shuffle=True``) without and with a read-ahead thread, each with 0/1/2/4
  workers, epoch 1 (from the database, filling the LMDB cache) and epoch 2 (from LMDB).

Writes docs/bench/training.{md,json,png}. Usage: python bench/bench_training.py [--rows N]
[--backends duckdb,postgres].
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import RESULTS, database_url, machine  # noqa: E402

import dbdl  # noqa: E402

SHAPE = (3, 32, 32)
WIDTH = 3 * 32 * 32
BATCH = 256
CHUNK = 10_000


def chunks(rows: int):
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        rng = np.random.default_rng(start)
        yield start, rng.standard_normal((n, WIDTH), dtype=np.float32), rng.integers(0, 10, n)


def load_duckdb(db, rows: int) -> None:
    import pyarrow as pa

    con = db.backend.con
    con.execute(f"CREATE TABLE src (id BIGINT, x FLOAT[{WIDTH}], label BIGINT)")
    for start, x, y in chunks(rows):
        data = pa.table({"id": np.arange(start, start + len(y)),
                         "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), WIDTH), "label": y})
        con.register("chunk", data)
        con.execute(f"INSERT INTO src SELECT id, x::FLOAT[{WIDTH}], label FROM chunk")
        con.unregister("chunk")


def load_postgres(db, rows: int) -> None:
    import pyarrow as pa

    from dbdl.backends.postgres.copy import binary_copy as _binary_copy

    db.backend.execute("CREATE TABLE src (id bigint, x real[], label bigint)")
    db.backend.execute("ALTER TABLE src ALTER COLUMN x SET STORAGE EXTERNAL")
    for start, x, y in chunks(rows):
        data = pa.table({"id": np.arange(start, start + len(y)),
                         "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), WIDTH), "label": y})
        with db.backend.con.cursor().copy("COPY src FROM STDIN (FORMAT BINARY)") as sink:
            sink.write(_binary_copy(data))


def epoch_rate(loader, limit_rows: int | None = None) -> float:
    start = time.perf_counter()
    seen = 0
    for x, _ in loader:
        seen += len(x)
        if limit_rows and seen >= limit_rows:
            break
    return seen / (time.perf_counter() - start)


def per_row_rate(url: str, backend: str, table: str, rows: int, sample: int) -> float:
    ids = np.random.default_rng(0).choice(rows, size=min(sample, rows), replace=False).tolist()
    if backend == "duckdb":
        import duckdb

        from dbdl.backends.duckdb import path_from_url as _path_from_url

        con = duckdb.connect(_path_from_url(url), read_only=True)
        start = time.perf_counter()
        for i in ids:
            f, label = con.execute(f"SELECT features, label FROM {table} WHERE row_id = ?", [i]).fetchone()
            np.asarray(f, dtype=np.float32).reshape(SHAPE)
        rate = len(ids) / (time.perf_counter() - start)
        con.close()
        return rate
    import psycopg

    con = psycopg.connect(url, autocommit=True)
    start = time.perf_counter()
    for i in ids:
        f, label = con.execute(f"SELECT features, label FROM {table} WHERE row_id = %s", (i,)).fetchone()
        np.frombuffer(f, dtype="<f4").reshape(SHAPE)
    rate = len(ids) / (time.perf_counter() - start)
    con.close()
    return rate


def run_backend(backend: str, rows: int, baseline_rows: int, workers_list: list[int], memory_x, memory_y) -> dict:
    from torch.utils.data import DataLoader, TensorDataset

    folder = Path(tempfile.mkdtemp(prefix=f"dbdl-bench-{backend}-"))
    results: list[dict] = []
    try:
        with database_url(backend, folder, "dbdl_bench_training", max_wal_size="8GB") as url:
            db = dbdl.connect(url)
            t0 = time.perf_counter()
            (load_duckdb if backend == "duckdb" else load_postgres)(db, rows)
            load_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            info = db.train_export("SELECT x, label FROM src ORDER BY id", "cifar", shape=SHAPE,
                                   train_fraction=1.0, validation_fraction=0.0, progress=False)
            export_s = time.perf_counter() - t0
            print(f"{backend}: loaded {rows:,} rows in {load_s:.1f}s, train_export in {export_s:.1f}s", flush=True)
            sets = {}
            for w in workers_list:
                for form in ("map", "stream", "stream+prefetch"):
                    cache = folder / f"cache-{form}-{w}"
                    if form == "map":
                        ds = db.training_set("cifar", cache=cache)
                    else:
                        ds = db.training_set("cifar", shuffle=True, batch_size=BATCH, cache=cache,
                                             prefetch=2 if form.endswith("prefetch") else 0)
                    sets[(form, w)] = ds
            if backend == "duckdb":
                db.close()  # DataLoader workers open the file read-only
            baseline = per_row_rate(url, backend, info.table, rows, baseline_rows)
            results.append({"name": "one SELECT per row", "rows_per_s": baseline})
            memory = TensorDataset(memory_x, memory_y)
            for w in workers_list:
                # the limit at each worker count: the same tensors already in this process's memory
                # (workers kept between epochs; the second, warm epoch is the one counted)
                loader = DataLoader(memory, batch_size=BATCH, num_workers=w, persistent_workers=w > 0)
                rate = max(epoch_rate(loader) for _ in range(2))
                results.append({"name": f"in-memory TensorDataset, {w} workers", "rows_per_s": rate,
                                "form": "memory", "workers": w})
                del loader
            print(f"{backend}: per-row {baseline:,.0f}/s, in-memory "
                  + ", ".join(f"{r['rows_per_s']:,.0f}/s" for r in results if r.get("form") == "memory"), flush=True)
            for (form, w), ds in sets.items():
                loader = None
                for epoch in (1, 2):
                    if form == "map":
                        # one DataLoader for both epochs, its workers kept (what training loops do)
                        if loader is None:
                            loader = DataLoader(ds, batch_size=BATCH, num_workers=w, persistent_workers=w > 0)
                    else:
                        # an IterableDataset's epoch reaches its workers only through a new DataLoader
                        ds.set_epoch(epoch)
                        loader = DataLoader(ds, batch_size=None, num_workers=w)
                    if epoch == 2 and w == 0:  # nothing of epoch 1 left in this process's memory
                        ds.close()
                        ds = pickle.loads(pickle.dumps(ds))
                        loader = DataLoader(ds, batch_size=BATCH if form == "map" else None)
                    rate = epoch_rate(loader)
                    results.append({"name": f"dbdl {form}, {w} workers, epoch {epoch}", "rows_per_s": rate,
                                    "form": form, "workers": w, "epoch": epoch})
                    print(f"{backend}: {form:16s} workers={w} epoch {epoch}: {rate:,.0f}/s", flush=True)
                del loader
                ds.close()
            if backend != "duckdb":
                db.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"rows": rows, "export_s": export_s, "load_s": load_s, "results": results}


def write(report: dict) -> None:
    lines = [f"# Training input: samples/s into PyTorch ({report['rows']:,} rows × 3×32×32 float32, batch {BATCH})",
             "", f"Machine: {machine()}. torch threads: {report['torch_threads']}. Each dbdl row is divided by the "
             "in-memory TensorDataset with the same number of DataLoader workers (the limit of that "
             "configuration) and by one SELECT per row.", ""]
    for backend, data in report["backends"].items():
        res = data["results"]
        memory = {r["workers"]: r["rows_per_s"] for r in res if r.get("form") == "memory"}
        baseline = next(r for r in res if r["name"] == "one SELECT per row")["rows_per_s"]
        lines += [f"## {backend}", "", f"train_export of {data['rows']:,} rows: {data['export_s']:.1f} s.", "",
                  "| method | samples/s | ÷ in-memory (same workers) | ÷ in-memory, 0 workers | × per-row SELECT |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for r in res:
            same = memory.get(r.get("workers", 0), memory[0])
            lines.append(f"| {r['name']} | {r['rows_per_s']:,.0f} | {r['rows_per_s'] / same:.2f} | "
                         f"{r['rows_per_s'] / memory[0]:.2f} | {r['rows_per_s'] / baseline:.1f} |")
        lines.append("")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "training.md").write_text("\n".join(lines))
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
        baseline = next(r for r in res if r["name"] == "one SELECT per row")["rows_per_s"]
        workers = sorted({r["workers"] for r in res if "workers" in r})
        memory = [next(r["rows_per_s"] for r in res if r.get("form") == "memory" and r["workers"] == w)
                  for w in workers]
        for form, marker in (("map", "o"), ("stream", "s"), ("stream+prefetch", "^")):
            for epoch, style in ((1, "-"), (2, "--")):
                ys = [next(r["rows_per_s"] for r in res if r.get("form") == form and r.get("workers") == w
                           and r.get("epoch") == epoch) for w in workers]
                ax.plot(workers, ys, style, marker=marker, label=f"{form}, epoch {epoch}")
        ax.plot(workers, memory, color="black", lw=1.5, label="in-memory TensorDataset")
        ax.plot(workers, [0.5 * m for m in memory], color="grey", lw=0.8, ls=":", label="0.5 × in-memory")
        ax.axhline(baseline, color="red", lw=1, label="one SELECT per row")
        ax.set_yscale("log")
        ax.set_xticks(workers)
        ax.set_xlabel("DataLoader workers")
        ax.set_ylabel("samples/s (log)")
        ax.set_title(f"{backend}: {report['rows']:,} × 3×32×32 float32")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "training.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=int(os.environ.get("DBDL_BENCH_TRAINING_ROWS", 200_000)))
    parser.add_argument("--baseline-rows", type=int, default=2000)
    parser.add_argument("--backends", default="duckdb,postgres")
    parser.add_argument("--workers", default="0,1,2,4")
    args = parser.parse_args(argv)
    memory_x = torch.empty((args.rows, *SHAPE), dtype=torch.float32)
    memory_y = torch.empty(args.rows, dtype=torch.int64)
    for start, x, y in chunks(args.rows):
        memory_x[start:start + len(y)] = torch.from_numpy(x.reshape(-1, *SHAPE))
        memory_y[start:start + len(y)] = torch.from_numpy(y)
    report = {"rows": args.rows, "torch_threads": torch.get_num_threads(), "backends": {}}
    for backend in args.backends.split(","):
        report["backends"][backend] = run_backend(backend, args.rows, args.baseline_rows,
                                                  [int(w) for w in args.workers.split(",")], memory_x, memory_y)
    write(report)


if __name__ == "__main__":
    main(sys.argv[1:] if __name__ == "__main__" and sys.argv[0].endswith("bench_training.py") else [])
