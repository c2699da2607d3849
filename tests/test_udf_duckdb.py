"""DuckDB's model UDF: the lean per-chunk path (chunks without NULLs) against the general one.

A chunk of FLOAT[n] rows with no NULL row or value is fed to onnxruntime as a view of DuckDB's own
buffer and the output's Arrow array is built on the output's buffer (dbdl_udf.runtime.dense_runner,
dbdl_udf/arrowio.dense_matrix / dense_result); any other chunk takes the general path. Both
must give what onnxruntime gives, NULL where a row cannot be scored."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import dbdl
from conftest import export_onnx, make_mlp, run_onnx
from dbdl_udf.arrowio import dense_matrix, dense_result
from dbdl_udf.runtime import Signature, TensorSpec, dense_runner, make_session, run_batch, signature_of

ROWS = 5000  # three DuckDB chunks of up to 2,048 rows


@pytest.fixture(scope="module")
def scorer_and_regressor() -> tuple[bytes, bytes]:
    return export_onnx(make_mlp((8, 16, 3), seed=1), 8), export_onnx(make_mlp((8, 16, 1), seed=2), 8)


@pytest.fixture
def duck(tmp_path, scorer_and_regressor):
    db = dbdl.connect(f"duckdb:///{tmp_path / 'lean.duckdb'}")
    scorer, regressor = scorer_and_regressor
    db.models.register("s", scorer)
    db.models.register("r", regressor)
    yield db
    db.close()


def test_every_chunk_scores_as_onnxruntime_does_with_nulls_in_some_chunks_only(duck, scorer_and_regressor):
    scorer, regressor = scorer_and_regressor
    x = np.random.default_rng(3).standard_normal((ROWS, 8)).astype(np.float32)
    # NULL rows and a NULL element only past row 4,096: the chunks before them have none (lean path),
    # theirs take the general path
    duck.create_table("t", {"id": np.arange(ROWS), "feats": x})
    duck.sql("UPDATE t SET feats = NULL WHERE id IN (4500, 4501)")
    duck.sql("UPDATE t SET feats = [1, 2, NULL, 4, 5, 6, 7, 8]::FLOAT[8] WHERE id = 4700")
    nulls = {4500, 4501, 4700}
    rows = duck.sql("SELECT id, predict_array('s', feats), predict_class('s', feats), predict('r', feats) "
                    "FROM t ORDER BY id").fetchall()
    expected, fitted = run_onnx(scorer, {"x": x}), run_onnx(regressor, {"x": x})[:, 0]
    assert [r[0] for r in rows] == list(range(ROWS))
    assert all(r[1:] == (None, None, None) for r in rows if r[0] in nulls)
    scored = [r for r in rows if r[0] not in nulls]
    ids = [r[0] for r in scored]
    np.testing.assert_allclose(np.array([r[1] for r in scored], np.float32), expected[ids], rtol=1e-6, atol=1e-6)
    assert [r[2] for r in scored] == np.argmax(expected[ids], axis=1).tolist()
    np.testing.assert_allclose(np.array([r[3] for r in scored], np.float32), fitted[ids], rtol=1e-6, atol=1e-6)
    # the lean path's whole-table form: FLOAT[3] values, one flat buffer per chunk
    duck.sql("CREATE TABLE s AS SELECT id, predict_array('s', feats) AS y FROM t WHERE id < 2048")
    assert duck.sql("SELECT typeof(y) FROM s LIMIT 1").fetchall() == [("FLOAT[3]",)]
    stored = np.array([r[0] for r in duck.sql("SELECT y FROM s ORDER BY id").fetchall()], dtype=np.float32)
    np.testing.assert_allclose(stored, expected[:2048], rtol=1e-6, atol=1e-6)


def test_dense_runner_gives_run_batch_s_output_bit_for_bit(scorer_and_regressor):
    session = make_session(scorer_and_regressor[0], threads=1)
    signature = signature_of(session)
    run = dense_runner(session, signature, 0, "s@1")
    x = np.random.default_rng(4).standard_normal((300, 8)).astype(np.float32)
    y = run(x)
    assert y.shape == (300, 3) and y.dtype == np.float32
    assert y.tobytes() == run_batch(session, signature, x, 0, "s@1").tobytes()
    with pytest.raises(dbdl.ShapeMismatch, match="takes 8 features per row.*got 5"):
        run(x[:, :5].copy())


def test_dense_runner_leaves_other_models_to_the_feeding_layer():
    def sig(inputs, outputs, batch=None):
        return Signature(tuple(TensorSpec(n, d, s) for n, d, s in inputs),
                         tuple(TensorSpec(n, d, s) for n, d, s in outputs), batch)

    plain = ([("x", "float32", (8,))], [("y", "float32", (3,))])
    assert dense_runner(None, sig(*plain)) is not None
    assert dense_runner(None, sig(*plain, batch=4)) is None  # fixed batch: slices, padded
    assert dense_runner(None, sig([("a", "float32", (4,)), ("b", "float32", (4,))], plain[1])) is None
    assert dense_runner(None, sig([("x", "float64", (8,))], plain[1])) is None  # fed through _cast
    assert dense_runner(None, sig([("x", "float32", (None,))], plain[1])) is None  # sequences
    assert dense_runner(None, sig(plain[0], [("y", "str", (1,))])) is None  # class names
    assert dense_runner(None, sig(plain[0], [("y", "float32", (None,))])) is None


def test_dense_matrix_is_a_view_of_the_arrow_buffer_or_none():
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    feats = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4)
    view = dense_matrix(feats)
    assert view.shape == (10, 4) and np.shares_memory(view, np.frombuffer(feats.values.buffers()[1], np.float32))
    np.testing.assert_array_equal(dense_matrix(feats.slice(3, 5)), x[3:8])
    np.testing.assert_array_equal(dense_matrix(pa.chunked_array([feats])), x)
    assert dense_matrix(pa.chunked_array([feats.slice(0, 5), feats.slice(5)])) is None
    assert dense_matrix(pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4, mask=pa.array([True] + [False] * 9))) is None
    holes = pa.array([*x.ravel()[:-1], None], pa.float32())
    assert dense_matrix(pa.FixedSizeListArray.from_arrays(holes, 4)) is None
    assert dense_matrix(pa.FixedSizeListArray.from_arrays(pa.array(x.ravel().astype(np.float64)), 4)) is None
    assert dense_matrix(feats.slice(0, 0)) is None


def test_dense_result_builds_each_kind_on_the_output_buffer():
    y = np.array([[0.1, 0.9, 0.0], [0.7, 0.2, 0.1]], dtype=np.float32)
    array = dense_result("array", y, pa.list_(pa.float32(), 3))
    assert array.type == pa.list_(pa.float32(), 3) and array.to_pylist() == y.tolist()
    assert dense_result("class", y, pa.int64()).to_pylist() == [1, 0]
    scalar = dense_result("scalar", y[:, :1].astype(np.float64), pa.float32())
    assert scalar.type == pa.float32() and scalar.to_pylist() == pytest.approx([0.1, 0.7])


def test_column_slice_is_a_view_of_the_rows_in_either_layout():
    from dbdl_udf.runtime import Column

    fixed = Column(np.arange(12, dtype=np.float32), np.array([True, False, True, True]), width=3)
    part = fixed.slice(1, 3)
    assert np.shares_memory(part.values, fixed.values) and part.valid.tolist() == [False, True]
    assert part.matrix().tolist() == [[3, 4, 5], [6, 7, 8]] and len(fixed.slice(2, 99)) == 2
    ragged = Column(np.arange(6, dtype=np.int64), np.ones(3, bool), offsets=[0, 1, 3, 6])
    tail = ragged.slice(1, 3)
    assert np.shares_memory(tail.values, ragged.values)
    assert tail.offsets.tolist() == [0, 2, 5] and tail.values.tolist() == [1, 2, 3, 4, 5]
