"""One column per feature: ``predict('m', c0, c1, c2, c3)`` for a model of ONE input of 4 values per row
(the "wide" call, planner/rewrite.py ``wide_call``) — the form a database without arrays (DM8) takes
feature vectors in. Under every strategy it gives onnxruntime's values on the same rows, a NULL in any
column gives NULL, and a wrong number of columns, a text, boolean or array column are refused before
a row is read; EXPLAIN shows the call as written."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import STRATEGIES, array_values, export_onnx, has, make_mlp, per_backend, run_onnx

import dbdl

ROWS = 24
#: the strategies a wide call runs under, and the planner's own choice (None)
HOW = [*STRATEGIES, "hybrid", None]
COLUMNS = "c0, c1, c2, c3"


def ways(db, how=HOW) -> list:
    """The strategies of ``how`` the database has: without arrays (DM8) neither the in-database
    function nor a hybrid plan (its SQL prefix hands an array on) — they say so: test_errors'
    strategy cases and test_without_arrays_the_columns_go_as_they_are."""
    return [h for h in how if not (has(db, "no_arrays") and h in ("udf", "hybrid"))]


def matrix(values) -> np.ndarray:
    return np.array([array_values(v) for v in values], np.float64)


@pytest.fixture(scope="module")
def mlp4() -> bytes:
    """4 features → 8 → 3 classes (torch.onnx.export, one input "x" of shape [n, 4])."""
    return export_onnx(make_mlp((4, 8, 3), seed=21), 4)


@pytest.fixture(scope="module")
def scorer4() -> bytes:
    """4 features → one probability."""
    import torch

    return export_onnx(make_mlp((4, 6, 1), seed=22, final=torch.nn.Sigmoid()), 4)


@pytest.fixture(scope="module")
def cancer():
    """scikit-learn's LogisticRegression on breast_cancer (30 features) through skl2onnx: outputs
    label (int64) and probabilities (2), one input X of shape [n, 30]; the rows it is scored on."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from skl2onnx import to_onnx

    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    onx = to_onnx(model, x[:1], options={LogisticRegression: {"zipmap": False}}, target_opset=17)
    return onx.SerializeToString(), x[:ROWS]


