"""SQL predict on Spark (local mode) against raw onnxruntime and DuckDB on the same data (issue 15).

1,000,000 rows x 64 float features (an ``array<float>`` column of a parquet table), an MLP
64-256-256-10, as the other predict benchmarks. Each Spark master runs in its own subprocess (a
process hosts one SparkContext): ``local[1]``, then ``local[2]``. In each, interleaved rounds time

* Spark ``SELECT sum(predict_class('mlp', feats)) FROM t`` and ``CREATE TABLE scores USING parquet
  AS SELECT id, predict_array('mlp', feats) AS y FROM t`` (``strategy='udf'``: Arrow UDFs, one
  onnxruntime thread per task, one task per core);
* raw onnxruntime on the same rows as an in-memory numpy array with the same number of cores, at
  its best arrangement: one session of N threads (batches of 10,000 — Spark's Arrow batch — and
  131,072 rows), or, for N > 1, N single-thread sessions on N Python threads (Spark's arrangement);
* DuckDB (the embedded backend) on the same rows (a ``FLOAT[64]`` table read from the same parquet
  file) with the same number of threads: the same two statements (a temp table for the second).

Every statement runs once untimed first (UDF registered, model broadcast, Python workers up: only
steady state is timed); then each method keeps its best of ``--repeats`` rounds. Spark's class sum
is checked against onnxruntime's and DuckDB's. The scaling ratio is local[2] ÷ local[1] rows/s
(target ≥ 1.5). Last, in the ``local[2]`` process: relation-centric (the model compiled to Spark
SQL, ``strategy='relation'``) against the UDF on the first ``--relation-rows`` rows (default 20,000:
the compiled MLP joins every row with 84k weights), each cut off after ``--relation-cap`` seconds;
where the strategy cannot run, the table says why.

Usage: python bench/bench_predict_spark.py [--rows N] [--quick] [--repeats 3] [--relation-rows N]
[--masters local[1],local[2]]; rows also from $DBDL_BENCH_ROWS. ``--quick`` is a smoke run (50,000
rows, 2,000 for relation, 2 repeats) written into a scratch folder, not docs/bench/. Writes
docs/bench/predict_spark.{md,json,png}. Needs pyspark and Java 17 (skipped, with a message, without).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import (load_note, machine, print_and_markdown, progress_bar, results_dir, save_figure,  # noqa: E402
                    split_over_sessions)

WIDTH = 64
SIZES = [WIDTH, 256, 256, 10]
MODEL = "MLP 64-256-256-10"
TARGET_SCALING = 1.5
SPARK_BATCH = 10_000  # spark.sql.execution.arrow.maxRecordsPerBatch, Spark's default
#: row groups of the parquet file, one split of Spark's scan each: equal shares for 1 or 2 cores (Spark's
#: own split of a 256 MB file, 128 MB, gives 2-3, unequal), and few: each task has a fixed cost (--splits)
SPLITS = 4
QUERIES = {  # key -> (label, Spark statement, DuckDB statement)
    "class": ("predict_class → aggregate",
              "SELECT sum(predict_class('mlp', feats)) FROM t",
              "SELECT sum(predict_class('mlp', feats)) FROM t"),
    "array": ("predict_array → table",
              "CREATE TABLE scores USING parquet AS SELECT id, predict_array('mlp', feats) AS y FROM t",
              "CREATE OR REPLACE TEMP TABLE scores AS SELECT id, predict_array('mlp', feats) AS y FROM t"),
}
REL_SQL = "SELECT sum(predict_class('mlp', feats)) FROM t_rel"
EVENT = "@@bench "  # a worker's progress line on stdout, read by the parent


def cores_of(master: str) -> int:
    inner = master[master.index("[") + 1:master.index("]")] if "[" in master else "*"
    return (os.cpu_count() or 1) if inner == "*" else int(inner)


# -- the worker: one Spark master in its own process ------------------------------------------------


def emit(**event) -> None:
    print(EVENT + json.dumps(event), flush=True)


def best_rounds(methods: dict, repeats: int, step) -> dict[str, float]:
    """Each method's best seconds over ``repeats`` interleaved rounds (a method returns its seconds)."""
    best = {k: float("inf") for k in methods}
    for _ in range(repeats):
        for label, run in methods.items():
            best[label] = min(best[label], run())
            step(label)
    return best


