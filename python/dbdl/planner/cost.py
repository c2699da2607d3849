"""The cost model: for each predict call, every strategy's estimated time, or why it cannot run.

    udf       setup + rows × (per-row overhead + FLOPs / in-database FLOP/s
                              + parameter bytes × re-read cost where rows go one at a time)
    dl        setup + rows × (bytes in + bytes out) × transfer cost + rows × FLOPs / runtime FLOP/s
    relation  setup + rows × (Σ layer weights × join cost per weight + Σ activations × cost per value)
              (blocked layout: Σ output units × (dot-product cost + inputs × cost per element)
              instead of the joins; the cheaper layout the dialect can run is taken)

Constants come from `dbdl calibrate` (table dbdl.calibration); until then, the defaults below,
which `dbdl calibrate` measured on a 2-core x86 machine without a GPU. Rows come from a cheap count of the rows the SELECT feeds to predict.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..registry import ResolvedModel

# backend -> constant -> value (seconds, FLOP/s, bytes)
DEFAULTS: dict[str, dict[str, float]] = {
    "duckdb": {
        "udf_setup_s": 5.0e-3,        # registering the UDF, building the session (first use)
        "udf_row_s": 1.5e-7,          # Arrow chunk conversion per row, both ways
        "udf_param_byte_s": 0.0,      # 2,048-row chunks: weights are read once per chunk
        "udf_flops_per_s": 8.0e10,    # onnxruntime, one thread per DuckDB thread, all threads
        "udf_row_group_rows": 122880,  # DuckDB scans a table on one thread per row group: fewer
                                       # rows than threads × this leave cores idle
        "dl_setup_s": 1.5e-2,         # planning the side query, loading the model
        "dl_byte_s": 8.5e-9,          # Arrow out and back, per feature byte
        "dl_flops_per_s": 8.0e10,     # onnxruntime / torch on all cores
        "rel_setup_s": 3.0e-2,        # building and optimizing the compiled statement
        "rel_weight_s": 5.5e-8,       # one joined (input value × weight) row, aggregated
        "rel_value_s": 1.1e-7,        # one activation value through a scalar step
        "rel_dot_s": 1.5e-7,          # blocked layout: one (row, output unit) dot product...
        "rel_dot_elem_s": 1.0e-9,     # ...plus this per element of it
        "cache_lookup_row_s": 1.6e-6,  # key digest, the join with the cache, the join back
        "cache_insert_row_s": 1.5e-6,  # one miss into the cache (index included)
    },
    "postgres": {
        "udf_setup_s": 5.0e-2,        # PL/Python bootstrap and session build in a new server process
        "udf_row_s": 5.5e-5,          # a PL/Python call per row
        "udf_param_byte_s": 4.4e-11,  # one row per call: every row reads all the weights again
        "udf_flops_per_s": 8.0e10,    # onnxruntime, one thread
        "dl_setup_s": 1.8e-2,
        "dl_byte_s": 3.0e-8,          # binary COPY out and back
        "dl_flops_per_s": 6.0e10,
        "rel_setup_s": 4.0e-2,
        "rel_weight_s": 5.3e-7,
        "rel_value_s": 1.1e-6,
        "cache_lookup_row_s": 4.0e-6,
        "cache_insert_row_s": 1.5e-5,
    },
}


def memory_budget() -> int:
    """Bytes a strategy that holds the whole model may use: DBDL_MEMORY_BUDGET, else half of RAM."""
    if os.environ.get("DBDL_MEMORY_BUDGET"):
        return int(float(os.environ["DBDL_MEMORY_BUDGET"]))
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


@dataclass
class Estimate:
    strategy: str
    seconds: float | None  # None when ruled out
    reason: str = ""       # why it was ruled out, or what dominates
    terms: dict[str, float] = field(default_factory=dict)
    layout: str = ""       # relation-centric: "element" or "blocked" weights

    @property
    def feasible(self) -> bool:
        return self.seconds is not None


@dataclass
class CallPlan:
    """The candidates for one predict call and the one chosen."""

    call: str
    model: str
    rows: int
    flops_per_row: int
    param_bytes: int
    candidates: list[Estimate]
    choice: str
    forced: bool = False
    cache: str = ""  # how the result cache takes part, if the model has it on

    def describe(self) -> str:
        lines = [f"{self.call}: model {self.model}, ~{self.rows:,} rows, {self.flops_per_row:,} FLOPs/row, "
                 f"{self.param_bytes:,} parameter bytes"]
        for e in self.candidates:
            mark = "→" if e.strategy == self.choice else " "
            cost = f"{e.seconds * 1e3:12.3f} ms" if e.feasible else "   ruled out"
            detail = e.reason or ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in e.terms.items())
            if e.layout and e.feasible:
                detail += f" ({e.layout} layout)"
            lines.append(f"  {mark} {e.strategy:<9}{cost}   {detail}")
        how = "forced by the caller" if self.forced else "lowest estimate"
        if self.cache:
            lines.append(f"  {self.cache}")
        lines.append(f"  chosen: {self.choice} ({how})")
        return "\n".join(lines)


def constants(backend: "Backend") -> dict[str, float]:
    values = dict(DEFAULTS.get(backend.name, DEFAULTS["duckdb"]))
    try:
        for key, value in backend.fetchall("SELECT key, value FROM dbdl.calibration"):
            values[key] = float(value)
    except Exception:  # noqa: BLE001 - no calibration table (or no right to read it): defaults
        pass
    return values


def estimate(backend: "Backend", model: "ResolvedModel", graph, rows: int, budget: int | None = None
             ) -> list[Estimate]:
    """Every strategy's estimate for scoring ``rows`` rows with ``model``."""
    c = constants(backend)
    budget = memory_budget() if budget is None else budget
    flops = graph.flops_per_row if not graph.unsupported else _fallback_flops(model)
    params = max(graph.param_bytes, graph.initializer_bytes)
    bytes_in = 4 * model.signature.n_features
    bytes_out = 4 * (model.output_spec.per_row or 1)
    out: list[Estimate] = []

    too_big = params > budget
    if not getattr(backend, "has_python_udfs", True):
        out.append(Estimate("udf", None, "the database runs no Python"))
    elif too_big:
        out.append(Estimate("udf", None, f"model needs {params:,} bytes, over the memory budget of {budget:,}"))
    else:
        share = udf_core_share(c, rows)
        terms = {"setup": c.get("udf_setup_s", 0.0), "per-row": rows * c["udf_row_s"],
                 "compute": rows * flops / (c["udf_flops_per_s"] * share),
                 "weights": rows * params * c.get("udf_param_byte_s", 0.0)}
        out.append(Estimate("udf", sum(terms.values()), terms=terms))

    ok, why = graph.relational
    if ok and getattr(model.signature, "batch", None) is not None:
        # a fixed batch size dbdl could not make symbolic: the graph's shapes hold it, per-row SQL would not
        ok, why = False, (f"the model has a fixed batch size of {model.signature.batch} (scored in slices of that many "
                          "rows), and the SQL compiler takes models that run on each row alone")
    if ok:
        from ..ir.sql import layouts

        dense = [n for n in graph.nodes if n.op.op_type in ("Gemm", "MatMul")]
        weights = sum(int(np.count_nonzero(n.op.params[1])) for n in dense)
        values = sum(int(max(1, _size(n.shape))) for n in graph.nodes)
        setup = c.get("rel_setup_s", 0.0)
        options = {"element": {"setup": setup, "joins": rows * weights * c["rel_weight_s"],
                               "values": rows * values * c["rel_value_s"]}}
        if "blocked" in layouts(backend.name) and "rel_dot_s" in c:
            dots = sum(_size(n.shape) * (c["rel_dot_s"] + int(n.op.params[1].shape[0]) * c["rel_dot_elem_s"])
                       for n in dense)
            options["blocked"] = {"setup": setup, "dot products": rows * dots,
                                  "values": rows * values * c["rel_value_s"]}
        layout = min(options, key=lambda k: sum(options[k].values()))
        out.append(Estimate("relation", sum(options[layout].values()), terms=options[layout], layout=layout))
    else:
        out.append(Estimate("relation", None, why))

    if too_big:
        out.append(Estimate("dl", None, f"model needs {params:,} bytes, over the memory budget of {budget:,}"))
    else:
        terms = {"setup": c["dl_setup_s"], "transfer": rows * (bytes_in + bytes_out) * c["dl_byte_s"],
                 "compute": rows * flops / c["dl_flops_per_s"]}
        out.append(Estimate("dl", sum(terms.values()), terms=terms))
    return out


def udf_core_share(c: dict[str, float], rows: int) -> float:
    """The share of the machine's cores the in-database function runs on for ``rows`` rows: on
    DuckDB one thread per row group (``udf_row_group_rows``), elsewhere all it is given."""
    if not c.get("udf_row_group_rows"):
        return 1.0
    return min(1.0, max(1, -(-int(rows) // int(c["udf_row_group_rows"]))) / (os.cpu_count() or 1))


def with_cache(backend: "Backend", estimates: list[Estimate], rows: int, computed: int) -> list[Estimate]:
    """Estimates made for the ``computed`` misses, plus what the cache costs: a key and one join per
    row, an insert per miss."""
    c = constants(backend)
    for e in estimates:
        if e.feasible:
            e.terms["cache look-up"] = rows * c["cache_lookup_row_s"]
            e.terms["cache insert"] = computed * c["cache_insert_row_s"]
            e.seconds = sum(e.terms.values())
    return estimates


class _Empty:
    size = 0


def _size(shape) -> int:
    n = 1
    for d in shape or ():
        n *= int(d)
    return n


def _fallback_flops(model: "ResolvedModel") -> int:
    return 2 * model.signature.n_features * max(1, model.output_spec.per_row or 1)
