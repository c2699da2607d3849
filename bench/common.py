"""Shared helpers for the benchmarks: timing, synthetic data, the printed table and the plot."""

from __future__ import annotations

import contextlib
import json
import sys
import textwrap
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS = DOCS / "bench"


@contextlib.contextmanager
def database_url(backend: str, folder: Path, name: str, **pg_settings):
    """A database for one benchmark: a DuckDB file in ``folder``, or on PostgreSQL the server named
    by DBDL_BENCH_PG_URL, else a throwaway server started here (as the tests do)."""
    if backend == "duckdb":
        yield f"duckdb:///{folder / (name + '.duckdb')}"
        return
    url = os.environ.get("DBDL_BENCH_PG_URL")
    if url:
        yield url
        return
    sys.path.insert(0, str(ROOT / "tests"))
    import pgserver

    ok, why = pgserver.available()
    if not ok:
        raise SystemExit(f"cannot start PostgreSQL for the benchmark: {why}")
    with pgserver.PostgresServer(settings={"shared_buffers": "1GB", "work_mem": "256MB", **pg_settings}) as server:
        yield server.create_database(name)


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """The fastest of ``repeat`` runs, in seconds (the least disturbed by the rest of the machine)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(methods: dict, rounds: int) -> dict[str, float]:
    """Best seconds of each method over ``rounds`` rounds that run every method once in turn."""
    best = {k: float("inf") for k in methods}
    for _ in range(rounds):
        for label, fn in methods.items():
            best[label] = min(best[label], timed(fn))
    return best


def rows_env(default: int) -> int:
    return int(os.environ.get("DBDL_BENCH_ROWS", default))


def mlp(sizes: list[int], seed: int = 0):
    import torch

    torch.manual_seed(seed)
    layers: list = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).eval()


def features(rows: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, width), dtype=np.float32)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def report(name: str, title: str, rows: list[dict], reference: str, note: str = "") -> None:
    """Print a table of rows/s with ratios to ``reference``, write it as markdown + JSON, plot it."""
    from rich.console import Console
    from rich.table import Table

    ref = next(r for r in rows if r["name"] == reference)["rows_per_s"]
    table = Table(title=title)
    for col in ("method", "rows/s", f"÷ {reference}"):
        table.add_column(col, justify="right" if col != "method" else "left")
    lines = [f"# {title}", "", f"Machine: {machine()}. {note}".strip(), "",
             f"| method | rows/s | ÷ {reference} |", "| --- | ---: | ---: |"]
    for r in rows:
        ratio = r["rows_per_s"] / ref
        table.add_row(r["name"], f"{r['rows_per_s']:,.0f}", f"{ratio:.3f}")
        lines.append(f"| {r['name']} | {r['rows_per_s']:,.0f} | {ratio:.3f} |")
    Console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"title": title, "rows": rows, "reference": reference}, indent=2))
    plot_bars(name, title, rows, reference)


def plot_bars(name: str, title: str, rows: list[dict], reference: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = next(r for r in rows if r["name"] == reference)["rows_per_s"]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.2))
    names = [r["name"] for r in rows][::-1]
    values = [r["rows_per_s"] for r in rows][::-1]
    bars = ax.barh(names, values, color=["#4c72b0" if n != reference else "#999999" for n in names])
    for bar, v in zip(bars, values):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:,.0f}/s ({v / ref:.2f}×)", va="center",
                fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("rows per second (log scale)")
    ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=10)
    ax.set_xlim(left=min(values) / 3, right=max(values) * 8)
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def capped_seconds(db, sql: str, strategy: str | None, cap_s: float, results: list | None = None) -> float | None:
    """Seconds ``db.sql(sql, strategy=...)`` took, or None when it was cut off after ``cap_s``
    (DuckDB: interrupted; PostgreSQL: statement_timeout); its rows are appended to ``results``."""
    import threading

    import dbdl

    backend = db.backend
    if backend.name == "duckdb":
        timer = threading.Timer(cap_s, backend.con.interrupt)
        timer.start()
    else:
        backend.con.execute(f"SET statement_timeout = {int(cap_s * 1000)}")
    start = time.perf_counter()
    try:
        result = db.sql(sql, strategy=strategy)
        seconds = time.perf_counter() - start
        if results is not None:
            results.append(result.fetchall())
        return seconds
    except dbdl.Error as exc:
        if any(word in str(exc).lower() for word in ("interrupt", "statement timeout", "cancel")):
            return None
        raise
    finally:
        if backend.name == "duckdb":
            timer.cancel()
        else:
            backend.con.execute("SET statement_timeout = 0")


def results_dir(quick: bool) -> Path:
    """docs/bench/, or for a --quick smoke run a scratch folder (a smoke run's numbers are not results)."""
    import tempfile

    path = Path(tempfile.gettempdir()) / "dbdl-bench-quick" if quick else RESULTS
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_note() -> str:
    """The machine's load average (other jobs share these cores)."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def fixed_list(x: np.ndarray):
    """A 2-D array as an Arrow fixed-size list column of its own dtype (FLOAT[n] / BIGINT[n] on
    DuckDB, real[] / bigint[] on PostgreSQL)."""
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x).ravel()), x.shape[1])


def seconds_text(seconds: float) -> str:
    """``0.42 ms``, ``31.5 ms``, ``2.31 s``: three significant figures for the tables."""
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s" if seconds < 100 else f"{seconds:.0f} s"


def timed_rounds(runs: dict[str, Callable[[], "float | None"]],
                 rounds: Callable[[dict[str, "float | None"]], int]) -> dict[str, "float | None"]:
    """Each run's best time over interleaved rounds, as ``interleaved``, but a run times itself and
    returns its seconds, or None when it was cut off (then it is not run again); ``rounds`` gets
    the first round's times and says how many rounds there are in all."""
    best: dict[str, float | None] = {m: float("inf") for m in runs}
    total, k = 1, 0
    while k < total:
        for method, run in runs.items():
            if best[method] is not None:
                seconds = run()
                best[method] = None if seconds is None else min(best[method], seconds)
        k += 1
        if k == 1:
            total = rounds(dict(best))
    return best


def slowest(times: dict[str, "float | None"]) -> float:
    return max((t for t in times.values() if isinstance(t, float)), default=0.0)


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def call_timer(fn: Callable[[], object], results: dict, key: str) -> Callable[[], float]:
    """A run for ``timed_rounds``: ``fn()``'s seconds; its value goes to ``results[key]``."""
    def run() -> float:
        start = time.perf_counter()
        results[key] = fn()
        return time.perf_counter() - start
    return run


def sql_timer(db, sql: str, strategy: str, cap_s: float, results: dict) -> Callable[[], "float | None"]:
    """A run for ``timed_rounds``: the query's seconds under ``strategy`` (None: cut off at
    ``cap_s``); its one value (a ``SELECT sum(...)``) goes to ``results[strategy]``."""
    def run() -> float | None:
        got: list = []
        seconds = capped_seconds(db, sql, strategy, cap_s, got)
        if got:
            results[strategy] = int(got[0][0][0])
        return seconds
    return run


def print_and_markdown(title: str, header: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    """Print ``rows`` as a rich table; return them as markdown lines (``align``: "---" / "---:")."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in header:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"] + ["| " + " | ".join(r) + " |" for r in rows]


def mismatches(cell: dict) -> str:
    """`` (udf: Σ classes off by 3)`` where a method's class sum differs from raw onnxruntime's, else ""."""
    wrong = [f"{m}: Σ classes off by {abs(cell['sums'][m] - cell['sums']['raw']):,}"
             for m, ok in cell.get("agrees", {}).items() if not ok]
    return f" ({'; '.join(wrong)})" if wrong else ""


def progress_bar():
    """The benchmarks' rich progress bar (description, bar, done/total, elapsed)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def last_run(path: Path) -> dict:
    """The JSON a benchmark wrote last time ({"note": ..., "cells": [...]}), or no cells."""
    return json.loads(path.read_text()) if path.exists() else {"note": "", "cells": []}


def runs_note(cells: list[dict], earlier: str) -> str:
    """Each backend's run and the load it ran under (cells keep the run they were measured in;
    cells from before that was recorded fall back to the earlier run's note, ``earlier``)."""
    runs: dict[str, str] = {}
    for c in cells:
        runs.setdefault(c["backend"], c.get("run") or f"an earlier run ({earlier.removeprefix('Machine: ')})")
    return "; ".join(f"{backend} cells: {run}" for backend, run in runs.items())


def split_over_sessions(sessions: list, name: str, x: np.ndarray, batch: int) -> Callable[[], None]:
    """Raw onnxruntime as Spark and DuckDB spread a table over their cores: the rows of ``x`` cut in
    one contiguous share per single-thread session, each share run in batches of ``batch`` on its own
    Python thread (the first on this one)."""
    import threading

    rows = len(x)
    per = -(-rows // len(sessions))

    def part(session, lo: int, hi: int) -> None:
        for i in range(lo, hi, batch):
            session.run(None, {name: x[i:min(i + batch, hi)]})

    def run() -> None:
        workers = [threading.Thread(target=part, args=(s, k * per, min(rows, (k + 1) * per)))
                   for k, s in enumerate(sessions[1:], start=1)]
        for w in workers:
            w.start()
        part(sessions[0], 0, min(rows, per))
        for w in workers:
            w.join()

    return run
