"""The result cache: re-running predict over rows of which 90% were scored before, against the
same query without the cache, on DuckDB and PostgreSQL.

Per backend and model: ``CREATE TABLE … AS SELECT id, predict_array(m, feats) FROM t`` over
DBDL_BENCH_ROWS rows (default 1,000,000) × 64 features, planner's choice of strategy, timed
  - without the cache (the reference),
  - with the cache empty (every row a miss: what the cache costs),
  - with 90% of the rows scored before (the first 90% of ids, filled by an untimed run),
  - with every row scored before.
Two models: an MLP 64-2048-2048-2048-10 (~17 MFLOP per row, ~50 µs on these two cores: the kind
of model a cache is for) and the MLP 64-256-256-10 of the predict benchmarks (~0.2 MFLOP per row,
~1 µs: cheaper to recompute than to look up). Writes docs/bench/cache.{md,json,png}. DBDL_BENCH_BACKENDS=duckdb,postgres picks.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import RESULTS, database_url, features, machine, mlp, rows_env  # noqa: E402

import dbdl  # noqa: E402

WIDTH = 64
MODELS = {"MLP 64-2048-2048-2048-10": [WIDTH, 2048, 2048, 2048, 10], "MLP 64-256-256-10": [WIDTH, 256, 256, 10]}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_backend(backend: str, rows: int, folder: Path) -> list[dict]:
    import torch

    out = []
    with database_url(backend, folder, "dbdl_bench_cache") as url:
        db = dbdl.connect(url)
        print(f"[{backend}] loading {rows:,} rows …", flush=True)
        db.create_table("t", {"id": np.arange(rows), "feats": features(rows, WIDTH)}, replace=True)
        if backend == "postgres":
            db.sql("VACUUM ANALYZE t")
        seen = int(rows * 0.9)
        for label, sizes in MODELS.items():
            name = "heavy" if sizes[1] > 256 else "light"
            db.models.register(name, mlp(sizes), example=torch.randn(1, WIDTH))

            def score(where: str = "") -> float:
                db.sql("DROP TABLE IF EXISTS scores")
                return timed(lambda: db.sql(f"CREATE TABLE scores AS SELECT id, predict_array('{name}', feats) AS p "
                                            f"FROM t {where}"))

            plain = score()
            reference = db.sql("SELECT id, p FROM scores ORDER BY id").arrow()
            db.models.set_options(name, cache=True, cache_max_bytes=4 << 30)
            cold = score()
            same = db.sql("SELECT id, p FROM scores ORDER BY id").arrow().equals(reference)
            db.models.clear_cache(name)
            score(f"WHERE id < {seen}")  # 90% of the rows scored before
            warm90 = score()
            same &= db.sql("SELECT id, p FROM scores ORDER BY id").arrow().equals(reference)
            warm100 = score()
            (stats,) = db.models.cache_stats(name)
            plan = db.explain(f"SELECT predict_array('{name}', feats) FROM t")[0]
            db.models.set_options(name, cache=False)
            for case, seconds in (("no cache", plain), ("cache, 0% hits", cold), ("cache, 90% hits", warm90),
                                  ("cache, 100% hits", warm100)):
                out.append({"backend": backend, "model": label, "case": case, "seconds": seconds,
                            "rows_per_s": rows / seconds, "ratio": seconds / plain})
            print(f"[{backend}] {label}: no cache {plain:.2f}s, 0% hits {cold / plain:.3f}×, 90% hits "
                  f"{warm90 / plain:.3f}×, 100% hits {warm100 / plain:.3f}× (same rows: {same}; cache {stats.rows:,} "
                  f"rows, {stats.bytes / 2**20:.0f} MiB; planner: {plan.choice})", flush=True)
            if not same:
                raise SystemExit("the cached query returned other rows than the uncached one")
        db.close()
    return out


def main() -> None:
    import tempfile

    rows = rows_env(1_000_000)
    backends = os.environ.get("DBDL_BENCH_BACKENDS", "duckdb,postgres").split(",")
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dbdl-bench-cache-") as folder:
        for backend in backends:
            results.extend(run_backend(backend, rows, Path(folder)))
    previous = RESULTS / "cache.json"
    if previous.exists():  # keep the other backends' rows of an earlier run at the same size
        old = json.loads(previous.read_text())
        if old.get("n_rows", rows) == rows:
            results = [r for r in old["rows"] if r["backend"] not in backends] + results
    write(results, rows)


def write(results: list[dict], rows: int) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"Result cache: CREATE TABLE … AS SELECT predict_array(…) over {rows:,} rows × {WIDTH} features"
    table = Table(title=title)
    for col in ("backend", "model", "case", "seconds", "rows/s", "÷ no cache"):
        table.add_column(col, justify="right" if col in ("seconds", "rows/s", "÷ no cache") else "left")
    lines = [f"# {title}", "", f"Machine: {machine()}. Strategy: the planner's choice. Ratios are times (lower is "
             "better) against the same query without the cache, in the same run.", "",
             "| backend | model | case | seconds | rows/s | ÷ no cache |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in results:
        cells = (r["backend"], r["model"], r["case"], f"{r['seconds']:.2f}", f"{r['rows_per_s']:,.0f}",
                 f"{r['ratio']:.3f}")
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cache.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "cache.json").write_text(json.dumps({"title": title, "n_rows": rows, "rows": results}, indent=2))
    plot(results, title)


def plot(results: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["backend"], r["model"]) for r in results))
    cases = ["no cache", "cache, 0% hits", "cache, 90% hits", "cache, 100% hits"]
    colors = ["#999999", "#dd8452", "#4c72b0", "#55a868"]
    fig, ax = plt.subplots(figsize=(10.5, 0.9 * len(groups) + 1.6))
    height = 0.8 / len(cases)
    for i, case in enumerate(cases):
        values = [next((r["ratio"] for r in results if (r["backend"], r["model"]) == g and r["case"] == case), 0)
                  for g in groups]
        ys = [k + i * height for k in range(len(groups))]
        bars = ax.barh(ys, values, height=height, color=colors[i], label=case)
        for bar, v in zip(bars, values):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.2f}×", va="center", fontsize=8)
    ax.set_yticks([k + 0.4 - height / 2 for k in range(len(groups))], [f"{b}\n{m}" for b, m in groups], fontsize=8)
    ax.axvline(0.2, color="#4c72b0", linestyle=":", linewidth=1)
    ax.axvline(1.1, color="#dd8452", linestyle=":", linewidth=1)
    ax.invert_yaxis()
    ax.set_xlabel("time ÷ the same query without the cache (lower is faster; dotted: targets 0.2× and 1.1×)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    fig.tight_layout()
    fig.savefig(RESULTS / "cache.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
