"""The input forms of issue 11, end to end, against raw onnxruntime on in-memory numpy arrays.

Three workloads, each with one model and one set of rows, on DuckDB and on PostgreSQL:

* **images**: CIFAR-sized 3x32x32 pixels (0..255) and a small CNN exported by a plain
  ``torch.onnx.export(m, torch.randn(1, 3, 32, 32), f)`` (batch fixed at 1; registration makes it
  symbolic), fed as ``FLOAT[3072]``, ``FLOAT[32][32][3]`` (nested), ``UTINYINT[3072]`` and ``BLOB``
  on DuckDB, as ``real[]``, float32 ``bytea`` and uint8 ``bytea`` on PostgreSQL;
* **token lists** of 5..120 ids (ragged ``INTEGER[]`` / ``integer[]``) for an ``EmbeddingBag`` +
  ``Linear`` text model (flat tokens + offsets, the AG News tutorial's model) and for a padded
  sequence model (``Embedding(padding_idx=0)``, masked mean, ``Linear``; ``pad_id=0``);
* **int64 ids**: 32 ids per row for an ``Embedding`` model, fed from ``BIGINT[32]``,
  ``INTEGER[32]`` and ``FLOAT[32]``.

The reference of each workload is onnxruntime alone on the same model (the stored, possibly
rewritten, bytes) and the same rows, already collated in memory (padded / flat+offsets batches
of 2,048 rows, DuckDB's chunk size), with as many threads as the database uses: all cores for
DuckDB, one for PostgreSQL (a backend process is single-threaded). Methods are timed in
interleaved rounds, each keeping its best. Every SQL result is checked against the reference's
classes. Rows: DBDL_BENCH_ROWS scales every workload (default 20,000 images, 50,000 token lists,
100,000 id rows on DuckDB; PostgreSQL uses fewer, and row-at-a-time calls fewer still).
DBDL_BENCH_BACKENDS=duckdb|postgres runs one backend and keeps the other's rows.
Writes docs/bench/inputs.{md,json,png}.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(__file__))
from common import RESULTS, database_url, interleaved, machine, rows_env, timed  # noqa: E402

import dbdl  # noqa: E402
from dbdl_udf.runtime import make_session  # noqa: E402

VOCAB = 95_000
CHUNK = 2048
IDS = 32


# -- models: plain torch exports --------------------------------------------------------------------

def _export(module, args, **kw) -> bytes:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, buf, dynamo=False, **kw)
    return buf.getvalue()


def cnn_model() -> bytes:
    import torch
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    return _export(m, (torch.randn(1, 3, 32, 32) * 128,))  # the plain export: batch fixed at 1


def text_model() -> bytes:
    import torch
    from torch import nn

    class TextClassificationModel(nn.Module):  # the AG News tutorial's model
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.embedding = nn.EmbeddingBag(VOCAB, 64, mode="mean")
            self.fc = nn.Linear(64, 4)

        def forward(self, text, offsets):
            return self.fc(self.embedding(text, offsets))

    return _export(TextClassificationModel(), (torch.tensor([1, 2, 3]), torch.tensor([0, 2])),
                   input_names=["text", "offsets"], output_names=["y"],
                   dynamic_axes={"text": {0: "T"}, "offsets": {0: "B"}, "y": {0: "B"}})


def sequence_model(dynamic_length: bool = True) -> bytes:
    import torch
    from torch import nn

    class Seq(nn.Module):  # Embedding with a pad id, mean over the real tokens, Linear
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(1)
            self.embedding = nn.Embedding(VOCAB, 64, padding_idx=0)
            self.fc = nn.Linear(64, 4)

        def forward(self, ids):
            mask = (ids != 0).unsqueeze(-1).float()
            return self.fc((self.embedding(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0))

    axes = {"ids": {0: "n", 1: "l"}, "y": {0: "n"}} if dynamic_length else {"ids": {0: "n"}, "y": {0: "n"}}
    return _export(Seq(), (torch.randint(1, VOCAB, (2, IDS)),), input_names=["ids"], output_names=["y"],
                   dynamic_axes=axes)


# -- data -------------------------------------------------------------------------------------------

def images(rows: int) -> np.ndarray:
    """uint8 pixels [rows, 3, 32, 32] (smooth-ish, as photos are, so classes vary)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(rows, 3, 1, 1))
    noise = rng.integers(-60, 61, size=(rows, 3, 32, 32))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def text_workloads(db, lists) -> tuple:
    """Registers the two text models in ``db`` (the padded one with pad_id 0); their workloads as
    (key, model name, the raw reference's pre-collated batches, title)."""
    db.models.register("news", text_model())
    db.models.register("seq", sequence_model())
    db.models.set_options("seq", pad_id=0)
    return (("text_offsets", "news", offsets_batches(lists),
             "Token lists 5–120 ids, EmbeddingBag(95k, 64) + Linear (flat tokens + offsets)"),
            ("text_padded", "seq", padded_batches(lists),
             "Token lists 5–120 ids, Embedding(95k, 64) + masked mean + Linear (padded, pad_id 0)"))


