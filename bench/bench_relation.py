"""Relation-centric (the model compiled to SQL) against UDF-centric scoring, per model family.

For each family of bench/families.py (MLP, logistic regression, a scikit-learn pipeline, a random
forest, gradient boosting, LightGBM, a CNN and an embedding model), on DuckDB and on PostgreSQL, at
10^4, 10^5 and 10^6 rows: ``SELECT sum(predict_class(...)) FROM t`` with ``strategy='relation'``
and with ``strategy='udf'``, and raw onnxruntime on the same rows in memory (DuckDB: all cores;
PostgreSQL: one thread, no parallel workers — a backend is one process). The three are timed in
interleaved rounds, each keeping its best; every SQL result is checked against onnxruntime's classes
(the sum agrees). A family the SQL compiler refuses says why (db.explain's reason), so the same
script fills the cell in once its operators compile.

Time budget: a method is not run at a size when its time at the size below, scaled by the rows,
exceeds DBDL_BENCH_CELL_S seconds (default 40; the cell says "skipped: > budget"), and each run is
cut off at twice that. DBDL_BENCH_BACKENDS=duckdb|postgres runs one backend and keeps the other's
rows; DBDL_BENCH_SIZES=10000,100000 other sizes; arguments name families to run (forest lightgbm);
--report re-renders the last run's JSON; --quick a smoke run (small sizes, one round, results into
a scratch folder). Writes docs/bench/relation.{md,json,png}.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import (call_timer, database_url, fixed_list, timed_rounds, last_run, load_note,  # noqa: E402
                    machine, mismatches, print_and_markdown, progress_bar, results_dir, save_figure, seconds_text,
                    runs_note, slowest, sql_timer)
from families import FAMILIES, Family  # noqa: E402

import dbdl  # noqa: E402
from dbdl_udf.runtime import make_session  # noqa: E402

QUICK = "--quick" in sys.argv
SIZES = [int(s) for s in os.environ.get("DBDL_BENCH_SIZES", "1000,3000" if QUICK else "10000,100000,1000000").split(",")]
CELL_S = float(os.environ.get("DBDL_BENCH_CELL_S", 40))
BACKENDS = os.environ.get("DBDL_BENCH_BACKENDS", "duckdb,postgres").split(",")
ONLY = [a for a in sys.argv[1:] if not a.startswith("--")]  # family names, e.g. forest lightgbm
METHODS = ("raw", "udf", "relation")
OUT = results_dir(QUICK)


def _rounds(seconds: float) -> int:
    """How many interleaved rounds a cell gets: more for the quick ones (less noise), one for the slow."""
    return 1 if QUICK else 3 if seconds < 1 else 2 if seconds < 10 else 1


def raw_runner(session, x: np.ndarray, output: str):
    """onnxruntime on the in-memory array at its best of two batch sizes; returns the class sum."""
    name = session.get_inputs()[0].name
    index = [o.name for o in session.get_outputs()].index(output) if output else 0

    def run(batch: int) -> int:
        return int(sum(int(np.argmax(session.run(None, {name: x[i:i + batch]})[index], axis=1).sum())
                       for i in range(0, len(x), batch)))
    return run


def measure_family(db, backend: str, family: Family, tables: dict[int, str], data: dict[int, np.ndarray],
                   progress, task) -> list[dict]:
    threads = (os.cpu_count() or 1) if backend == "duckdb" else 1
    db.models.register(family.name, family.onnx())
    session = make_session(db.models.model_bytes(family.name), threads=threads)
    call = family.call.format(m=family.name)
    cells, last = [], {}
    for rows in SIZES:
        sql = f"SELECT sum({call}) FROM {tables[rows]}"
        plan = db.explain(sql)[0]
        ruled = {e.strategy: e.reason for e in plan.candidates if e.seconds is None}
        cell = {"backend": backend, "family": family.name, "label": family.label, "rows": rows,
                "planner": plan.choice, "seconds": {}, "notes": {}, "sums": {}}
        raw = raw_runner(session, data[rows], family.output)
        runs = {"raw": lambda: raw(2048 if backend == "postgres" else 16384)}
        for strategy in ("udf", "relation"):
            if strategy in ruled:
                cell["notes"][strategy] = f"refused: {ruled[strategy]}"
                continue
            if strategy in last and last[strategy][1] is None:
                cell["notes"][strategy] = "skipped: > budget (cut off at the size below)"
                continue
            if strategy in last and last[strategy][1] * rows / last[strategy][0] > CELL_S:
                cell["notes"][strategy] = (f"skipped: > budget (~{last[strategy][1] * rows / last[strategy][0]:.0f} s "
                                           f"extrapolated from {last[strategy][0]:,} rows)")
                continue
            runs[strategy] = strategy
        timers = {m: call_timer(r, cell["sums"], m) if m == "raw" else sql_timer(db, sql, r, 2 * CELL_S, cell["sums"])
                  for m, r in runs.items()}
        best = timed_rounds(timers, lambda first: _rounds(slowest(first)))
        for method, seconds in best.items():
            cell["seconds"][method] = seconds
            if seconds is None:
                cell["notes"][method] = f"cut off at {2 * CELL_S:.0f} s"
            if method != "raw":
                last[method] = (rows, seconds)
        cell["agrees"] = {m: s == cell["sums"]["raw"] for m, s in cell["sums"].items() if m != "raw" and s is not None}
        cells.append(cell)
        progress.advance(task)
        progress.console.print(f"{backend} {family.name} {rows:,}: " + ", ".join(
            f"{m} {cell['seconds'][m]:.3f} s" if isinstance(cell["seconds"].get(m), float) else f"{m} {cell['notes'][m][:60]}"
            for m in METHODS if m in cell["seconds"] or m in cell["notes"]) + f"; agrees {cell['agrees']}")
    db.models.drop(family.name)
    return cells


def run_backend(backend: str, families: list[Family], progress, task) -> list[dict]:
    cells: list[dict] = []
    with database_url(backend, Path("/tmp"), "dbdl_bench_relation") as url:
        if backend == "duckdb":
            url = "duckdb:///:memory:"
        db = dbdl.connect(url)
        if backend == "postgres":
            db.sql("SET max_parallel_workers_per_gather = 0")  # one core, like the reference
        groups: dict[str, list[Family]] = {}
        for f in families:  # families that score the same rows share their tables
            groups.setdefault(f.data, []).append(f)
        for key, members in groups.items():
            tables, data = {}, {}
            for rows in SIZES:
                data[rows] = members[0].rows(rows)
                tables[rows] = f"t_{key}_{rows}"
                progress.console.print(f"{backend}: loading {rows:,} rows of {key} …")
                db.create_table(tables[rows], {"id": np.arange(rows), "feats": fixed_list(data[rows])}, replace=True)
                if backend == "postgres":
                    db.sql(f"VACUUM ANALYZE {tables[rows]}")
            for family in members:
                cells += measure_family(db, backend, family, tables, data, progress, task)
            for table in tables.values():
                db.sql(f"DROP TABLE {table}")
        db.close()
    return cells


def main() -> None:
    families = [f for f in FAMILIES.values() if not ONLY or f.name in ONLY]
    saved = last_run(OUT / "relation.json")
    if "--report" in sys.argv:  # re-render the table and the plot from the last run's JSON
        return report(saved["cells"], saved["note"])
    start_note = load_note()
    names = {f.name for f in families}
    kept = [c for c in saved["cells"] if c["backend"] not in BACKENDS or c["family"] not in names]
    cells: list[dict] = []
    with progress_bar() as progress:
        task = progress.add_task("relation vs udf", total=len(BACKENDS) * len(families) * len(SIZES))
        for backend in BACKENDS:
            cells += run_backend(backend, families, progress, task)
    order = {b: i for i, b in enumerate(["duckdb", "postgres"])}
    run = f"{start_note} at the start, {load_note()} at the end"
    for cell in cells:
        cell["run"] = run
    cells = sorted(kept + cells, key=lambda c: (order.get(c["backend"], 9), list(FAMILIES).index(c["family"]), c["rows"]))
    report(cells, f"Machine: {machine()}; " + runs_note(cells, saved["note"]) + ".")


def fmt_cell(cell: dict, method: str) -> str:
    seconds = cell["seconds"].get(method)
    if isinstance(seconds, float):
        return seconds_text(seconds)
    note = cell["notes"].get(method, "—").replace("; use strategy='udf'", "")
    return note if len(note) <= 90 else note[:88] + "…"


def ratio(cell: dict, a: str, b: str) -> str:
    x, y = cell["seconds"].get(a), cell["seconds"].get(b)
    return f"{x / y:.2f}" if isinstance(x, float) and isinstance(y, float) else "—"


def report(cells: list[dict], note: str) -> None:
    header = ["backend", "family", "rows", "raw onnxruntime", "udf", "relation", "udf ÷ raw", "relation ÷ raw",
              "relation ÷ udf", "planner"]
    rows = [[c["backend"], c["label"], f"{c['rows']:,}", fmt_cell(c, "raw"), fmt_cell(c, "udf"), fmt_cell(c, "relation"),
             ratio(c, "udf", "raw"), ratio(c, "relation", "raw"), ratio(c, "relation", "udf"), c["planner"] + mismatches(c)]
            for c in cells]
    lines = ["# Relation-centric vs UDF-centric scoring, per model family", "", note,
             "Times of `SELECT sum(predict_class(...)) FROM t` (best of interleaved rounds); ratios are times "
             "(> 1: slower than the divisor). Raw onnxruntime: all cores on DuckDB, one thread on PostgreSQL "
             "(where no parallel workers run either). *planner*: what db.explain chose (uncalibrated defaults).", ""]
    lines += print_and_markdown("relation-centric vs UDF-centric (time ratios: > 1 = slower)", header,
                                ["---"] * 3 + ["---:"] * 6 + ["---"], rows)
    (OUT / "relation.md").write_text("\n".join(lines) + "\n")
    (OUT / "relation.json").write_text(json.dumps({"note": note, "cells": cells}, indent=2, default=str))
    plot(cells)
    print(f"wrote {OUT / 'relation.md'}")


def plot(cells: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = [b for b in ("duckdb", "postgres") if any(c["backend"] == b for c in cells)]
    fig, axes = plt.subplots(1, len(backends), figsize=(6.5 * len(backends), 4.2), squeeze=False, sharey=True)
    for ax, backend in zip(axes[0], backends):
        for name in FAMILIES:
            mine = [c for c in cells if c["backend"] == backend and c["family"] == name]
            pts = [(c["rows"], c["seconds"]["relation"] / c["seconds"]["udf"]) for c in mine
                   if isinstance(c["seconds"].get("relation"), float) and isinstance(c["seconds"].get("udf"), float)]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows")
        ax.set_title(f"{backend}: relation ÷ udf time (< 1: SQL faster)", fontsize=10)
        ax.legend(fontsize=7)
    save_figure(fig, OUT / "relation.png")


if __name__ == "__main__":
    main()
