"""The planner's choice against every strategy, over a grid of rows x models x backends.

rows {1e2, 1e4, 1e6} x models {MLP 28-32-16-1, 768-3072-768, 60000-256-1500 with sparse-ish
inputs; and issue 13's families (bench/families.py): logistic regression, a scikit-learn
StandardScaler + LogisticRegression pipeline, a random forest, LightGBM, a CNN and an embedding
model} x {DuckDB, PostgreSQL}: each strategy is timed (with a time cap; cells under a second in
three interleaved rounds, each strategy keeping its best), and the planner's choice is read from
db.explain. Regret = the chosen strategy's time / the best time. Cells whose input
data would exceed DBDL_BENCH_MAX_BYTES (default 600 MB) are skipped and say so; a strategy that
exceeds DBDL_BENCH_CAP_S seconds (default 60) is cut off, and such cells are marked: there not
every strategy fits. Arguments name models to re-run (substrings of their labels, e.g.
``forest lightgbm``); the other models' cells are kept from the last run's JSON. --report
re-renders that JSON; --quick is a smoke run (100 and 1,000 rows, into a scratch folder). Writes
docs/bench/planner_grid.{md,json,png}.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import capped_seconds, fixed_list, timed_rounds, load_note, machine, results_dir, save_figure, slowest  # noqa: E402
from families import FAMILIES  # noqa: E402

import dbdl  # noqa: E402
from dbdl.calibrate import mlp_onnx as onnx_mlp  # noqa: E402

CAP_S = float(os.environ.get("DBDL_BENCH_CAP_S", 60))
MAX_BYTES = float(os.environ.get("DBDL_BENCH_MAX_BYTES", 600e6))
QUICK = "--quick" in sys.argv  # a smoke run: small row counts, results into a scratch folder
ROWS = [int(r) for r in os.environ.get("DBDL_BENCH_GRID_ROWS", "100,1000" if QUICK else "100,10000,1000000").split(",")]
OUT = results_dir(QUICK)
STRATEGIES = ("udf", "relation", "dl")
MLPS = {
    "mlp 28-32-16-1": [28, 32, 16, 1],
    "768-3072-768": [768, 3072, 768],
    "60000-256-1500": [60000, 256, 1500],
}
SHORT = {"logistic": "logistic regression 30", "pipeline": "scaler+logistic pipeline 30",
         "forest": "random forest 20×depth 6", "lightgbm": "LightGBM 50×31 leaves", "cnn": "CNN 8×8 digits",
         "embedding": "embedding 16 ids"}  # issue 13's families (bench/families.py)
NEW = tuple(SHORT)


def _mlp_spec(sizes: list[int]) -> dict:
    return {"onnx": lambda: onnx_mlp(sizes), "rows": lambda n: features(n, sizes[0]), "width": sizes[0],
            "call": "predict_class('{m}', feats)" if sizes[-1] > 1 else "predict('{m}', feats)"}


MODELS = {label: _mlp_spec(sizes) for label, sizes in MLPS.items()} | {
    SHORT[f]: {"onnx": FAMILIES[f].onnx, "rows": FAMILIES[f].rows, "call": FAMILIES[f].call,
                        "width": len(FAMILIES[f].rows(1)[0])} for f in NEW}
ONLY = [a for a in sys.argv[1:] if not a.startswith("--")]


def features(rows: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((rows, width), dtype=np.float32)
    if width > 10000:  # sparse-ish: 1% of the inputs are set
        x *= rng.random((rows, width)) < 0.01
    return x


def databases():
    yield "duckdb", "duckdb:///:memory:"
    import pgserver

    ok, why = pgserver.available()
    if not ok:
        print(f"PostgreSQL skipped: {why}")
        return
    with pgserver.PostgresServer(settings={"shared_buffers": "512MB", "work_mem": "256MB"}) as server:
        yield "postgres", server.create_database("dbdl_grid")


def timed(db, sql: str, strategy: str | None) -> float | None:
    """Seconds, or None when cut off at CAP_S."""
    return capped_seconds(db, sql, strategy, CAP_S)


def measure(db, sql: str, cell: dict) -> None:
    """Every feasible strategy's time: one run each, and for a cell under a second two more rounds
    (each strategy keeping its best: at 100 rows a few ms of noise decide)."""
    runs = {s: (lambda s=s: timed(db, sql, s)) for s in STRATEGIES if cell["estimates"][s] is not None}
    best = timed_rounds(runs, lambda first: 1 if None in first.values() or slowest(first) >= 1.0 else 3)
    cell["times"] = {s: best.get(s, "ruled out") for s in STRATEGIES}


def main() -> None:
    path = OUT / "planner_grid.json"
    if "--report" in sys.argv:  # re-render the table and the plot from the last run's JSON
        saved = json.loads(path.read_text())
        return report(saved, next((c["load"] for c in saved if "load" in c), ""))
    selected = [m for m in MODELS if not ONLY or any(o.lower() in m.lower() for o in ONLY)]
    kept = [c for c in json.loads(path.read_text()) if c["model"] not in selected] if ONLY and path.exists() else []
    note = load_note()
    cells = []
    for backend_name, url in databases():
        for label in selected:
            spec = MODELS[label]
            for rows in ROWS:
                data_bytes = rows * spec["width"] * 4
                cell = {"backend": backend_name, "model": label, "rows": rows}
                if data_bytes > MAX_BYTES:
                    cell["skipped"] = f"input data {data_bytes / 1e9:.1f} GB > {MAX_BYTES / 1e9:.1f} GB"
                    cells.append(cell)
                    print(backend_name, label, rows, cell["skipped"], flush=True)
                    continue
                with dbdl.connect(url) as db:
                    name = "m" + str(abs(hash(label)) % 10000)
                    db.models.register(name, spec["onnx"]())
                    x = spec["rows"](rows)
                    db.create_table("grid", {"id": np.arange(rows), "feats": x if label in MLPS else fixed_list(x)},
                                    replace=True)
                    sql = f"SELECT sum({spec['call'].format(m=name)}) FROM grid"
                    plan = db.explain(sql)[0]
                    cell["choice"] = plan.choice
                    cell["estimates"] = {e.strategy: e.seconds for e in plan.candidates}
                    cell["terms"] = {e.strategy: e.terms for e in plan.candidates if e.seconds is not None}
                    measure(db, sql, cell)
                    chosen = cell["times"].get(plan.choice)
                    cell["planner"] = chosen
                    measured = [t for t in cell["times"].values() if isinstance(t, float)]
                    every_fits = all(isinstance(t, float) for t in cell["times"].values() if t != "ruled out")
                    cell["every_strategy_fits"] = every_fits
                    if measured and isinstance(chosen, float):
                        cell["regret"] = chosen / min(measured)
                    db.models.drop(name)
                    db.sql("DROP TABLE grid")
                cells.append(cell)
                print(backend_name, label, rows, cell.get("choice"), cell["times"], "regret",
                      f"{cell.get('regret', float('nan')):.2f}", flush=True)
    order = list(MODELS)
    cells = sorted(kept + cells, key=lambda c: (c["backend"] != "duckdb", order.index(c["model"]), c["rows"]))
    load = f"{note} at the start, {load_note()} at the end"
    for cell in cells:
        cell.setdefault("load", load)  # kept cells keep the load of their own run
    report(cells, load)


def report(cells: list[dict], load: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(t) -> str:
        return "cut off" if t is None else (t if isinstance(t, str) else f"{t:.3f} s")

    table = Table(title=f"planner vs every strategy (cap {CAP_S:.0f} s)")
    for col in ("backend", "model", "rows", "udf", "relation", "dl", "planner chose", "regret"):
        table.add_column(col)
    lines = ["# Planner regret over rows × models × backends", "", f"Machine: {machine()}; {load}. Each strategy capped at "
             f"{CAP_S:.0f} s; regret = the planner's choice ÷ the best strategy in that cell (uncalibrated defaults).",
             "", "| backend | model | rows | udf | relation | dl | planner chose | regret |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for c in cells:
        if "skipped" in c:
            row = [c["backend"], c["model"], f"{c['rows']:,}", "—", "—", "—", "skipped", c["skipped"]]
        else:
            regret = c.get("regret")
            mark = "" if c["every_strategy_fits"] else " (not every strategy fits)"
            row = [c["backend"], c["model"], f"{c['rows']:,}", *(fmt(c["times"][s]) for s in STRATEGIES),
                   c["choice"], (f"{regret:.2f}" if regret else "—") + mark]
        table.add_row(*row)
        lines.append("| " + " | ".join(row) + " |")
    Console().print(table)
    fits = [c["regret"] for c in cells if c.get("every_strategy_fits") and c.get("regret")]
    summary = (f"Cells where every strategy fits: {len(fits)}; worst regret {max(fits):.2f}, "
               f"median {float(np.median(fits)):.2f} (target ≤ 1.15)." if fits else "No cell where every strategy fits.")
    print(summary)
    lines += ["", summary]
    misses = [c for c in cells if (c.get("regret") or 1) > 1.15]
    if misses:
        lines += ["", "Cells over 1.15, with the planner's estimates (est.) against the times:", ""]
    for c in misses:
        best = min((s for s in STRATEGIES if isinstance(c["times"][s], float)), key=lambda s: c["times"][s])
        line = (f"- {c['backend']}, {c['model']}, {c['rows']:,} rows: chose {c['choice']} (est. "
                f"{c['estimates'][c['choice']]:.3f} s, took {fmt(c['times'][c['choice']])}), best {best} (est. "
                f"{c['estimates'][best]:.3f} s, took {fmt(c['times'][best])})")
        terms = c.get("terms", {})
        if terms:
            line += "; terms: " + "; ".join(f"{s} " + ", ".join(f"{k} {v:.3f}" for k, v in terms[s].items())
                                            for s in (c["choice"], best) if s in terms)
        lines.append(line)
    (OUT / "planner_grid.md").write_text("\n".join(lines) + "\n")
    (OUT / "planner_grid.json").write_text(json.dumps(cells, indent=2, default=str))
    plot(cells)


def plot(cells: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [c for c in cells if "skipped" not in c]
    backends = sorted({c["backend"] for c in done})
    most = max(sum(c["backend"] == b for c in done) for b in backends)
    fig, axes = plt.subplots(len(backends), 1, figsize=(max(8.0, 0.36 * most), 4.4 * len(backends)), squeeze=False)
    for ax, backend in zip(axes[:, 0], backends):
        mine = [c for c in done if c["backend"] == backend]
        labels = [f"{c['model']}\n{c['rows']:,} rows" for c in mine]
        x = np.arange(len(mine))
        for k, strategy in enumerate(STRATEGIES):
            vals = [c["times"][strategy] if isinstance(c["times"][strategy], float) else np.nan for c in mine]
            ax.bar(x + (k - 1) * 0.25, vals, 0.25, label=strategy)
        chosen = [c["planner"] if isinstance(c.get("planner"), float) else np.nan for c in mine]
        where = [x[i] + (STRATEGIES.index(c["choice"]) - 1) * 0.25 for i, c in enumerate(mine)]
        ax.scatter(where, chosen, marker="*", s=120, color="black", zorder=3, label="planner's choice")
        ax.set_yscale("log")
        ax.set_xticks(x, labels, fontsize=6, rotation=50, ha="right")
        ax.set_ylabel("seconds (log)")
        ax.set_title(backend)
        ax.legend(fontsize=7)
    save_figure(fig, OUT / "planner_grid.png")


if __name__ == "__main__":
    main()
