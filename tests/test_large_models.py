"""Models larger than memory (issue 13, section 4): an embedding model whose table is far over
the memory budget (``db.memory_budget``, DBDL_MEMORY_BUDGET's setting) and a dense model over a
wide, mostly-zero input. Relation-centric execution completes and matches onnxruntime (run here on
the same rows); udf and dl refuse before reading a row, naming the budget, and leave no table
behind; EXPLAIN shows them ruled out for it, and the planner picks relation by itself."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
import torch
from conftest import export_onnx, per_backend

import dbdl
from dbdl.names import weight_table_prefix

VOCAB, DIM, BAG = 200_000, 16, 8  # 12.8 MB of embedding table
WIDE, HIDDEN, CLASSES = 10_000, 64, 50  # 2.6 MB of first-layer weights
BUDGET = 1_000_000


class Embedded(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding, self.head = torch.nn.Embedding(VOCAB, DIM), torch.nn.Sequential(
            torch.nn.Linear(DIM, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))

    def forward(self, tokens):
        return self.head(self.embedding(tokens).mean(1))


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(21)
    wide = torch.nn.Sequential(torch.nn.Linear(WIDE, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES))
    return {"embedded": export_onnx(Embedded().eval(), (BAG,), dtype=torch.int64),
            "wide": export_onnx(wide.eval(), WIDE)}


def _rows():
    rng = np.random.default_rng(22)
    tokens = rng.integers(0, VOCAB, size=(12, BAG)).astype(np.int64)
    wide = np.zeros((12, WIDE), np.float32)
    for r in range(len(wide)):  # ~20 nonzeros a row
        wide[r, rng.choice(WIDE, 20, replace=False)] = rng.standard_normal(20)
    wide[5] = 0  # a row of zeros still gets every output
    return tokens, wide


def _tables(db) -> set[tuple[str, str]]:
    return {tuple(r) for r in db.sql("SELECT table_schema, table_name FROM information_schema.tables").fetchall()}


def test_a_model_over_the_memory_budget_runs_relation_centric_and_udf_dl_refuse(db, models):
    tokens, wide = _rows()
    db.create_table("docs", {"id": np.arange(len(tokens)),
                             "tokens": pa.array(tokens.tolist(), type=pa.list_(pa.int64())), "x": wide})
    # a row whose features the model would refuse: reading it would fail differently
    db.sql("INSERT INTO docs (id, tokens) VALUES (99, "
           + per_backend(db, duckdb="[1, 2]", postgres="ARRAY[1, 2]::bigint[]") + ")")
    db.memory_budget = BUDGET
    for name, column in (("embedded", "tokens"), ("wide", "x")):
        db.models.register(name, models[name])
        sha = db.models.get(name).sha256
        sql = f"SELECT id, predict_array('{name}', {column}) AS p FROM docs WHERE id < 99 ORDER BY id"
        plan, = db.explain(sql)
        assert plan.param_bytes > BUDGET
        reasons = {e.strategy: e.reason for e in plan.candidates if not e.feasible}
        assert {"udf", "dl"} <= set(reasons) and "relation" not in reasons, reasons
        for strategy in ("udf", "dl"):
            assert f"over the memory budget of {BUDGET:,}" in reasons[strategy]
        # relation-centric SQL, or a hybrid plan whose SQL prefix holds the big weights: the cheaper
        feasible = [e for e in plan.candidates if e.feasible]
        assert plan.choice in ("relation", "hybrid") and plan.choice == min(feasible, key=lambda e: e.seconds).strategy
        # udf and dl refuse before a row is read: the bad row (id 99) is never looked at, and
        # nothing is written (no weight table, no temporary prediction table)
        before = _tables(db)
        for strategy in ("udf", "dl"):
            with pytest.raises(dbdl.StrategyUnavailable, match=f"memory budget of {BUDGET:,}"):
                db.sql(f"SELECT id, predict_array('{name}', {column}) FROM docs ORDER BY id", strategy=strategy)
        assert _tables(db) == before
        assert not any(t.startswith(weight_table_prefix(sha)) for _, t in before)
        # the planner's own choice, and relation-centric SQL forced, complete and match onnxruntime
        feats = tokens if name == "embedded" else wide
        session = ort.InferenceSession(models[name], providers=["CPUExecutionProvider"])
        expected = session.run(None, {"x": feats})[0]
        for strategy in (None, "relation"):
            got = db.sql(sql, strategy=strategy).fetchall()
            assert [r[0] for r in got] == list(range(len(feats)))
            np.testing.assert_allclose(np.array([r[1] for r in got], np.float64), expected, rtol=1e-4, atol=1e-4,
                                       err_msg=f"{name} {strategy or plan.choice}")
        assert any(t.startswith(weight_table_prefix(sha)) for _, t in _tables(db))


def test_the_estimate_samples_a_wide_inputs_density(db, models):
    """A dense layer over a mostly-zero input joins only its nonzeros: the planner samples the share
    of nonzero values of a wide input, and the relation-centric estimate prices the first layer at it."""
    from dbdl.query import find_predict_calls, parse

    _, wide = _rows()
    db.create_table("sparse", {"id": np.arange(len(wide)), "x": wide})
    db.create_table("dense", {"id": np.arange(len(wide)), "x": wide + 1.0})
    db.models.register("wide", models["wide"])
    share = np.count_nonzero(wide) / wide.size
    for table, want in (("sparse", share), ("dense", 1.0)):
        sql = f"SELECT predict_array('wide', x) FROM {table}"
        call, = find_predict_calls(parse(sql, db.backend.dialect)[0])
        assert db.backend.feature_density(call.expressions[1:], WIDE) == pytest.approx(want)
    if "blocked" in db.backend.relational.layouts:
        return  # the blocked layout packs every value; its estimate does not change
    joins = {}
    for table in ("sparse", "dense"):
        plan, = db.explain(f"SELECT predict_array('wide', x) FROM {table}", strategy="relation")
        joins[table] = next(e for e in plan.candidates if e.strategy == "relation").terms["joins"]
    first_layer, rest = WIDE * HIDDEN, HIDDEN * CLASSES  # nonzero weights: the wide layer, the other
    assert joins["sparse"] / joins["dense"] == pytest.approx((first_layer * share + rest) / (first_layer + rest),
                                                             rel=1e-3)
