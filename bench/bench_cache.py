"""The result cache on an ordinary model: re-running predict over rows of which 90% were scored
before, and over rows none of which were, against the same query without the cache, on DuckDB and
PostgreSQL (issue 14's targets: 90% hits ≤ 0.2× the uncached query, no hits ≤ 1.1×).

Per backend: ``CREATE TABLE … AS SELECT id, predict_array(m, feats) FROM t`` over DBDL_BENCH_ROWS
rows (default 200,000) × 128 features, an MLP 128-1024-1024-4 (~2.4 MFLOP per row), the planner's
choice of strategy. Each round runs, one after the other,
  - the query without the cache (the reference),
  - with the cache empty (every row a miss: what the cache costs),
  - with 90% of the rows scored before (the first 90% of ids, filled by an untimed query first),
  - with every row scored before;
each case's time in a round is divided by that round's reference (run just before it: the load of
a shared machine drifts), and the median over DBDL_BENCH_ROUNDS rounds (default 3) is reported,
with the best seconds of each case.
Every cached answer is compared with the reference's, bit for bit. After the timed rounds one
more run of each cached case is split into its steps (keys, the join with the cache, scoring the
misses, writing them, bookkeeping, the statement itself), in µs per row, by timing the backend's
calls (on DuckDB's one pass, "scoring misses" holds the stream: reading the rows, their digests,
the look-ups and the misses' scoring).
Writes docs/bench/cache.{md,json,png}. DBDL_BENCH_BACKENDS=duckdb,postgres picks.
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import RESULTS, database_url, features, machine, mlp, rows_env, timed  # noqa: E402

import dbdl  # noqa: E402

WIDTH = 128
MODEL = "MLP 128-1024-1024-4"
SIZES = [WIDTH, 1024, 1024, 4]
CASES = ["no cache", "cache, 0% hits", "cache, 90% hits", "cache, 100% hits"]
TARGETS = {"cache, 0% hits": 1.1, "cache, 90% hits": 0.2}
#: the steps of a cached query, by the statements planner/cachejoin.py runs (first match wins)
STEPS = (("statement", r"CREATE TABLE scores"),
         ("keys", r"(CREATE TEMP(ORARY)? TABLE|ANALYZE) dbdl_ck_"),
         ("look-up", r"(CREATE TEMP(ORARY)? TABLE|ANALYZE) dbdl_cr_|SELECT (pg_catalog\.)?count\(\*\) FROM dbdl_cr_"),
         ("writing misses", r"INSERT INTO dbdl\.result_cache|^commit"),
         ("scoring misses", r"dbdl_cs_|dbdl_cm_|^score_into|cache_fill|dbdl_mk"),
         ("bookkeeping", r"cache_entries|cache_record|UPDATE dbdl\.result_cache|model_catalog|resolve_model"))


def _step(call: str, sql: str) -> str:
    text = sql if call in ("execute", "fetchone", "fetchall", "execute_count", "run_query") else f"{call} {sql}"
    text = text.lstrip()
    for step, pattern in STEPS:
        if re.search(pattern, text, flags=re.IGNORECASE):
            return step
    return "other"


class StepTimer:
    """Seconds spent in the backend's calls, by step (an instrumented run, not a timed one)."""

    CALLS = ("execute", "fetchone", "fetchall", "execute_count", "analyze", "run_query", "score_into_temp_table",
             "commit")

    def __init__(self, backend):
        self.backend, self.seconds, self.depth = backend, collections.Counter(), 0
        self.saved = {name: getattr(backend, name) for name in self.CALLS if hasattr(backend, name)}

    def __enter__(self):
        for name, fn in self.saved.items():
            setattr(self.backend, name, self._wrap(name, fn))
        return self

    def __exit__(self, *exc):
        for name in self.saved:
            delattr(self.backend, name)

    def _wrap(self, name, fn):
        def call(*args, **kwargs):
            if self.depth:  # a call inside another (fetchone through fetchall) counts once
                return fn(*args, **kwargs)
            self.depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                self.seconds[_step(name, str(args[0]) if args else "")] += time.perf_counter() - start
        return call