def token_lists(rows: int) -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    lengths = rng.integers(5, 121, size=rows)
    flat = rng.integers(1, VOCAB, size=int(lengths.sum())).astype(np.int32)
    return np.split(flat, np.cumsum(lengths)[:-1])


def ragged_arrow(lists: list[np.ndarray]) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in lists])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(lists)))


def fixed_arrow(x: np.ndarray, arrow_type=None) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(x).reshape(-1), type=arrow_type)
    return pa.FixedSizeListArray.from_arrays(flat, int(np.prod(x.shape[1:])))


def nested_arrow(x: np.ndarray) -> pa.Array:
    """[rows, 3, 32, 32] -> fixed_size_list<fixed_size_list<fixed_size_list<float, 32>, 32>, 3>."""
    arr = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
    for size in reversed(x.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    return arr


def offsets_batches(lists: list[np.ndarray]) -> list[dict]:
    out = []
    for i in range(0, len(lists), CHUNK):
        part = lists[i:i + CHUNK]
        out.append({"text": np.concatenate(part).astype(np.int64),
                    "offsets": np.concatenate([[0], np.cumsum([len(r) for r in part[:-1]])]).astype(np.int64)})
    return out


def padded_batches(lists: list[np.ndarray]) -> list[dict]:
    out = []
    for i in range(0, len(lists), CHUNK):
        part = lists[i:i + CHUNK]
        ids = np.zeros((len(part), max(len(r) for r in part)), dtype=np.int64)
        for j, r in enumerate(part):
            ids[j, :len(r)] = r
        out.append({"ids": ids})
    return out


def dense_batches(name: str, x: np.ndarray, batch: int) -> list[dict]:
    return [{name: x[i:i + batch]} for i in range(0, len(x), batch)]


# -- timing -----------------------------------------------------------------------------------------

def best_of_2(fn) -> float:
    return min(timed(fn), timed(fn))


def raw_runner(session, batches: list[dict]):
    out_name = session.get_outputs()[0].name
    return lambda: [session.run([out_name], b)[0] for b in batches]


def raw_classes(session, batches: list[dict]) -> np.ndarray:
    out_name = session.get_outputs()[0].name
    return np.concatenate([session.run([out_name], b)[0].argmax(axis=1) for b in batches])


class Workload:
    """One model, its rows, the reference batches, and the SQL methods measured on them."""

    def __init__(self, key: str, title: str) -> None:
        self.key, self.title, self.rows = key, title, []

    def add(self, backend: str, method: str, rows: int, seconds: float, *, reference: bool = False,
            agrees: bool | None = None, note: str = "") -> None:
        self.rows.append({"workload": self.key, "title": self.title, "backend": backend, "method": method,
                          "rows": rows, "rows_per_s": rows / seconds, "reference": reference,
                          "agrees": agrees, "note": note})


def check(classes_sum: int, reference: np.ndarray, rows: int) -> bool:
    """A SQL method agrees when the sum of its classes over the rows is the reference's."""
    return int(classes_sum) == int(reference[:rows].sum())


# -- DuckDB -----------------------------------------------------------------------------------------

def run_duckdb(scale: float, folder: Path) -> list[dict]:
    threads = os.cpu_count() or 1
    out: list[dict] = []
    with database_url("duckdb", folder, "bench_inputs") as url:
        db = dbdl.connect(url)
        con = db.backend.con
        results: dict = {}  # (model, column) -> the sum of the classes its last timed run returned

        def load(name: str, columns: dict) -> None:
            con.register("bench_src", pa.table(columns))
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM bench_src")
            con.unregister("bench_src")

        def sql_class_sum(model: str, column: str, table: str):
            def go():
                results[(model, column)] = db.sql(f"SELECT sum(predict_class('{model}', {column})) FROM {table}").fetchall()[0][0]
            return go

        # images
        n = int(20_000 * scale)
        print(f"DuckDB: {n:,} images …", flush=True)
        px = images(n)
        db.models.register("cnn", cnn_model())
        info = db.models.get("cnn")
        load("img", {"id": np.arange(n), "f": fixed_arrow(px.astype(np.float32)), "nested": nested_arrow(px),
                     "u8": fixed_arrow(px, pa.uint8()), "blob": pa.array([r.tobytes() for r in px], pa.binary())})
        con.execute("CREATE OR REPLACE TABLE img AS SELECT id, CAST(f AS FLOAT[3072]) AS f, nested, "
                    "CAST(u8 AS UTINYINT[3072]) AS u8, blob FROM img")
        print("  columns:", con.execute("SELECT typeof(f), typeof(nested), typeof(u8), typeof(blob) FROM img LIMIT 1")
              .fetchone(), "| rewrites:", [r.kind for r in info.rewrites], flush=True)
        session = make_session(db.models.model_bytes("cnn"), threads=threads)
        xname = session.get_inputs()[0].name
        xf = px.astype(np.float32)
        ref = raw_classes(session, dense_batches(xname, xf, CHUNK))
        w = Workload("images", "CIFAR-sized images 3×32×32, small CNN (plain torch.onnx.export, batch 1)")
        methods = {f"raw onnxruntime, batch {b}": raw_runner(session, dense_batches(xname, xf, b)) for b in (CHUNK, 16384)}
        forms = {"FLOAT[3072]": "f", "FLOAT[32][32][3] (nested)": "nested", "UTINYINT[3072]": "u8",
                 "BLOB (uint8 bytes)": "blob"}
        for label, col in forms.items():
            methods[f"sum(predict_class(…)), {label}"] = sql_class_sum("cnn", col, "img")
        _finish_duckdb(w, methods, n, ref, lambda label: results[("cnn", forms[label.split(", ", 1)[1]])])
        out += w.rows
        session = None
        con.execute("DROP TABLE img")

        # token lists
        n = int(50_000 * scale)
        lists = token_lists(n)
        print(f"DuckDB: {n:,} token lists ({sum(len(r) for r in lists) / n:.0f} ids a row on average) …", flush=True)
        load("docs", {"id": np.arange(n), "tokens": ragged_arrow(lists)})
        for key, model, batches, title in text_workloads(db, lists):
            session = make_session(db.models.model_bytes(model), threads=threads)
            ref = raw_classes(session, batches)
            w = Workload(key, title)
            methods = {"raw onnxruntime, pre-collated batches of 2048": raw_runner(session, batches),
                       "sum(predict_class(…)), INTEGER[] (ragged)": sql_class_sum(model, "tokens", "docs")}
            _finish_duckdb(w, methods, n, ref, lambda label: results[(model, "tokens")])
            out += w.rows
            session = None
        con.execute("DROP TABLE docs")

        # int64 ids
        n = int(100_000 * scale)
        print(f"DuckDB: {n:,} rows of {IDS} int64 ids …", flush=True)
        ids = np.random.default_rng(3).integers(1, VOCAB, size=(n, IDS)).astype(np.int64)
        db.models.register("ids", sequence_model(dynamic_length=False))
        load("idt", {"id": np.arange(n), "b": fixed_arrow(ids), "i": fixed_arrow(ids.astype(np.int32)),
                     "f": fixed_arrow(ids.astype(np.float32))})
        con.execute(f"CREATE OR REPLACE TABLE idt AS SELECT id, CAST(b AS BIGINT[{IDS}]) AS b, "
                    f"CAST(i AS INTEGER[{IDS}]) AS i, CAST(f AS FLOAT[{IDS}]) AS f FROM idt")
        session = make_session(db.models.model_bytes("ids"), threads=threads)
        ref = raw_classes(session, dense_batches("ids", ids, CHUNK))
        w = Workload("ids", f"{IDS} int64 ids a row, Embedding(95k, 64) + masked mean + Linear")
        methods = {f"raw onnxruntime, batch {b}": raw_runner(session, dense_batches("ids", ids, b)) for b in (CHUNK, 16384)}
        forms = {f"BIGINT[{IDS}]": "b", f"INTEGER[{IDS}]": "i", f"FLOAT[{IDS}] (whole numbers)": "f"}
        for label, col in forms.items():
            methods[f"sum(predict_class(…)), {label}"] = sql_class_sum("ids", col, "idt")
        _finish_duckdb(w, methods, n, ref, lambda label: results[("ids", forms[label.split(", ", 1)[1]])])
        out += w.rows
        db.close()
    return out


def _finish_duckdb(w: Workload, methods: dict, n: int, ref: np.ndarray, result_of) -> None:
    best = interleaved(methods, rounds=3)
    raw = min(v for k, v in best.items() if k.startswith("raw"))
    w.add("duckdb", "raw onnxruntime (numpy in memory)", n, raw, reference=True,
          note=", ".join(f"{k.split(', ', 1)[1]}: {n / v:,.0f}/s" for k, v in best.items() if k.startswith("raw")))
    for label, seconds in best.items():
        if label.startswith("raw"):
            continue
        w.add("duckdb", label, n, seconds, agrees=check(result_of(label), ref, n))


# -- PostgreSQL -------------------------------------------------------------------------------------

def run_postgres(scale: float, folder: Path) -> list[dict]:
    out: list[dict] = []
    with database_url("postgres", folder, "dbdl_bench_inputs") as url:
        db = dbdl.connect(url)
        db.sql("SET max_parallel_workers_per_gather = 0")

        def into(model: str, query: str, target: str):
            def go():
                db.sql(f"DROP TABLE IF EXISTS {target}")
                db.sql(f"CALL dbdl.predict_into('{model}', '{query}', '{target}', 'class')")
            return go

        def class_sum(table: str) -> int:
            return db.sql(f"SELECT sum(c) FROM {table}").fetchall()[0][0]

        def measure(w: Workload, model: str, table: str, n: int, n_row: int, forms: dict, raw_fn, ref, dl: dict) -> None:
            """predict_into for each form on n rows, row-at-a-time on n_row, DL-centric for ``dl`` forms."""
            methods = {"raw": raw_fn}
            targets = {}
            for k, (label, col) in enumerate(forms.items()):
                targets[f"CALL predict_into(… 'class'), {label}"] = f"scores_{k}"
                methods[f"CALL predict_into(… 'class'), {label}"] = into(model, f"SELECT id, {col} FROM {table}", f"scores_{k}")
            best = interleaved(methods, rounds=2)
            w.add("postgres", "raw onnxruntime, 1 thread (numpy in memory)", n, best.pop("raw"), reference=True)
            for label, seconds in best.items():
                total = db.sql(f"SELECT sum(prediction) FROM {targets[label]}").fetchall()[0][0]
                w.add("postgres", label, n, seconds, agrees=check(total, ref, n))
            for label, col in forms.items():
                s = best_of_2(lambda: (db.sql("DROP TABLE IF EXISTS rs"), db.sql(
                    f"CREATE TABLE rs AS SELECT id, predict_class('{model}', {col}) AS c FROM {table} WHERE id < {n_row}",
                    strategy="udf")))
                w.add("postgres", f"db.sql udf (row-at-a-time), {label}", n_row, s,
                      agrees=check(class_sum("rs"), ref, n_row))
            for label, col in dl.items():
                # best of 2: the first DL call in a process also loads the model into the client
                s = best_of_2(lambda: (db.sql("DROP TABLE IF EXISTS ds"), db.sql(
                    f"CREATE TABLE ds AS SELECT id, predict_class('{model}', {col}) AS c FROM {table}", strategy="dl")))
                w.add("postgres", f"db.sql dl (binary COPY, client onnxruntime), {label}", n, s,
                      agrees=check(class_sum("ds"), ref, n))

        # images
        n = int(10_000 * scale)
        print(f"PostgreSQL: {n:,} images …", flush=True)
        px = images(n)
        xf = px.astype(np.float32)
        db.models.register("cnn", cnn_model())
        db.create_table("img", {"id": np.arange(n), "f": fixed_arrow(xf),
                                "b32": pa.array([r.tobytes() for r in xf.astype("<f4")], pa.binary()),
                                "u8": pa.array([r.tobytes() for r in px], pa.binary())}, replace=True)
        db.sql("VACUUM ANALYZE img")
        session = make_session(db.models.model_bytes("cnn"), threads=1)
        xname = session.get_inputs()[0].name
        ref = raw_classes(session, dense_batches(xname, xf, CHUNK))
        w = Workload("images", "CIFAR-sized images 3×32×32, small CNN (plain torch.onnx.export, batch 1)")
        measure(w, "cnn", "img", n, max(200, n // 10),
                {"real[] (3072 values)": "f", "float32 bytea (12 KiB)": "b32", "uint8 bytea (3 KiB)": "u8"},
                raw_runner(session, dense_batches(xname, xf, CHUNK)), ref,
                {"real[]": "f", "uint8 bytea": "u8"})
        out += w.rows
        db.sql("DROP TABLE img")

        # token lists
        n = int(20_000 * scale)
        lists = token_lists(n)
        print(f"PostgreSQL: {n:,} token lists …", flush=True)
        db.create_table("docs", {"id": np.arange(n), "tokens": ragged_arrow(lists)}, replace=True)
        db.sql("VACUUM ANALYZE docs")
        for key, model, batches, title in text_workloads(db, lists):
            session = make_session(db.models.model_bytes(model), threads=1)
            ref = raw_classes(session, batches)
            w = Workload(key, title)
            measure(w, model, "docs", n, max(200, n // 10), {"integer[] (ragged)": "tokens"},
                    raw_runner(session, batches), ref, {"integer[]": "tokens"})
            out += w.rows
        db.sql("DROP TABLE docs")

        # int64 ids
        n = int(50_000 * scale)
        print(f"PostgreSQL: {n:,} rows of {IDS} int64 ids …", flush=True)
        ids = np.random.default_rng(3).integers(1, VOCAB, size=(n, IDS)).astype(np.int64)
        db.models.register("ids", sequence_model(dynamic_length=False))
        db.create_table("idt", {"id": np.arange(n), "i": fixed_arrow(ids.astype(np.int32)),
                                "f": fixed_arrow(ids.astype(np.float32))}, replace=True)
        db.sql("CREATE TABLE idt2 AS SELECT id, i::bigint[] AS b, i, f FROM idt")
        db.sql("VACUUM ANALYZE idt2")
        session = make_session(db.models.model_bytes("ids"), threads=1)
        ref = raw_classes(session, dense_batches("ids", ids, CHUNK))
        w = Workload("ids", f"{IDS} int64 ids a row, Embedding(95k, 64) + masked mean + Linear")
        measure(w, "ids", "idt2", n, max(200, n // 10),
                {"bigint[]": "b", "integer[]": "i", "real[] (whole numbers)": "f"},
                raw_runner(session, dense_batches("ids", ids, CHUNK)), ref, {"bigint[]": "b"})
        out += w.rows
        db.close()
    return out


# -- report -----------------------------------------------------------------------------------------

def report(rows: list[dict], note: str) -> None:
    from rich.console import Console
    from rich.table import Table

    lines = ["# Input forms end to end", "", f"Machine: {machine()}. {note}", ""]
    console = Console(width=170)
    for backend in ("duckdb", "postgres"):
        part = [r for r in rows if r["backend"] == backend]
        if not part:
            continue
        label = {"duckdb": "DuckDB", "postgres": "PostgreSQL"}[backend]
        lines += [f"## {label}", "", "| workload | method | rows | rows/s | ÷ raw onnxruntime | µs/row over raw | agrees |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
        table = Table(title=f"{label}: input forms ÷ raw onnxruntime, same model and rows")
        for col in ("workload", "method", "rows", "rows/s", "÷ raw", "µs/row over raw", "agrees"):
            table.add_column(col, justify="left" if col in ("workload", "method", "agrees") else "right")
        for r in part:
            ref = next(x for x in part if x["workload"] == r["workload"] and x["reference"])["rows_per_s"]
            ratio = r["rows_per_s"] / ref
            agrees = "" if r["agrees"] is None else ("yes" if r["agrees"] else "NO")
            method = r["method"] + (f" ({r['note']})" if r["note"] else "")
            extra = "" if r["reference"] else f"{1e6 / r['rows_per_s'] - 1e6 / ref:.1f}"
            table.add_row(r["workload"], method, f"{r['rows']:,}", f"{r['rows_per_s']:,.0f}", f"{ratio:.3f}", extra, agrees)
            lines.append(f"| {r['workload']} | {method} | {r['rows']:,} | {r['rows_per_s']:,.0f} | {ratio:.3f} | {extra} | {agrees} |")
        console.print(table)
        lines.append("")
    titles = {r["workload"]: r["title"] for r in rows}
    lines += ["Workloads:", ""] + [f"- `{k}`: {v}" for k, v in titles.items()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "inputs.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "inputs.json").write_text(json.dumps({"note": note, "rows": rows}, indent=2))
    plot(rows)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    backends = [b for b in ("duckdb", "postgres") if any(r["backend"] == b for r in rows)]
    heights = [sum(1 for r in rows if r["backend"] == b) for b in backends]
    fig, axes = plt.subplots(len(backends), 1, figsize=(12, 0.32 * sum(heights) + 1.6 * len(backends)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    colors = {"images": "#4c72b0", "text_offsets": "#55a868", "text_padded": "#c44e52", "ids": "#8172b2"}
    for ax, backend in zip(axes[:, 0], backends):
        part = [r for r in rows if r["backend"] == backend and not r["reference"]][::-1]
        refs = {r["workload"]: r["rows_per_s"] for r in rows if r["backend"] == backend and r["reference"]}
        ratios = [r["rows_per_s"] / refs[r["workload"]] for r in part]
        names = [f"{r['workload']}: {r['method']}" for r in part]
        bars = ax.barh(range(len(part)), ratios, color=[colors.get(r["workload"], "#999999") for r in part])
        ax.set_yticks(range(len(part)), names, fontsize=7)
        ax.margins(y=0.01)
        for bar, r, v in zip(bars, part, ratios):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.2f}× ({r['rows_per_s']:,.0f}/s)",
                    va="center", fontsize=7)
        ax.axvline(1.0, color="#999999", lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_xlim(min(ratios) / 2, 4)
        ticks = [t for t in (0.01, 0.03, 0.1, 0.3, 1, 3) if min(ratios) / 2 <= t <= 4]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("rows/s ÷ raw onnxruntime on the same rows (log scale; 1 = the limit)", fontsize=8)
        ax.set_title({"duckdb": "DuckDB (onnxruntime reference on all cores)",
                      "postgres": "PostgreSQL (reference: onnxruntime, 1 thread)"}[backend], fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / "inputs.png", dpi=110)
    plt.close(fig)


def main() -> None:
    scale = rows_env(20_000) / 20_000  # DBDL_BENCH_ROWS: the number of DuckDB images; the rest scale with it
    backends = os.environ.get("DBDL_BENCH_BACKENDS", "duckdb,postgres").split(",")
    rows: list[dict] = []
    previous = RESULTS / "inputs.json"
    if previous.exists() and set(backends) != {"duckdb", "postgres"}:
        rows = [r for r in json.loads(previous.read_text())["rows"] if r["backend"] not in backends]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if "duckdb" in backends:
            rows = [r for r in rows if r["backend"] != "duckdb"] + run_duckdb(scale, Path(tmp))
        if "postgres" in backends:
            rows = [r for r in rows if r["backend"] != "postgres"] + run_postgres(scale, Path(tmp))
    rows.sort(key=lambda r: (r["backend"] != "duckdb", list(("images", "text_offsets", "text_padded", "ids")).index(r["workload"])))
    report(rows, f"DuckDB reference: onnxruntime with {os.cpu_count()} threads; PostgreSQL: one core (no parallel "
                 f"workers, onnxruntime with 1 thread; the DL-centric rows run onnxruntime in the client on all cores). "
                 f"Row-at-a-time rows timed on a tenth of the rows. 'agrees': the sum of the predicted classes equals "
                 f"the reference's.")
    print(f"bench_inputs: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
