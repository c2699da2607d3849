"""`dbdl calibrate`: measure the cost model's constants on this machine and store them.

Each constant comes from timing the real strategy on synthetic rows, twice where a rate and a
fixed cost must be told apart: a model with almost no arithmetic gives the per-row overhead, a
large one the FLOP rate. Results go to dbdl.calibration, which the strategies' estimates read.
It sits above the planner: it runs queries through the facade (``db.sql(..., strategy=…)``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

_TABLE = "dbdl_calibration_rows"


def mlp_onnx(sizes: list[int], seed: int = 0) -> bytes:
    """An ONNX MLP (Gemm + Relu layers, last layer linear) with random weights, built without torch."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        inits += [numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"W{k}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"B{k}")]
        nodes.append(helper.make_node("Gemm", [prev, f"W{k}", f"B{k}"], [f"h{k}"]))
        prev = f"h{k}"
        if k < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{k}"]))
            prev = f"r{k}"
    graph = helper.make_graph(nodes, "calibration", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", sizes[0]])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["n", sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _time(fn, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def calibrate(db: Any, rows: int = 20000, progress: bool = True) -> dict[str, float]:
    """``db``: the facade (dbdl.Database) whose backend is measured."""
    from rich.progress import Progress

    from .ir import from_onnx
    from .strategies.base import constants, udf_core_share

    import onnx

    width = 64
    small, large = mlp_onnx([width, 1], 1), mlp_onnx([width, 256, 256, 10], 2)
    flops_small = from_onnx(onnx.load_from_string(small)).flops_per_row
    flops_large = from_onnx(onnx.load_from_string(large)).flops_per_row
    rel_rows = max(400, rows // 10)  # relation-centric is the slow one per row: fewer rows
    token = f"{np.random.default_rng().integers(1 << 32):08x}"  # never a user's model or table
    names = (f"dbdl_calibration_{token}_small", f"dbdl_calibration_{token}_large")
    table = f"{_TABLE}_{token}"
    measured: dict[str, float] = {}
    steps = [("udf", "udf_row_s"), ("dl", "dl_byte_s"), ("relation", "rel_weight_s")]
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("calibrating", total=len(steps) + 1)
        db.create_table(table, {"id": np.arange(rows),
                                 "feats": np.random.default_rng(0).standard_normal((rows, width), dtype=np.float32)},
                        replace=True)
        db.models.register(names[0], small)
        db.models.register(names[1], large)
        bar.advance(task)
        try:
            def run(strategy: str, model: str, n: int) -> float:
                query = f"SELECT sum(predict_class('{model}', feats)) FROM {table} WHERE id < {n}" if model.endswith(
                    "large") else f"SELECT sum(predict('{model}', feats) * 0 + 1) FROM {table} WHERE id < {n}"
                db.sql(query, strategy=strategy)  # warm: sessions, weight tables
                return _time(lambda: db.sql(query, strategy=strategy))

            quarter = rows // 4

            def slope(strategy: str, model: str, low: int, high: int) -> tuple[float, float]:
                """(seconds per row, fixed seconds) from two sizes: planning and setup cancel out."""
                t_low, t_high = run(strategy, model, low), run(strategy, model, high)
                per_row = max((t_high - t_low) / (high - low), 1e-12)
                return per_row, max(t_low - per_row * low, 0.0)

            small_row, _ = slope("udf", names[0], quarter, rows)
            large_row, _ = slope("udf", names[1], quarter, rows)
            measured["udf_row_s"] = small_row
            # timed on `rows` rows, which may leave cores idle (DuckDB: a thread per row group):
            # stored as the whole machine's rate, as the cost model divides by the share again
            measured["udf_flops_per_s"] = ((flops_large - flops_small) / max(large_row - small_row, 1e-12)
                                           / udf_core_share(constants(db.backend), rows))
            bar.advance(task)

            small_row, setup = slope("dl", names[0], quarter, rows)
            large_row, _ = slope("dl", names[1], quarter, rows)
            measured["dl_setup_s"] = setup
            measured["dl_byte_s"] = small_row / (4 * width + 4)
            measured["dl_flops_per_s"] = (flops_large - flops_small) / max(large_row - small_row, 1e-12)
            bar.advance(task)

            rel_row, rel_setup = slope("relation:element", names[0], rel_rows // 4, rel_rows)
            measured["rel_setup_s"] = rel_setup
            # the small model: width weights joined per row, and a handful of values per row
            measured["rel_weight_s"] = rel_row / (width + 0.5 * (width + 3))
            measured["rel_value_s"] = measured["rel_weight_s"] * 2
            if "blocked" in db.backend.relational.layouts:
                # one dot product of `width` elements per row for the small model
                dot_row, _ = slope("relation:blocked", names[0], rel_rows // 4, rel_rows)
                measured["rel_dot_s"] = max(dot_row - (width + 3) * measured["rel_value_s"], 1e-9)
            bar.advance(task)
        finally:
            for name in names:
                db.models.drop(name)
            db.sql(f"DROP TABLE IF EXISTS {table}")
    db.backend.set_calibration(measured)
    return measured