def run_backend(backend: str, rows: int, rounds: int, folder: Path) -> tuple[list[dict], dict]:
    import torch

    with database_url(backend, folder, "dbdl_bench_cache") as url:
        db = dbdl.connect(url)
        print(f"[{backend}] loading {rows:,} rows …", flush=True)
        db.create_table("t", {"id": np.arange(rows), "feats": features(rows, WIDTH)}, replace=True)
        if backend == "postgres":
            db.sql("VACUUM ANALYZE t")
        seen = int(rows * 0.9)
        db.models.register("m", mlp(SIZES), example=torch.randn(1, WIDTH))

        def score(where: str = "") -> float:
            db.sql("DROP TABLE IF EXISTS scores")
            return timed(lambda: db.sql(f"CREATE TABLE scores AS SELECT id, predict_array('m', feats) AS p FROM t {where}"))

        def result():
            return db.sql("SELECT id, p FROM scores ORDER BY id").arrow()

        score(f"WHERE id < {min(rows, 1000)}")  # warm: the session, the planner's probes
        reference = None
        best = {case: float("inf") for case in CASES}
        same = True

        def case_run(case: str) -> float:
            nonlocal reference, same
            if case == "no cache":
                db.models.set_options("m", cache=False)
                seconds = score()
                reference = reference if reference is not None else result()
                same &= result().equals(reference)
                return seconds
            if case != "cache, 100% hits":  # the 100% case runs on what the 90% case left
                db.models.set_options("m", cache=True, cache_max_bytes=4 << 30)
                db.models.clear_cache("m")
                if case == "cache, 90% hits":
                    score(f"WHERE id < {seen}")  # untimed: 90% of the rows scored before
            seconds = score()
            same &= result().equals(reference)
            return seconds

        ratios: dict[str, list[float]] = {case: [] for case in CASES}
        for r in range(rounds):
            times = {case: case_run(case) for case in CASES}
            for case in CASES:
                best[case] = min(best[case], times[case])
                ratios[case].append(times[case] / times["no cache"])
            print(f"[{backend}] round {r + 1}: " + ", ".join(
                f"{c} {times[c]:.2f}s" if c == "no cache" else f"{c} {ratios[c][-1]:.3f}×" for c in CASES), flush=True)
        if not same:
            raise SystemExit("the cached query returned other rows than the uncached one")
        # one instrumented run per cached case: where its time goes
        steps = {}
        for case in CASES[1:]:
            if case != "cache, 100% hits":
                db.models.clear_cache("m")
                if case == "cache, 90% hits":
                    score(f"WHERE id < {seen}")
            db.sql("DROP TABLE IF EXISTS scores")
            with StepTimer(db.backend) as timer:
                total = timed(lambda: db.sql("CREATE TABLE scores AS SELECT id, predict_array('m', feats) AS p FROM t"))
            split = dict(timer.seconds)
            split["planning, other"] = max(0.0, total - sum(split.values())) + split.pop("other", 0.0)
            steps[case] = {k: v / rows * 1e6 for k, v in split.items()}  # µs per row of the table
            print(f"[{backend}] {case}, µs per row by step (no cache: {best['no cache'] / rows * 1e6:.1f}): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in steps[case].items()), flush=True)
        plan = db.explain("SELECT predict_array('m', feats) FROM t")[0]
        db.models.set_options("m", cache=False)
        db.close()
    # the ratio of a round is taken against that round's reference, run just before it (the load
    # of a shared machine drifts over a run); the median of the rounds is reported
    out = [{"backend": backend, "model": MODEL, "case": case, "seconds": best[case], "rows_per_s": rows / best[case],
            "ratio": float(np.median(ratios[case])), "ratios": ratios[case], "target": TARGETS.get(case)}
           for case in CASES]
    print(f"[{backend}] same rows as uncached: {same}; planner: {plan.choice}", flush=True)
    return out, steps


def main() -> None:
    import tempfile

    rows = rows_env(200_000)
    rounds = int(os.environ.get("DBDL_BENCH_ROUNDS", "3"))
    backends = os.environ.get("DBDL_BENCH_BACKENDS", "duckdb,postgres").split(",")
    results: list[dict] = []
    steps: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="dbdl-bench-cache-") as folder:
        for backend in backends:
            out, split = run_backend(backend, rows, rounds, Path(folder))
            results.extend(out)
            steps[backend] = split
    previous = RESULTS / "cache.json"
    if previous.exists():  # keep the other backends' rows of an earlier run at the same size
        old = json.loads(previous.read_text())
        if old.get("n_rows", rows) == rows and old.get("model") == MODEL:
            results = [r for r in old["rows"] if r["backend"] not in backends] + results
            steps = {**{b: s for b, s in old.get("steps", {}).items() if b not in backends}, **steps}
    write(results, steps, rows, rounds)


