"""DM8 (issue 16): what can be measured without a DM8 server, and the live benchmark for when one is given.

No DM8 server can be had where dbdl is developed, so this benchmark has two parts:

* **offline (always)** — the client's side of DL-centric execution on DM8, the part dbdl owns: rows
  as dmPython's ``fetchmany`` hands them over (one tuple of Python numbers per row, a ROWID key and
  one DOUBLE column per feature: DM8's one-column-per-feature form), through the backend's own
  ``score_batch`` (tuples → numpy columns → the stacked matrix → onnxruntime → the predictions as
  the temporary table takes them) and ``bind_types`` (the ``executemany`` list's bind types), against
  raw onnxruntime on the same rows as an in-memory float32 array (the reference). The ratio is the
  ceiling of DL-centric's throughput on DM8 before any network or server time. Also: the time
  ``render`` (the DM8 dialect's parse and write of every statement) takes for a registry upsert and
  the golden relation-centric plans, against sqlglot's parse and write of the same text for DuckDB.
* **live (``DBDL_DM8_URL`` set)** — ``SELECT predict_class('mlp', c0, …)`` over a table of one column
  per feature, relation- and DL-centric, against raw onnxruntime; not run here (no server), so
  docs/bench/dm8.md holds the offline part only.

Usage: python bench/bench_dm8.py [--rows N] [--quick]; rows also from $DBDL_BENCH_ROWS. Writes
docs/bench/dm8.{md,json,png} (a --quick smoke run into a scratch folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import load_note, machine, mlp, print_and_markdown, progress_bar, results_dir, rows_env, save_figure  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 64
SIZES = [WIDTH, 256, 256, 10]
MODEL = "MLP 64-256-256-10"
FETCH_ROWS = 10_000  # the DM8 backend's DL-centric fetch (backends/dm8/backend.py FETCH_ROWS)
GOLDEN = ROOT / "tests" / "golden" / "dm8"


def model_bytes() -> bytes:
    import torch

    import dbdl

    db = dbdl.connect("duckdb:///:memory:")
    db.models.register("mlp", mlp(SIZES), example=torch.randn(1, WIDTH))
    data = db.models.model_bytes("mlp")
    db.close()
    return data


def fetched_batches(x: np.ndarray) -> list[list[tuple]]:
    """``x`` as dmPython's fetchmany gives a DL-centric source: per row (ROWID, f0, …, f63) of Python
    numbers (DOUBLE columns come back as floats), in batches of FETCH_ROWS."""
    out = []
    for start in range(0, len(x), FETCH_ROWS):
        block = x[start:start + FETCH_ROWS].astype(np.float64).tolist()
        out.append([(start + i, *row) for i, row in enumerate(block)])
    return out


def dl_client_part(onnx: bytes, rows: int, repeats: int, bar, task) -> list[dict]:
    import dmPython

    from dbdl.backends.dm8 import backend as dm8
    from dbdl.strategies.dl import stack_columns
    from dbdl_udf.runtime import make_session

    x = np.random.default_rng(0).standard_normal((rows, WIDTH), dtype=np.float32)
    batches = fetched_batches(x)
    session = make_session(onnx, threads=os.cpu_count() or 1)
    name = session.get_inputs()[0].name
    description = [("DBDL_K", dmPython.BIGINT, 0, 8, 0, 0, 0)] + [
        (f"DBDL_F{j or ''}", dmPython.DOUBLE, 0, 8, 0, 0, 1) for j in range(WIDTH)]

    def scores(kind: str):
        def run(columns):
            stacked = stack_columns(columns)
            y = session.run(None, {name: stacked.matrix()[stacked.valid].astype(np.float32, copy=False)})[0]
            return y.argmax(axis=1) if kind == "class" else y
        return run

    def raw() -> float:
        start = time.perf_counter()
        for i in range(0, rows, FETCH_ROWS):
            session.run(None, {name: x[i:i + FETCH_ROWS]})
        return time.perf_counter() - start

    def client(kind: str):
        score = scores(kind)

        def run() -> float:
            start = time.perf_counter()
            for batch in batches:
                dm8.bind_types(dm8.score_batch(description, batch, None, True, score, kind))
            return time.perf_counter() - start
        return run

    methods = {"raw onnxruntime, in-memory float32 array": raw,
               "DM8 DL client path, predict_class (fetched tuples → scored → bind list)": client("class"),
               "DM8 DL client path, predict_array (… → JSON text per row)": client("array")}
    for run in methods.values():
        run()  # warm: sessions, numpy paths
    best = {k: float("inf") for k in methods}
    for _ in range(repeats):
        for label, run in methods.items():
            best[label] = min(best[label], run())
            bar.advance(task)
    return [{"name": label, "rows_per_s": rows / best[label]} for label in methods]


def render_part(repeats: int) -> list[list[str]]:
    import logging

    import sqlglot

    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # DuckDB has no TO_CHAR format: the reference only

    from dbdl.backends.dm8.dialect import DbdlDM8, render

    statements = {"registry upsert (INSERT … ON CONFLICT → MERGE)":
                  "INSERT INTO dbdl.blobs (sha256, bytes, size_bytes) VALUES (?, ?, ?) ON CONFLICT (sha256) DO NOTHING"}
    for golden in ("relation_mlp.sql", "relation_tree.sql"):
        path = GOLDEN / golden
        if path.exists():
            statements[f"relation-centric plan, {golden} ({len(path.read_text()):,} chars)"] = path.read_text().strip().rstrip(";")
    out = []
    for label, sql in statements.items():
        dm8 = min(_timed(lambda: render.__wrapped__(sql)) for _ in range(repeats))
        duck = min(_timed(lambda: sqlglot.parse_one(sql, read=DbdlDM8 if "MERGE" not in label else "duckdb")
                          .sql(dialect="duckdb")) for _ in range(repeats))
        render(sql)
        cached = min(_timed(lambda: render(sql)) for _ in range(repeats))
        out.append([label, f"{dm8 * 1e3:.2f} ms", f"{duck * 1e3:.2f} ms", f"{dm8 / duck:.2f}", f"{cached * 1e6:.1f} µs"])
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def live_part(url: str, onnx: bytes, rows: int) -> list[dict]:
    """predict_class over a DM8 table of one column per feature, relation- and DL-centric, against raw
    onnxruntime (not run where dbdl is developed: no DM8 server)."""
    import dbdl
    from dbdl_udf.runtime import make_session

    x = np.random.default_rng(1).standard_normal((rows, WIDTH), dtype=np.float32)
    db = dbdl.connect(url)
    db.models.register("mlp", onnx)
    db.sql("DROP TABLE IF EXISTS bench_dm8")
    db.create_table("bench_dm8", {"id": np.arange(rows), **{f"c{j}": x[:, j].astype(np.float64) for j in range(WIDTH)}})
    columns = ", ".join(f"c{j}" for j in range(WIDTH))
    sql = f"SELECT sum(predict_class('mlp', {columns})) FROM bench_dm8"
    session = make_session(onnx, threads=os.cpu_count() or 1)
    start = time.perf_counter()
    session.run(None, {session.get_inputs()[0].name: x})
    out = [{"name": "raw onnxruntime, in-memory float32 array", "rows_per_s": rows / (time.perf_counter() - start)}]
    for strategy in ("dl", "relation"):
        db.sql(sql, strategy=strategy).fetchall()  # warm: weight tables, temporary table definitions
        start = time.perf_counter()
        db.sql(sql, strategy=strategy).fetchall()
        out.append({"name": f"DM8 predict_class, strategy={strategy}", "rows_per_s": rows / (time.perf_counter() - start)})
    db.sql("DROP TABLE bench_dm8")
    db.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=rows_env(100_000))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run (10,000 rows) into a scratch folder")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats = 10_000, 2
    try:
        import dmPython  # noqa: F401
    except ImportError as exc:  # skipped with a message: make bench runs the other benchmarks
        print(f"bench_dm8 skipped: dmPython is not installed ({exc}): pip install 'dbdl[dm8]'")
        return
    out_dir = results_dir(args.quick)
    load_start = load_note()
    onnx = model_bytes()
    with progress_bar() as bar:
        task = bar.add_task("DM8 DL-centric client path vs raw onnxruntime", total=3 * args.repeats)
        dl_rows = dl_client_part(onnx, args.rows, args.repeats, bar, task)
    ref = dl_rows[0]["rows_per_s"]
    table = [[r["name"], f"{r['rows_per_s']:,.0f}", f"{r['rows_per_s'] / ref:.3f}"] for r in dl_rows]
    lines = [f"# DM8: what runs without a server ({MODEL}, {args.rows:,} rows x {WIDTH} features)", "",
             f"Machine: {machine()}; {load_start} at the start, {load_note()} at the end.", "",
             "## DL-centric on DM8, the client's side (no network, no server)", "",
             "Rows as dmPython's fetchmany gives them (a tuple of Python numbers per row: a ROWID and one DOUBLE "
             f"per feature), in batches of {FETCH_ROWS:,}, through the backend's `score_batch` and `bind_types`, "
             "against raw onnxruntime on the same rows as one float32 array. Best of "
             f"{args.repeats} interleaved rounds.", ""]
    lines += print_and_markdown("DL-centric on DM8: the client's side", ["method", "rows/s", "÷ raw onnxruntime"],
                                ["---", "---:", "---:"], table)
    render_rows = render_part(max(5, args.repeats))
    lines += ["", "## render: the DM8 dialect's pass over every statement", "",
              "`render` parses a statement with the DM8 dialect and writes it back (uncached, `render.__wrapped__`); "
              "the reference is sqlglot's parse and write of the same text for DuckDB; a cached render is a "
              "dictionary look-up.", ""]
    lines += print_and_markdown("render", ["statement", "DM8 render", "sqlglot → DuckDB", "ratio", "cached"],
                                ["---", "---:", "---:", "---:", "---:"], render_rows)
    url = os.environ.get("DBDL_DM8_URL")
    live = live_part(url, onnx, args.rows) if url else None
    lines += ["", "## Live (DBDL_DM8_URL)", ""]
    if live is None:
        lines.append("Not run: no DM8 server was reachable (set DBDL_DM8_URL=dm://user:password@host:5236 to run it).")
    else:
        live_ref = live[0]["rows_per_s"]
        lines += print_and_markdown("DM8 live", ["method", "rows/s", "÷ raw onnxruntime"], ["---", "---:", "---:"],
                                    [[r["name"], f"{r['rows_per_s']:,.0f}", f"{r['rows_per_s'] / live_ref:.3f}"]
                                     for r in live])
    (out_dir / "dm8.md").write_text("\n".join(lines) + "\n")
    (out_dir / "dm8.json").write_text(json.dumps({"rows": args.rows, "model": MODEL, "dl_client": dl_rows,
                                                  "render": render_rows, "live": live}, indent=2))
    plot(out_dir, dl_rows, args.rows)
    print(f"\nwrote {out_dir / 'dm8.md'}")


def plot(out_dir: Path, rows: list[dict], n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = rows[0]["rows_per_s"]
    fig, ax = plt.subplots(figsize=(9, 2.8))
    names = [r["name"] for r in rows][::-1]
    values = [r["rows_per_s"] for r in rows][::-1]
    bars = ax.barh(names, values, color=["#999999" if n_ == rows[0]["name"] else "#4c72b0" for n_ in names])
    for bar, v in zip(bars, values):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:,.0f}/s ({v / ref:.2f}×)", va="center",
                fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(left=min(values) / 3, right=max(values) * 10)
    ax.set_xlabel("rows per second (log scale)")
    ax.set_title(f"DM8 DL-centric, the client's side vs raw onnxruntime\n{MODEL}, {n:,} rows, no server", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    save_figure(fig, out_dir / "dm8.png")


if __name__ == "__main__":
    main()