@pytest.fixture
def wide(db, mlp4, scorer4) -> np.ndarray:
    """Table w(id, c0, c1, c2 DOUBLE, c3 BIGINT): ROWS rows, then row ROWS with c2 NULL and row
    ROWS + 1 with every column NULL; models m (4 → 3) and s (4 → 1). The rows as the model sees them."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((ROWS, 4))
    x[:, 3] = rng.integers(-3, 4, ROWS)
    x[5] = x[4]  # two equal rows: scored once by relation-centric SQL, joined back to both
    db.create_table("w", {"id": np.arange(ROWS), **{f"c{i}": x[:, i] for i in range(3)},
                          "c3": x[:, 3].astype(np.int64)})
    db.sql(f"INSERT INTO w VALUES ({ROWS}, 1.0, 2.0, NULL, 4)")
    db.sql(f"INSERT INTO w VALUES ({ROWS + 1}, NULL, NULL, NULL, NULL)")
    db.models.register("m", mlp4)
    db.models.register("s", scorer4)
    return x.astype(np.float32)


def _rows(db, sql: str, strategy: str | None) -> list:
    rows = sorted(db.sql(sql, strategy=strategy).fetchall())
    assert [r[0] for r in rows] == list(range(ROWS + 2))
    assert all(v is None for v in rows[ROWS][1:] + rows[ROWS + 1][1:]), rows[ROWS:]  # a NULL column: NULL
    return rows[:ROWS]


def test_one_column_per_feature_gives_onnxruntimes_values(db, wide, mlp4, scorer4):
    logits, prob = run_onnx(mlp4, {"x": wide}), run_onnx(scorer4, {"x": wide})[:, 0]
    for how in ways(db):  # one database for them all (a PostgreSQL database per case would cost more than the cases)
        rows = _rows(db, f"SELECT id, predict_array('m', {COLUMNS}), predict_class('m', {COLUMNS}), "
                         f"predict('s', {COLUMNS}) FROM w", how)
        np.testing.assert_allclose(matrix(r[1] for r in rows), logits, rtol=1e-4, atol=1e-5, err_msg=f"strategy {how}")
        assert [r[2] for r in rows] == logits.argmax(axis=1).tolist(), how
        np.testing.assert_allclose([r[3] for r in rows], prob, rtol=1e-4, atol=1e-6, err_msg=f"strategy {how}")
        # no row identity (a CTE): DL-centric keys its predictions by the columns themselves; an
        # expression among them, as any other scalar
        rows = _rows(db, "WITH v AS (SELECT * FROM w) SELECT id, predict_array('m', c0, c1 * 1, c2, c3) FROM v", how)
        np.testing.assert_allclose(matrix(r[1] for r in rows), logits, rtol=1e-4, atol=1e-5, err_msg=f"strategy {how}")


@pytest.mark.never(["dm8"], reason="bound parameters as features are scored by the in-database function, which "
                                   "DM8 does not have (its external functions are C or Java only: docs/dm8.md)")
def test_bound_parameters_among_the_columns(db, wide, mlp4):
    logits = run_onnx(mlp4, {"x": wide})
    # bound parameters among the columns (the in-database function takes them), each ? bound once
    got = db.sql("SELECT id, predict_array('m', c0, c1, ?, c3) FROM w WHERE id = ?", [float(wide[3, 2]), 3]).fetchall()
    np.testing.assert_allclose([list(got[0][1])], logits[3:4], rtol=1e-4, atol=1e-5)
    got = db.sql("SELECT predict_array('m', ?, ?, ?, ?)", [float(v) for v in wide[7]]).fetchall()
    np.testing.assert_allclose([list(got[0][0])], logits[7:8], rtol=1e-4, atol=1e-5)
    assert db.sql("SELECT predict_array('m', ?, ?, ?, ?)", [1.0, None, 2.0, 3.0]).fetchall() == [(None,)]


def test_thirty_columns_into_a_scikit_learn_model(db, cancer):
    model, x = cancer
    db.models.register("bc", model)
    db.create_table("bc_rows", {"id": np.arange(len(x)), **{f"x{i}": x[:, i].astype(np.float64) for i in range(30)}})
    label, proba = run_onnx(model, {"X": x}), run_onnx(model, {"X": x}, output=1)
    columns = ", ".join(f"x{i}" for i in range(30))
    for how in ways(db, [*STRATEGIES, None]):
        rows = sorted(db.sql(f"SELECT id, predict('bc', {columns}), predict_array('bc:probabilities', {columns}), "
                             f"predict_class('bc:probabilities', {columns}) FROM bc_rows", strategy=how).fetchall())
        assert [int(r[1]) for r in rows] == label.tolist(), how
        np.testing.assert_allclose(matrix(r[2] for r in rows), proba, rtol=1e-4, atol=1e-5, err_msg=f"strategy {how}")
        assert [r[3] for r in rows] == proba.argmax(axis=1).tolist(), how


def test_wrong_columns_are_refused_naming_the_fix(db, wide):
    # DM8 has no array to pass (None: that refusal is not tried there)
    array = per_backend(db, duckdb="[c1]", postgres="ARRAY[c1]", spark="array(c1)", dm8=None)
    for how in ways(db):
        with pytest.raises(dbdl.ShapeMismatch, match=r"takes 4 features per row: pass 4 columns, or one array of 4 "
                                                     r"— predict_array\(\) got 3"):
            db.sql("SELECT id, predict_array('m', c0, c1, c2) FROM w", strategy=how)
        with pytest.raises(dbdl.ShapeMismatch, match="takes 4 features per row"):
            db.sql("SELECT id, predict_array('m', c0, c1, c2, c3, c0) FROM w", strategy=how)
        with pytest.raises(dbdl.DTypeMismatch, match=r"takes numeric features.*argument 3 \(CAST\(c1 AS .*got "
                                                      r"(VARCHAR|character varying|string)"):
            db.sql("SELECT id, predict_array('m', c0, CAST(c1 AS VARCHAR), c2, c3) FROM w", strategy=how)
        with pytest.raises(dbdl.DTypeMismatch, match="takes numeric features.*got (BOOLEAN|boolean|BIT)"):
            db.sql("SELECT id, predict_array('m', c0, c1 > 0, c2, c3) FROM w", strategy=how)
        if array is not None:
            with pytest.raises(dbdl.ShapeMismatch, match=r"argument 3 .* is an array.*one number per column, or the "
                                                         r"whole vector as the one features argument"):
                db.sql(f"SELECT id, predict_array('m', c0, {array}, c2, c3) FROM w", strategy=how)


def test_explain_shows_the_call_as_written_and_the_choice(db, wide):
    sql = f"SELECT id, predict_array('m', {COLUMNS}) FROM w"
    plan = str(db.explain(sql))
    assert f"PREDICT_ARRAY('m', {COLUMNS})" in plan
    assert "chosen: " in plan and "hybrid " in plan
    for how in ways(db, STRATEGIES):
        assert f"chosen: {how} (forced by the caller)" in str(db.explain(sql, strategy=how))
    # EXPLAIN through db.sql: dbdl's plan first, the call as written
    text = "\n".join(str(r[-1]) for r in db.sql(f"EXPLAIN {sql}", strategy="relation").fetchall())
    assert f"PREDICT_ARRAY('m', {COLUMNS})" in text and "chosen: relation (forced by the caller)" in text


@pytest.mark.notimpl(["spark"], reason="Spark has no result cache yet (cache_key_bytes = None, docs/spark.md)")
@pytest.mark.never(["dm8"], reason="DM8 has no result cache (docs/dm8.md); its planner says why: "
                                   "test_without_arrays_the_columns_go_as_they_are")
def test_the_result_cache_keys_the_columns_packed(db, wide, mlp4):
    db.models.set_options("m", cache=True)
    sql = f"SELECT id, predict_array('m', {COLUMNS}) FROM w"
    assert "result cache: expected hit rate" in str(db.explain(sql))
    logits = run_onnx(mlp4, {"x": wide})
    distinct = len({tuple(r) for r in wide.tolist()})
    for _ in range(2):
        rows = _rows(db, sql, None)
        np.testing.assert_allclose(np.array([list(r[1]) for r in rows], np.float64), logits, rtol=1e-4, atol=1e-5)
    (stats,) = db.models.cache_stats("m")
    assert (stats.misses, stats.hits) == (distinct, distinct)
    # a strategy forced to score the misses (all hits now) reads the same cache
    rows = _rows(db, sql, "dl")
    np.testing.assert_allclose(np.array([list(r[1]) for r in rows], np.float64), logits, rtol=1e-4, atol=1e-5)


@pytest.mark.never(["dm8"], reason="makes an array backend one without arrays, as DM8 is: this module's other cases "
                                   "run on DM8 itself")
def test_without_arrays_the_columns_go_as_they_are(db, wide, mlp4, monkeypatch):
    """A database without array columns (DM8, ``Backend.array_features`` False): relation- and
    DL-centric execution take the columns as they are; the in-database function and the result
    cache, which take one array, say why they are not used."""
    monkeypatch.setattr(db.backend, "array_features", False)
    db.models.set_options("m", cache=True)
    sql = f"SELECT id, predict_array('m', {COLUMNS}) FROM w"
    plan = str(db.explain(sql))
    assert "result cache not used: the call passes one column per feature" in plan
    assert "the in-database function takes one array of the features, and the database has no arrays" in plan
    logits = run_onnx(mlp4, {"x": wide})
    assert "the SQL prefix hands its activations to the rest of the model as one array" in plan  # hybrid
    for how in ("relation", "dl", None):
        rows = _rows(db, sql, how)
        np.testing.assert_allclose(matrix(r[1] for r in rows), logits, rtol=1e-4, atol=1e-5)
    assert db.models.cache_stats("m") == []
    with pytest.raises(dbdl.StrategyUnavailable, match="no arrays"):
        db.sql(sql, strategy="udf")


def test_pack_features_renders_one_array_per_dialect():
    import sqlglot.expressions as exp

    from dbdl.backends.base import Backend
    from dbdl.backends.duckdb.dialect import RELATIONAL as DUCK, DbdlDuckDB
    from dbdl.backends.postgres.dialect import RELATIONAL as PG, DbdlPostgres
    from dbdl.backends.spark.dialect import RELATIONAL as SPARK, DbdlSpark

    class Stub:
        def __init__(self, relational, dialect):
            self.relational, self.dialect = relational, dialect

    args = [exp.column("a"), exp.column("b")]
    null = "CASE WHEN a IS NULL OR b IS NULL THEN NULL ELSE "
    for relational, dialect, array in ((DUCK, DbdlDuckDB, "[CAST(a AS REAL), CAST(b AS REAL)]"),
                                       (PG, DbdlPostgres, "ARRAY[CAST(a AS REAL), CAST(b AS REAL)]"),
                                       (SPARK, DbdlSpark, "ARRAY(CAST(a AS FLOAT), CAST(b AS FLOAT))")):
        packed = Backend.pack_features(Stub(relational, dialect), args, 2)
        assert packed.sql(dialect=dialect) == f"{null}{array} END"