def write(results: list[dict], steps: dict[str, dict], rows: int, rounds: int) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"Result cache: CREATE TABLE … AS SELECT predict_array(…) over {rows:,} rows × {WIDTH} features, {MODEL}"
    table = Table(title=title)
    header = ("backend", "case", "seconds", "rows/s", "÷ no cache", "target", "met")
    for col in header:
        table.add_column(col, justify="left" if col in ("backend", "case") else "right")
    lines = [f"# {title}", "", (f"Machine: {machine()}. Strategy: the planner's choice. Ratios are times (lower is "
                                "better) against the same query without the cache in the same round, the median of "
                                f"{rounds} interleaved rounds in one run; seconds are each case's best."),
             "", "| " + " | ".join(header) + " |", "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        target = r.get("target")
        cells = (r["backend"], r["case"], f"{r['seconds']:.2f}", f"{r['rows_per_s']:,.0f}", f"{r['ratio']:.3f}",
                 f"≤ {target}" if target else "", ("yes" if r["ratio"] <= target else "no") if target else "")
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console().print(table)
    lines += ["", "Per round: " + "; ".join(f"{r['backend']} {r['case']} " + ", ".join(f"{x:.3f}" for x in r["ratios"])
                                          for r in results if r["case"] != "no cache" and "ratios" in r) + "."]
    if steps:
        names = list(dict.fromkeys(k for split in steps.values() for case in split.values() for k in case))
        lines += ["", ("Where a cached query's time goes: µs per row of the table, by step, in one instrumented "
                       "run per case after the timed ones (the uncached query's best: "
                       + ", ".join(f"{r['backend']} {r['seconds'] / rows * 1e6:.1f} µs" for r in results
                                   if r["case"] == "no cache") + "):"), "",
                  "| backend | case | " + " | ".join(names) + " |", "| --- | --- |" + " ---: |" * len(names)]
        for backend, split in steps.items():
            for case, parts in split.items():
                lines.append(f"| {backend} | {case} | " + " | ".join(f"{parts.get(n, 0.0):.3f}" for n in names) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cache.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "cache.json").write_text(json.dumps({"title": title, "model": MODEL, "n_rows": rows, "rounds": rounds,
                                                    "rows": results, "steps": steps}, indent=2))
    plot(results, title)


def plot(results: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r["backend"] for r in results))
    colors = ["#999999", "#dd8452", "#4c72b0", "#55a868"]
    fig, ax = plt.subplots(figsize=(10.5, 0.9 * len(groups) + 1.6))
    height = 0.8 / len(CASES)
    for i, case in enumerate(CASES):
        values = [next((r["ratio"] for r in results if r["backend"] == g and r["case"] == case), 0) for g in groups]
        ys = [k + i * height for k in range(len(groups))]
        bars = ax.barh(ys, values, height=height, color=colors[i], label=case)
        for bar, v in zip(bars, values):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.2f}×", va="center", fontsize=8)
    ax.set_yticks([k + 0.4 - height / 2 for k in range(len(groups))], groups, fontsize=8)
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
