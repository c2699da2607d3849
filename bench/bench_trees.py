"""Tree ensembles as SQL (relation-centric CASE expressions) against onnxruntime in the UDF.

A grid of scikit-learn random forests (skl2onnx) over the number of trees {1, 5, 20, 100} × the
maximum depth {3, 6, 10}, fitted on 20,000 synthetic rows of 30 features (make_classification:
15 informative, so that depth-10 trees do grow ~10 levels), scored by
``SELECT sum(predict_class('m:probabilities', feats)) FROM t`` on DuckDB at 10^5 rows and on
PostgreSQL at 10^4 rows, with ``strategy='relation'`` and ``strategy='udf'``, timed_rounds, best
of the rounds; raw onnxruntime on the same rows in memory for reference. Raven (MLtoSQL) reports
SQL beating the UDF for small trees: the heatmap shows where that crossover is here. For each
forest, the relation-centric run on a single row measures its fixed cost (sqlglot, the
database's parser and planner over the CASE text), which is what the cost model's
``rel_tree_node_s`` (seconds per tree node) estimates; the planner's estimates are recorded too.

Each run is cut off at DBDL_BENCH_CAP_S seconds (default 90); a forest whose smaller sibling (the
same depth, fewer trees) took longer than the cap ÷ the ratio of their node counts is skipped.
DBDL_BENCH_BACKENDS=duckdb|postgres runs one backend and keeps the other's cells;
DBDL_BENCH_TREE_ROWS=duckdb_rows,postgres_rows other row counts; --report re-renders the last
run's JSON; --quick a smoke run (small grid and rows, results into a scratch folder). Writes docs/bench/trees.{md,json,png}.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(__file__))
from common import (call_timer, capped_seconds, database_url, fixed_list, timed_rounds, last_run,  # noqa: E402
                    load_note, machine, mismatches, print_and_markdown, progress_bar, results_dir, save_figure,
                    seconds_text, runs_note, slowest, sql_timer)

import dbdl  # noqa: E402
from dbdl.ir import from_onnx  # noqa: E402
from dbdl_udf.runtime import make_session  # noqa: E402

QUICK = "--quick" in sys.argv
TREES = [1, 5] if QUICK else [1, 5, 20, 100]
DEPTHS = [3, 6] if QUICK else [3, 6, 10]
ROWS = dict(zip(("duckdb", "postgres"), (int(r) for r in os.environ.get(
    "DBDL_BENCH_TREE_ROWS", "2000,1000" if QUICK else "100000,10000").split(","))))
CAP_S = float(os.environ.get("DBDL_BENCH_CAP_S", 90))
BACKENDS = os.environ.get("DBDL_BENCH_BACKENDS", "duckdb,postgres").split(",")
FIT_ROWS = 20_000
OUT = results_dir(QUICK)


@functools.lru_cache(maxsize=None)
def data(rows: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=max(rows, FIT_ROWS), n_features=30, n_informative=15, n_redundant=5,
                               random_state=0)
    return X.astype(np.float32), y


@functools.lru_cache(maxsize=None)
def forest(trees: int, depth: int) -> tuple[bytes, int]:
    """The ONNX bytes of the forest and its number of nodes."""
    from sklearn.ensemble import RandomForestClassifier
    from skl2onnx import to_onnx

    X, y = data(FIT_ROWS)
    est = RandomForestClassifier(n_estimators=trees, max_depth=depth, random_state=0, n_jobs=1).fit(X[:FIT_ROWS],
                                                                                                   y[:FIT_ROWS])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_bytes = to_onnx(est, X[:1], target_opset={"": 17, "ai.onnx.ml": 3},
                             options={id(est): {"zipmap": False}}).SerializeToString()
    return onnx_bytes, int(sum(e.tree_.node_count for e in est.estimators_))


def raw_runner(session, x: np.ndarray, batch: int):
    name = session.get_inputs()[0].name
    return lambda: int(sum(int(np.argmax(session.run(None, {name: x[i:i + batch]})[1], axis=1).sum())
                           for i in range(0, len(x), batch)))


def run_backend(backend: str, progress, task) -> list[dict]:
    rows = ROWS[backend]
    X = data(rows)[0][:rows]
    cells: list[dict] = []
    with database_url(backend, Path("/tmp"), "dbdl_bench_trees") as url:
        db = dbdl.connect("duckdb:///:memory:" if backend == "duckdb" else url)
        if backend == "postgres":
            db.sql("SET max_parallel_workers_per_gather = 0")  # one core, like the reference
        db.create_table("t", {"id": np.arange(rows), "feats": fixed_list(X)}, replace=True)
        db.create_table("one", {"id": np.arange(1), "feats": fixed_list(X[:1])}, replace=True)
        if backend == "postgres":
            db.sql("VACUUM ANALYZE t")
        threads = (os.cpu_count() or 1) if backend == "duckdb" else 1
        done: dict[tuple[int, int], dict] = {}
        for depth in DEPTHS:
            for trees in TREES:
                onnx_bytes, nodes = forest(trees, depth)
                name = f"rf_{trees}_{depth}"
                cell = {"backend": backend, "rows": rows, "trees": trees, "depth": depth, "nodes": nodes,
                        "seconds": {}, "notes": {}, "sums": {}}
                smaller = max((c for (t, d), c in done.items() if d == depth and t < trees), key=lambda c: c["trees"],
                              default=None)
                prior = smaller and smaller["seconds"].get("relation")
                if smaller and (prior is None or prior * nodes / smaller["nodes"] > CAP_S):
                    cell["notes"]["relation"] = (f"skipped: > budget ({smaller['trees']} trees took "
                                                 + (f"{prior:.0f} s)" if prior else "longer than the cap)"))
                db.models.register(name, onnx_bytes)
                graph = from_onnx(onnx.load_from_string(onnx_bytes))
                cell["sql_nodes"] = sum(n.op.forest().n_nodes for n in graph.nodes if n.op.op_type.startswith("TreeEnsemble"))
                sql = f"SELECT sum(predict_class('{name}:probabilities', feats)) FROM t"
                plan = db.explain(sql)[0]
                cell["planner"] = plan.choice
                cell["estimates"] = {e.strategy: e.seconds for e in plan.candidates}
                cell["relation_terms"] = next(e.terms for e in plan.candidates if e.strategy == "relation")
                session = make_session(db.models.model_bytes(name), threads=threads)
                raw = raw_runner(session, X, 2048 if backend == "postgres" else 16384)
                methods = ["raw", "udf"] + ([] if "relation" in cell["notes"] else ["relation"])
                timers = {m: call_timer(raw, cell["sums"], m) if m == "raw" else sql_timer(db, sql, m, CAP_S, cell["sums"])
                          for m in methods}
                best = timed_rounds(timers, lambda first: 1 if QUICK else (
                    3 if slowest(first) < 2 else 2 if slowest(first) < 20 else 1))
                if isinstance(best.get("relation"), float):  # the fixed cost: the same statement over one row
                    one = [capped_seconds(db, f"SELECT sum(predict_class('{name}:probabilities', feats)) FROM one",
                                          "relation", CAP_S) for _ in range(2)]
                    cell["seconds"]["relation, 1 row"] = min((t for t in one if t is not None), default=None)
                for m, seconds in best.items():
                    cell["seconds"][m] = seconds
                    if seconds is None:
                        cell["notes"][m] = f"cut off at {CAP_S:.0f} s"
                cell["agrees"] = {m: s == cell["sums"]["raw"] for m, s in cell["sums"].items() if m != "raw"}
                db.models.drop(name)
                done[(trees, depth)] = cell
                cells.append(cell)
                progress.advance(task)
                progress.console.print(
                    f"{backend} {trees} trees depth {depth} ({nodes:,} nodes): "
                    + ", ".join(f"{m} {v:.3f} s" if isinstance(v, float) else f"{m} —" for m, v in cell["seconds"].items())
                    + (f"; {cell['notes']}" if cell["notes"] else "") + f"; agrees {cell['agrees']}")
        db.close()
    return cells


def main() -> None:
    saved = last_run(OUT / "trees.json")
    if "--report" in sys.argv:  # re-render the table and the plot from the last run's JSON
        return report(saved["cells"], saved["note"])
    start_note = load_note()
    kept = [c for c in saved["cells"] if c["backend"] not in BACKENDS]
    cells: list[dict] = []
    with progress_bar() as progress:
        task = progress.add_task("trees: relation vs udf", total=len(BACKENDS) * len(TREES) * len(DEPTHS))
        for backend in BACKENDS:
            cells += run_backend(backend, progress, task)
    run = f"{start_note} at the start, {load_note()} at the end"
    for cell in cells:
        cell["run"] = run
    cells = sorted(kept + cells, key=lambda c: (c["backend"] != "duckdb", c["depth"], c["trees"]))
    report(cells, f"Machine: {machine()}; " + runs_note(cells, saved["note"]) + ".")


def _s(cell: dict, m: str) -> str:
    v = cell["seconds"].get(m)
    return seconds_text(v) if isinstance(v, float) else cell["notes"].get(m, "—")


def _ratio(cell: dict) -> float | None:
    r, u = cell["seconds"].get("relation"), cell["seconds"].get("udf")
    return r / u if isinstance(r, float) and isinstance(u, float) else None


def report(cells: list[dict], note: str) -> None:
    header = ["backend", "rows", "trees", "depth", "nodes", "raw onnxruntime", "udf", "relation", "relation, 1 row",
              "relation ÷ udf", "est. relation ÷ udf", "planner"]
    rows = []
    for c in cells:
        ratio, est = _ratio(c), c.get("estimates", {})
        est_ratio = est["relation"] / est["udf"] if est.get("relation") and est.get("udf") else None
        rows.append([c["backend"], f"{c['rows']:,}", str(c["trees"]), str(c["depth"]), f"{c['nodes']:,}", _s(c, "raw"),
                     _s(c, "udf"), _s(c, "relation"), _s(c, "relation, 1 row"), f"{ratio:.2f}" if ratio else "—",
                     f"{est_ratio:.2f}" if est_ratio else "—", c.get("planner", "") + mismatches(c)])
    lines = ["# Tree ensembles as SQL vs onnxruntime in the UDF", "", note,
             "Random forests (skl2onnx) on 30 features; `SELECT sum(predict_class('m:probabilities', feats)) FROM t`, "
             "best of interleaved rounds. *relation, 1 row*: the same statement over a one-row table (its fixed cost). "
             "*est.*: the planner's estimates (uncalibrated defaults).", ""]
    lines += print_and_markdown("tree ensembles: SQL (relation) vs onnxruntime (udf)", header,
                                ["---"] + ["---:"] * 10 + ["---"], rows)
    wins = [c for c in cells if (_ratio(c) or 9) < 1]
    summary = ("SQL beats the UDF in: " + "; ".join(f"{c['backend']} {c['trees']} trees depth {c['depth']} "
                                                    f"({_ratio(c):.2f})" for c in wins)
               if wins else "SQL beats the UDF in no cell of this grid.")
    print(summary)
    lines += ["", summary]
    (OUT / "trees.md").write_text("\n".join(lines) + "\n")
    (OUT / "trees.json").write_text(json.dumps({"note": note, "cells": cells}, indent=2, default=str))
    plot(cells)


def plot(cells: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    backends = [b for b in ("duckdb", "postgres") if any(c["backend"] == b for c in cells)]
    trees = sorted({c["trees"] for c in cells})
    depths = sorted({c["depth"] for c in cells})
    fig, axes = plt.subplots(1, len(backends), figsize=(5.2 * len(backends), 3.8), squeeze=False)
    for ax, backend in zip(axes[0], backends):
        grid = np.full((len(depths), len(trees)), np.nan)
        for c in cells:
            if c["backend"] == backend and _ratio(c):
                grid[depths.index(c["depth"]), trees.index(c["trees"])] = _ratio(c)
        finite = grid[np.isfinite(grid)]
        lim = max(2.0, float(np.max(np.abs(np.log10(finite)))) if finite.size else 1.0)
        image = ax.imshow(grid, cmap="RdYlGn_r", norm=LogNorm(vmin=10 ** -min(lim, 2), vmax=10 ** lim), origin="lower")
        for i in range(len(depths)):
            for j in range(len(trees)):
                text = f"{grid[i, j]:.2f}" if np.isfinite(grid[i, j]) else "skipped"
                ax.text(j, i, text, ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(trees)), [str(t) for t in trees])
        ax.set_yticks(range(len(depths)), [str(d) for d in depths])
        ax.set_xlabel("trees")
        ax.set_ylabel("max depth")
        rows = next(c["rows"] for c in cells if c["backend"] == backend)
        ax.set_title(f"{backend}, {rows:,} rows: relation ÷ udf time\n(< 1, green: SQL faster)", fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.8)
    save_figure(fig, OUT / "trees.png")


if __name__ == "__main__":
    main()