def raw_methods(onnx_bytes: bytes, x: np.ndarray, cores: int) -> dict:
    """Raw onnxruntime arrangements on ``x`` with ``cores`` threads in all; each returns its seconds."""
    from dbdl_udf.runtime import make_session

    rows = len(x)
    pooled = make_session(onnx_bytes, threads=cores)
    singles = [make_session(onnx_bytes, threads=1) for _ in range(cores)] if cores > 1 else []
    name = pooled.get_inputs()[0].name

    def one_session(batch: int):
        def run() -> float:
            start = time.perf_counter()
            for i in range(0, rows, batch):
                pooled.run(None, {name: x[i:i + batch]})
            return time.perf_counter() - start
        return run

    def session_per_core(batch: int):
        work = split_over_sessions(singles, name, x, batch)

        def run() -> float:
            start = time.perf_counter()
            work()
            return time.perf_counter() - start
        return run

    methods = {f"raw, one session of {cores} thread{'s' if cores > 1 else ''}, batch {b:,}": one_session(b)
               for b in (SPARK_BATCH, 131_072)}
    if singles:
        methods[f"raw, {cores} single-thread sessions, batch {SPARK_BATCH:,}"] = session_per_core(SPARK_BATCH)

    def class_sum() -> int:
        return int(sum(int(np.argmax(pooled.run(None, {name: x[i:i + 131_072]})[0], axis=1).sum())
                       for i in range(0, rows, 131_072)))
    return methods, class_sum


def sql_literal(text: str) -> str:
    import sqlglot.expressions as exp

    return exp.Literal.string(text).sql(dialect="spark")


def spark_cap(db, seconds: float, fired: list):
    """A timer that cancels every running Spark job after ``seconds`` (the relation-centric cut-off)."""
    def cancel() -> None:
        fired.append(True)
        db.backend.spark.sparkContext.cancelAllJobs()

    timer = threading.Timer(seconds, cancel)
    timer.daemon = True
    return timer


def relation_part(db, args) -> dict:
    """Relation-centric against the UDF on Spark, on the first ``--relation-rows`` rows."""
    rows = args.relation_rows
    out: dict = {"rows": rows, "seconds": {}, "notes": {}, "sums": {}}
    db.backend.execute(f"CREATE TABLE t_rel USING parquet AS SELECT * FROM t WHERE id < {int(rows)}")
    db.backend.execute("ANALYZE TABLE t_rel COMPUTE STATISTICS")
    try:
        out["planner"] = db.explain(REL_SQL)[0].choice
    except Exception as exc:  # noqa: BLE001 - the planner's view is a note, not a result
        out["planner"] = f"explain failed: {type(exc).__name__}"
    for strategy in ("udf", "relation"):
        emit(msg=f"relation part: {strategy} on {rows:,} rows (warm run)")
        best = float("inf")
        for k in range(1 + args.relation_repeats):  # the first run is the untimed warm-up
            fired: list = []
            timer = spark_cap(db, args.relation_cap, fired)
            timer.start()
            start = time.perf_counter()
            try:
                value = db.sql(REL_SQL, strategy=strategy).fetchall()[0][0]
            except Exception as exc:  # noqa: BLE001 - reported in the table, not fatal
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                out["notes"][strategy] = (f"cut off at {args.relation_cap:.0f} s" if fired
                                          else f"not available: {type(exc).__name__}: {text[:200]}")
                break
            finally:
                timer.cancel()
            seconds = time.perf_counter() - start
            out["sums"][strategy] = int(value)
            if k:
                best = min(best, seconds)
            elif seconds > args.relation_cap / 2:
                best = seconds  # too slow to repeat: the warm run is the only one (said in the note)
                out["notes"][strategy] = "one run (the warm-up was over half the cut-off)"
                break
        if best < float("inf"):
            out["seconds"][strategy] = best
    if len(out["sums"]) == 2:
        out["agrees"] = out["sums"]["udf"] == out["sums"]["relation"]
    return out


def timed_explain(db, sql: str) -> float:
    """Seconds dbdl takes to plan ``sql`` on Spark (pin, probe, estimate) without running it."""
    start = time.perf_counter()
    db.explain(sql, strategy="udf")
    return time.perf_counter() - start


def worker(args) -> None:
    import pyarrow.parquet as pq

    import dbdl

    master, cores = args.worker, cores_of(args.worker)
    parquet, onnx_path = args.parquet, args.onnx
    onnx_bytes = Path(onnx_path).read_bytes()
    result: dict = {"master": master, "cores": cores, "load_start": load_note()}
    total_steps = 2 + args.repeats * (2 * len(QUERIES) + (3 if cores > 1 else 2)) + (1 if args.relation else 0)
    emit(total=total_steps, msg=f"{master}: starting Spark and loading {args.rows:,} rows")

    table = pq.read_table(parquet)
    x = table.column("feats").combine_chunks().values.to_numpy().reshape(-1, WIDTH)
    del table

    warehouse = tempfile.mkdtemp(prefix="dbdl-bench-spark-")
    conf = {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": str(cores),
            "spark.default.parallelism": str(cores), "spark.driver.memory": "4g",
            # a split of the parquet scan per row group (--splits tasks): every core gets an equal share
            "spark.sql.files.maxPartitionBytes": str(-(-os.path.getsize(parquet) // args.splits) + 1024)}
    db = dbdl.connect(f"spark://{master}", warehouse=warehouse, conf=conf)
    db.models.register("mlp", onnx_bytes)
    db.backend.execute(f"CREATE TABLE t USING parquet LOCATION {sql_literal(parquet)}")
    db.backend.execute("ANALYZE TABLE t COMPUTE STATISTICS")
    partitions = db.backend.spark.table("t").rdd.getNumPartitions()

    duck = dbdl.connect("duckdb:///:memory:")
    duck.backend.con.execute(f"SET threads = {cores}")
    duck.models.register("mlp", onnx_bytes)
    duck.backend.con.execute(f"CREATE TABLE t AS SELECT id, CAST(feats AS FLOAT[{WIDTH}]) AS feats "
                             f"FROM read_parquet({sql_literal(parquet)})")
    emit(advance=1, msg=f"{master}: {partitions} Spark partitions; warm runs")

    def spark_run(key: str):
        sql = QUERIES[key][1]

        def run() -> float:
            if key == "array":
                db.backend.execute("DROP TABLE IF EXISTS scores")  # untimed: the statement creates it
            start = time.perf_counter()
            got = db.sql(sql, strategy="udf")
            if key == "class":
                result.setdefault("sums", {})["spark"] = int(got.fetchall()[0][0])
            return time.perf_counter() - start
        return run

    def duck_run(key: str):
        sql = QUERIES[key][2]

        def run() -> float:
            start = time.perf_counter()
            got = duck.sql(sql)
            if key == "class":
                result.setdefault("sums", {})["duckdb"] = int(got.fetchall()[0][0])
            return time.perf_counter() - start
        return run

    raw, class_sum = raw_methods(onnx_bytes, x, cores)
    methods = {**raw, **{f"spark {k}": spark_run(k) for k in QUERIES}, **{f"duckdb {k}": duck_run(k) for k in QUERIES}}
    for run in methods.values():
        run()  # warm: UDFs registered, the model broadcast, Python workers and sessions up
    result.setdefault("sums", {})["raw"] = class_sum()
    emit(advance=1, msg=f"{master}: timing {args.repeats} interleaved rounds")
    best = best_rounds(methods, args.repeats, lambda label: emit(advance=1))
    rows = len(x)
    result["raw"] = {k: rows / best[k] for k in raw}
    result["spark"] = {k: rows / best[f"spark {k}"] for k in QUERIES}
    result["duckdb"] = {k: rows / best[f"duckdb {k}"] for k in QUERIES}
    result["partitions"] = partitions
    result["plan_s"] = min(timed_explain(db, QUERIES["class"][1]) for _ in range(args.repeats))
    result["arrow_batch"] = int(db.backend.spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch", str(SPARK_BATCH)))
    db.backend.execute("DROP TABLE IF EXISTS scores")
    duck.close()
    methods = raw = class_sum = None  # their sessions' idle thread pools must not compete with what runs next
    if args.relation:
        result["relation"] = relation_part(db, args)
        emit(advance=1)
    result["load_end"] = load_note()
    Path(args.out).write_text(json.dumps(result, indent=2))
    db.backend.spark.sparkContext.stop()
    db.close()
    shutil.rmtree(warehouse, ignore_errors=True)


# -- the parent: data, model, one subprocess per master, the report ---------------------------------


def write_data(path: Path, rows: int, splits: int = SPLITS) -> None:
    """``rows`` x WIDTH standard-normal float32 features (and ids) as one parquet file of ``splits`` row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.int64()), ("feats", pa.list_(pa.float32()))])
    chunk = -(-rows // splits)
    with pq.ParquetWriter(path, schema, compression="snappy") as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            x = np.random.default_rng(start).standard_normal((n, WIDTH), dtype=np.float32)
            feats = pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * WIDTH, WIDTH, dtype=np.int32)),
                                             pa.array(x.ravel()))
            writer.write_table(pa.table({"id": np.arange(start, start + n, dtype=np.int64), "feats": feats},
                                        schema=schema), row_group_size=chunk)


def write_model(path: Path) -> None:
    import torch

    import dbdl
    from common import mlp

    db = dbdl.connect("duckdb:///:memory:")
    db.models.register("mlp", mlp(SIZES), example=torch.randn(1, WIDTH))
    path.write_bytes(db.models.model_bytes("mlp"))
    db.close()


def spark_missing() -> str | None:
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        return f"pyspark is not installed ({exc}): pip install 'dbdl[spark]'"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java (java on PATH or JAVA_HOME): Spark needs Java 17"
    return None


def run_master(master: str, args, folder: Path, progress) -> dict:
    out = folder / f"result-{cores_of(master)}.json"
    log = folder / f"spark-{cores_of(master)}.log"
    command = [sys.executable, __file__, "--worker", master, "--parquet", str(folder / "data.parquet"),
               "--onnx", str(folder / "mlp.onnx"), "--out", str(out), "--rows", str(args.rows),
               "--repeats", str(args.repeats), "--splits", str(args.splits), "--relation-rows", str(args.relation_rows),
               "--relation-repeats", str(args.relation_repeats), "--relation-cap", str(args.relation_cap)]
    if master == args.masters[-1] and args.relation_rows > 0:
        command.append("--relation")
    env = dict(os.environ)
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join([str(root / "python"), str(root / "udf"), env.get("PYTHONPATH", "")])
    task = progress.add_task(master, total=None)
    with open(log, "w") as stderr:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        for line in child.stdout:
            if not line.startswith(EVENT):
                progress.console.print(line.rstrip())
                continue
            event = json.loads(line[len(EVENT):])
            if "total" in event:
                progress.update(task, total=event["total"])
            if event.get("advance"):
                progress.advance(task, event["advance"])
            if event.get("msg"):
                progress.console.print(event["msg"])
        code = child.wait()
    if code != 0 or not out.exists():
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"the {master} run failed (exit {code}); the end of its log ({log}):\n{tail}")
    return json.loads(out.read_text())


def rate(value: float | None) -> str:
    return f"{value:,.0f}" if isinstance(value, (int, float)) else "—"


def report(data: dict, out: Path) -> None:
    runs = data["runs"]
    rows = data["rows"]
    title = f"Spark SQL predict, {rows:,} rows × {WIDTH} features (array<float>), {MODEL}"
    lines = [f"# {title}", "", data["note"], "",
             ("Rows per second, each the best of the interleaved rounds after one untimed run; raw onnxruntime "
              "is the best of its arrangements on the same cores (below); DuckDB runs the same statement with "
              "the same number of threads on the same rows."), ""]
    main_rows = []
    for run in runs:
        raw_best = max(run["raw"].values())
        for key, (label, _, _) in QUERIES.items():
            spark, duck = run["spark"][key], run["duckdb"][key]
            main_rows.append([run["master"], label, rate(spark), rate(raw_best), f"{spark / raw_best:.3f}",
                              rate(duck), f"{spark / duck:.3f}"])
    lines += print_and_markdown(title, ["master", "query", "Spark rows/s", "raw onnxruntime rows/s (same cores)",
                                        "Spark ÷ raw", "DuckDB rows/s (same threads)", "Spark ÷ DuckDB"],
                                ["---", "---", "---:", "---:", "---:", "---:", "---:"], main_rows)
    by_cores = {run["cores"]: run for run in runs}
    if 1 in by_cores and 2 in by_cores:
        one, two = by_cores[1], by_cores[2]
        raw_ratio = max(two["raw"].values()) / max(one["raw"].values())
        scale_rows = []
        for key, (label, _, _) in QUERIES.items():
            ratio = two["spark"][key] / one["spark"][key]
            scale_rows.append([label, rate(one["spark"][key]), rate(two["spark"][key]), f"**{ratio:.2f}×**",
                               f"≥ {TARGET_SCALING}×", "yes" if ratio >= TARGET_SCALING else "no",
                               f"{raw_ratio:.2f}×", f"{two['duckdb'][key] / one['duckdb'][key]:.2f}×"])
        lines += ["", "Scaling, local[2] ÷ local[1] (the same rows, the same run):", ""]
        lines += print_and_markdown("scaling local[2] ÷ local[1]",
                                    ["query", "local[1] rows/s", "local[2] rows/s", "local[2] ÷ local[1]", "target",
                                     "met?", "raw onnxruntime 2 ÷ 1 core", "DuckDB 2 ÷ 1 thread"],
                                    ["---", "---:", "---:", "---:", "---:", "---", "---:", "---:"], scale_rows)
    rel = next((run["relation"] for run in runs if "relation" in run), None)
    if rel is not None:
        rel_row = [f"{rel['rows']:,}"]
        for strategy in ("udf", "relation"):
            seconds = rel["seconds"].get(strategy)
            note = rel["notes"].get(strategy, "—")
            rel_row.append(rate(rel["rows"] / seconds) if seconds else note if len(note) <= 100 else note[:98] + "…")
        u, r = rel["seconds"].get("udf"), rel["seconds"].get("relation")
        rel_row.append(f"{u / r:.3g}" if u and r else "—")
        rel_row.append({True: "yes", False: "NO", None: "—"}[rel.get("agrees")])
        rel_row.append(rel.get("planner", "—"))
        lines += ["", (f"Relation-centric vs UDF on Spark ({next(r['master'] for r in runs if 'relation' in r)}, "
                       f"`{REL_SQL}`, the first {rel['rows']:,} rows of the same table):"), ""]
        lines += print_and_markdown("relation-centric vs UDF on Spark",
                                    ["rows", "UDF rows/s", "relation rows/s", "relation ÷ UDF (rows/s)",
                                     "class sums agree", "planner's choice"],
                                    ["---:", "---:", "---:", "---:", "---", "---"], [rel_row])
    detail = []
    for run in runs:
        sums = run.get("sums", {})
        agree = "yes" if len(set(sums.values())) == 1 else f"NO ({sums})"
        for label, value in run["raw"].items():
            detail.append([run["master"], label, rate(value), agree])
    lines += ["", "Raw onnxruntime arrangements (the best is the reference); class sums: Spark = DuckDB = raw:", ""]
    lines += print_and_markdown("raw onnxruntime arrangements", ["master", "arrangement", "rows/s", "class sums agree"],
                                ["---", "---", "---:", "---"], detail)
    (out / "predict_spark.md").write_text("\n".join(lines) + "\n")
    (out / "predict_spark.json").write_text(json.dumps(data, indent=2))
    plot(data, out / "predict_spark.png", title)
    for run in runs:
        for key, (label, _, _) in QUERIES.items():
            print(f"{run['master']} Spark {label}: {run['spark'][key] / max(run['raw'].values()):.3f} of raw "
                  f"onnxruntime, {run['spark'][key] / run['duckdb'][key]:.3f} of DuckDB")
    print(f"wrote {out / 'predict_spark.md'}")


def plot(data: dict, path: Path, title: str) -> None:
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(6.2 * len(runs), 3.6), squeeze=False, sharex=True)
    for ax, run in zip(axes[0], runs):
        raw_best = max(run["raw"].values())
        bars = [("raw onnxruntime (best)", raw_best, "#999999")]
        for key, (label, _, _) in QUERIES.items():
            bars.append((f"DuckDB {label}", run["duckdb"][key], "#55a868"))
            bars.append((f"Spark {label}", run["spark"][key], "#4c72b0"))
        bars = bars[::-1]
        drawn = ax.barh([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
        for bar, (_, v, _) in zip(drawn, bars):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:,.0f}/s ({v / raw_best:.2f}×)",
                    va="center", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("rows per second (log scale)")
        ax.set_title(f"{run['master']} ({run['cores']} core{'s' if run['cores'] > 1 else ''})", fontsize=10)
        values = [b[1] for b in bars]
        ax.set_xlim(left=min(values) / 3, right=max(values) * 10)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle("\n".join(textwrap.wrap(title, 90)), fontsize=10)
    save_figure(fig, path)


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=int(os.environ.get("DBDL_BENCH_ROWS") or
                                                        (50_000 if quick else 1_000_000)))
    parser.add_argument("--quick", action="store_true", help="a smoke run: 50,000 rows, into a scratch folder")
    parser.add_argument("--repeats", type=int, default=2 if quick else 3)
    parser.add_argument("--splits", type=int, default=SPLITS, help="row groups of the table = Spark tasks")
    parser.add_argument("--masters", type=lambda s: s.split(","), default=["local[1]", "local[2]"])
    parser.add_argument("--relation-rows", type=int, default=2_000 if quick else 20_000,
                        help="rows of the relation-centric vs UDF comparison (0: skip it)")
    parser.add_argument("--relation-repeats", type=int, default=1 if quick else 2)
    parser.add_argument("--relation-cap", type=float, default=300.0, help="seconds before a relation run is cut off")
    # the worker's own arguments (one master in a subprocess)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--parquet", help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--relation", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    missing = spark_missing()
    if missing:
        print(f"bench_predict_spark: skipped — {missing}")
        return
    args.relation_rows = min(args.relation_rows, args.rows)
    out = results_dir(args.quick)
    start_note = load_note()
    with tempfile.TemporaryDirectory(prefix="dbdl-bench-spark-") as tmp:
        folder = Path(tmp)
        with progress_bar() as progress:
            progress.console.print(f"writing {args.rows:,} rows × {WIDTH} to parquet, exporting the {MODEL} …")
            write_data(folder / "data.parquet", args.rows, args.splits)
            write_model(folder / "mlp.onnx")
            runs = [run_master(master, args, folder, progress) for master in args.masters]
    note = (f"Machine: {machine()}. One subprocess per master (one SparkContext each), run one after the other; "
            f"Spark: {runs[-1]['partitions']} partitions of the parquet scan, Arrow batches of "
            f"{runs[-1]['arrow_batch']:,} rows, one onnxruntime thread per task; best of {args.repeats} interleaved "
            f"rounds; dbdl's planning (db.explain) of the aggregate: "
            + ", ".join(f"{r['master']} {r['plan_s'] * 1000:.0f} ms" for r in runs)
            + f" of each statement's time; {start_note} at the start, {load_note()} at the end.")
    report({"rows": args.rows, "width": WIDTH, "model": MODEL, "repeats": args.repeats, "note": note,
            "quick": args.quick, "runs": runs}, out)


if __name__ == "__main__":
    main(sys.argv[1:])
