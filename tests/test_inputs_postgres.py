"""PostgreSQL: every input a table holds (issue 11, "Input types" and "Variable-length inputs").

Each test builds a small ONNX model of the dtype in question, a table of the PostgreSQL types that
feed it, and compares what dbdl returns — raw SQL sent through psycopg as a psql user would, and
db.sql through the planner (udf and dl) — with onnxruntime (or torch) on the same values.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import psycopg
import pytest
import torch
from conftest import run_onnx
from onnx import TensorProto, helper, numpy_helper

import dbdl

BIG = 1 << 24  # float32 has 24 bits of mantissa: ids above this do not survive a trip through real


def _model(inputs, nodes, outputs, inits=()):
    graph = helper.make_graph(nodes, "m", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def ids_model(elem=TensorProto.INT64, dtype=np.int64) -> bytes:
    """y = float(ids - 2^24): exact only if every id reached the model exactly."""
    return _model([_vi("ids", elem, ["n", 4])],
                  [helper.make_node("Sub", ["ids", "c"], ["d"]), helper.make_node("Cast", ["d"], ["y"], to=1)],
                  [_vi("y", TensorProto.FLOAT, ["n", 4])], [numpy_helper.from_array(np.array(BIG, dtype), "c")])


def f64_model() -> bytes:
    """y = float(x - 1e8) in double precision: 1e8 + 0.25 - 1e8 is 0.25 there, 0 through real."""
    return _model([_vi("x", TensorProto.DOUBLE, ["n", 3])],
                  [helper.make_node("Sub", ["x", "c"], ["d"]), helper.make_node("Cast", ["d"], ["y"], to=1)],
                  [_vi("y", TensorProto.FLOAT, ["n", 3])], [numpy_helper.from_array(np.array(1e8), "c")])


def bool_model() -> bytes:
    return _model([_vi("b", TensorProto.BOOL, ["n", 3])], [helper.make_node("Cast", ["b"], ["y"], to=1)],
                  [_vi("y", TensorProto.FLOAT, ["n", 3])])


W12 = np.random.default_rng(0).standard_normal((12, 2)).astype(np.float32)


def image_model(elem=TensorProto.UINT8) -> bytes:
    """[n, 3, 2, 2] pixels -> float -> flatten -> [n, 2]."""
    nodes = ([helper.make_node("Cast", ["img"], ["f"], to=1)] if elem != TensorProto.FLOAT
             else [helper.make_node("Identity", ["img"], ["f"])])
    nodes += [helper.make_node("Reshape", ["f", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "W"], ["y"])]
    return _model([_vi("img", elem, ["n", 3, 2, 2])], nodes, [_vi("y", TensorProto.FLOAT, ["n", 2])],
                  [numpy_helper.from_array(np.array([-1, 12], np.int64), "shape"), numpy_helper.from_array(W12, "W")])


def multi_model(with_mask: bool = False) -> bytes:
    """ids int64 [n, 4] (minus 2^24), x float [n, 3] (and mask bool [n, 2]) -> concat -> [n, 7 (9)]."""
    inputs = [_vi("ids", TensorProto.INT64, ["n", 4]), _vi("x", TensorProto.FLOAT, ["n", 3])]
    nodes = [helper.make_node("Sub", ["ids", "c"], ["d"]), helper.make_node("Cast", ["d"], ["fd"], to=1)]
    parts = ["fd", "x"]
    if with_mask:
        inputs.append(_vi("mask", TensorProto.BOOL, ["n", 2]))
        nodes.append(helper.make_node("Cast", ["mask"], ["fm"], to=1))
        parts.append("fm")
    nodes.append(helper.make_node("Concat", parts, ["y"], axis=1))
    width = 9 if with_mask else 7
    return _model(inputs, nodes, [_vi("y", TensorProto.FLOAT, ["n", width])],
                  [numpy_helper.from_array(np.array(BIG, np.int64), "c")])


def sequence_model() -> bytes:
    """ids int64 [n, L] -> y = sum over the sequence: padding with pad_id p adds p per padded step."""
    return _model([_vi("ids", TensorProto.INT64, ["n", "L"])],
                  [helper.make_node("Cast", ["ids"], ["f"], to=1),
                   helper.make_node("ReduceSum", ["f", "axes"], ["y"], keepdims=1)],
                  [_vi("y", TensorProto.FLOAT, ["n", 1])], [numpy_helper.from_array(np.array([1], np.int64), "axes")])


class TextClassificationModel(torch.nn.Module):
    """The AG News tutorial's model: EmbeddingBag (mean) + Linear, fed flat tokens and offsets."""

    def __init__(self, vocab: int = 95_000, dim: int = 8, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.EmbeddingBag(vocab, dim, mode="mean")
        self.fc = torch.nn.Linear(dim, classes)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))


@pytest.fixture(scope="module")
def text_model():
    module = TextClassificationModel().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.tensor([1, 2, 3]), torch.tensor([0, 2])), buf, dynamo=False,
                          input_names=["text", "offsets"], output_names=["y"],
                          dynamic_axes={"text": {0: "T"}, "offsets": {0: "B"}, "y": {0: "B"}})
    return module, buf.getvalue()


@pytest.fixture
def pg(pg_server, request):
    """A fresh migrated database: (url, psycopg connection as the owner, dbdl Database)."""
    name = f"dbdl_in_{request.node.name[:34].lower().replace('[', '_').replace(']', '').replace('-', '_')}"
    url = pg_server.create_database(name)
    db = dbdl.connect(url)
    con = psycopg.connect(url, autocommit=True)
    yield url, con, db
    con.close()
    db.close()
    pg_server.drop_database(name)


def values(con, sql, params=()):
    return [r[0] for r in con.execute(sql, params).fetchall()]


def ids_rows():
    rng = np.random.default_rng(1)
    return (BIG + rng.integers(-3, 4, size=(6, 4))).astype(np.int64)


# -- 1. input types ------------------------------------------------------------------------------


@pytest.mark.parametrize("sql_type,elem,dtype", [("bigint[]", TensorProto.INT64, np.int64),
                                                 ("integer[]", TensorProto.INT32, np.int32)])
def test_integer_ids_reach_integer_inputs_exactly(pg, sql_type, elem, dtype):
    url, con, db = pg
    db.models.register("ids", ids_model(elem, dtype))
    ids = ids_rows()
    con.execute(f"CREATE TABLE t (id bigint, ids {sql_type})")
    for i, row in enumerate(ids):
        con.execute("INSERT INTO t VALUES (%s, %s)", (i, row.tolist()))
    con.execute("INSERT INTO t VALUES (99, NULL), (98, %s)", ([1, None, 3, 4],))
    expected = (ids - BIG).astype(np.float32)
    got = values(con, "SELECT dbdl.predict_array('ids', ids) FROM t WHERE id < 90 ORDER BY id")
    np.testing.assert_array_equal(got, expected)  # exact: a real[] on the way would round them
    assert values(con, "SELECT dbdl.predict_array('ids', ids) FROM t WHERE id > 90 ORDER BY id") == [None, None]
    con.execute("CALL dbdl.predict_into('ids', 'SELECT id, ids FROM t', 'out')")
    np.testing.assert_array_equal(values(con, "SELECT prediction FROM out WHERE id < 90 ORDER BY id"), expected)
    assert values(con, "SELECT prediction FROM out WHERE id > 90 ORDER BY id") == [None, None]
    for strategy in ("udf", "dl"):
        rows = db.sql("SELECT id, predict_array('ids', ids) AS p FROM t ORDER BY id", strategy=strategy).fetchall()
        np.testing.assert_array_equal([r[1] for r in rows if r[0] < 90], expected)
        assert [r[1] for r in rows if r[0] > 90] == [None, None], strategy


def test_double_precision_reaches_float64_inputs_exactly(pg):
    url, con, db = pg
    db.models.register("f64", f64_model())
    x = np.array([[1e8 + 0.25, 1e8 - 0.5, 1e8 + 1.75], [1e8, 1e8 + 3.125, 1e8 - 2.0]])
    con.execute("CREATE TABLE t (id bigint, x double precision[])")
    for i, row in enumerate(x):
        con.execute("INSERT INTO t VALUES (%s, %s)", (i, row.tolist()))
    expected = (x - 1e8).astype(np.float32)
    np.testing.assert_array_equal(values(con, "SELECT dbdl.predict_array('f64', x) FROM t ORDER BY id"), expected)
    con.execute("CALL dbdl.predict_into('f64', 'SELECT id, x FROM t', 'out')")
    np.testing.assert_array_equal(values(con, "SELECT prediction FROM out ORDER BY id"), expected)
    for strategy in ("udf", "dl"):
        got = [r[0] for r in db.sql("SELECT predict_array('f64', x) FROM t ORDER BY id", strategy=strategy).fetchall()]
        np.testing.assert_array_equal(got, expected)


def test_boolean_arrays_feed_bool_inputs_and_only_those(pg, mlp_onnx):
    url, con, db = pg
    db.models.register("b", bool_model())
    db.models.register("mlp", mlp_onnx)
    con.execute("CREATE TABLE t (id bigint, b boolean[])")
    con.execute("INSERT INTO t VALUES (1, '{t,f,t}'), (2, '{f,f,t}'), (3, '{t,NULL,f}'), (4, NULL)")
    expected = [[1, 0, 1], [0, 0, 1], None, None]
    assert values(con, "SELECT dbdl.predict_array('b', b) FROM t ORDER BY id") == expected
    con.execute("CALL dbdl.predict_into('b', 'SELECT id, b FROM t', 'out')")
    assert values(con, "SELECT prediction FROM out ORDER BY id") == expected
    for strategy in ("udf", "dl"):
        assert [r[0] for r in db.sql("SELECT predict_array('b', b) FROM t ORDER BY id",
                                     strategy=strategy).fetchall()] == expected
    with pytest.raises(psycopg.errors.DatatypeMismatch, match=r"dbdl.DTypeMismatch: .*booleans"):
        con.execute("SELECT dbdl.predict('mlp', '{t,f,t,f,t,f,t,f}'::boolean[])")


def test_bytea_image_bytes_feed_uint8_and_float_models(pg):
    url, con, db = pg
    db.models.register("u8", image_model(TensorProto.UINT8))
    db.models.register("f32", image_model(TensorProto.FLOAT))
    pixels = np.random.default_rng(2).integers(0, 256, size=(5, 3, 2, 2), dtype=np.uint8)
    con.execute("CREATE TABLE t (id bigint, img bytea, img_f bytea, img_s smallint[])")
    for i, p in enumerate(pixels):
        con.execute("INSERT INTO t VALUES (%s, %s, %s, %s)",
                    (i, p.tobytes(), p.astype("<f4").tobytes(), p.reshape(-1).astype(int).tolist()))
    con.execute("INSERT INTO t VALUES (9, NULL, NULL, NULL)")
    expected = run_onnx(image_model(TensorProto.UINT8), {"img": pixels})
    np.testing.assert_allclose(expected, run_onnx(image_model(TensorProto.FLOAT), {"img": pixels.astype(np.float32)}))
    for model in ("u8", "f32"):
        for column in ("img", "img_f", "img_s"):  # uint8 bytes, float32 bytes (as ever), smallint[]
            got = values(con, f"SELECT dbdl.predict_array('{model}', {column}) FROM t ORDER BY id")
            np.testing.assert_allclose(got[:5], expected, rtol=1e-6, err_msg=f"{model} {column}")
            assert got[5] is None
        con.execute(f"CALL dbdl.predict_into('{model}', 'SELECT id, img FROM t', 'out_{model}')")
        got = values(con, f"SELECT prediction FROM out_{model} ORDER BY id")
        np.testing.assert_allclose(got[:5], expected, rtol=1e-6)
        for strategy in ("udf", "dl"):
            got = [r[0] for r in db.sql(f"SELECT predict_array('{model}', img) FROM t ORDER BY id",
                                        strategy=strategy).fetchall()]
            np.testing.assert_allclose(got[:5], expected, rtol=1e-6, err_msg=f"{model} {strategy}")
    # the planner's own choice scores them too; relation-centric SQL cannot read bytes and says so
    got = [r[0] for r in db.sql("SELECT predict_array('f32', img) FROM t ORDER BY id").fetchall()]
    np.testing.assert_allclose(got[:5], expected, rtol=1e-6)
    with pytest.raises(dbdl.StrategyUnavailable, match="bytea"):
        db.sql("SELECT predict_array('f32', img) FROM t", strategy="relation")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"12 features per row as a bytea of 48 bytes.*"
                                                                    r"or of 12 bytes \(uint8\); got a row of 5 bytes"):
        con.execute("SELECT dbdl.predict_array('u8', '\\x0102030405'::bytea)")


def test_multi_dimensional_arrays_and_flat_rows_reshaped(pg):
    url, con, db = pg
    db.models.register("f32", image_model(TensorProto.FLOAT))
    pixels = np.random.default_rng(3).standard_normal((4, 3, 2, 2)).astype(np.float32)
    con.execute("CREATE TABLE t (id bigint, nested real[], flat real[])")
    for i, p in enumerate(pixels):
        con.execute("INSERT INTO t VALUES (%s, %s, %s)", (i, p.tolist(), p.reshape(-1).tolist()))
    assert values(con, "SELECT array_dims(nested) FROM t LIMIT 1") == ["[1:3][1:2][1:2]"]
    expected = run_onnx(image_model(TensorProto.FLOAT), {"img": pixels})
    for column in ("nested", "flat"):
        np.testing.assert_allclose(values(con, f"SELECT dbdl.predict_array('f32', {column}) FROM t ORDER BY id"),
                                   expected, rtol=1e-5)
        con.execute(f"CALL dbdl.predict_into('f32', 'SELECT id, {column} FROM t', 'out_{column}')")
        np.testing.assert_allclose(values(con, f"SELECT prediction FROM out_{column} ORDER BY id"), expected, rtol=1e-5)
        for strategy in ("udf", "dl"):
            got = [r[0] for r in db.sql(f"SELECT predict_array('f32', {column}) FROM t ORDER BY id",
                                        strategy=strategy).fetchall()]
            np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the same 12 values in another layout, and a size that does not fit: errors naming both shapes
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"\[3, 2, 2\].*\[2, 3, 2\]"):
        con.execute("SELECT dbdl.predict_array('f32', %s::real[])", (np.zeros((2, 3, 2)).tolist(),))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"\[3, 2, 2\].*got 10 values"):
        con.execute("SELECT dbdl.predict_array('f32', %s::real[])", (list(range(10)),))
    with pytest.raises(dbdl.ShapeMismatch, match=r"\[3, 2, 2\]"):
        db.sql("SELECT predict_array('f32', ARRAY[1, 2, 3]::real[])", strategy="udf")


# -- 2. several columns in one call ----------------------------------------------------------------


def _multi_table(con, with_mask=False):
    rng = np.random.default_rng(4)
    ids = ids_rows()[:5]
    x = rng.standard_normal((5, 3)).astype(np.float32)
    mask = rng.integers(0, 2, size=(5, 2)).astype(bool)
    con.execute("CREATE TABLE t (id bigint, ids bigint[], x real[], mask boolean[])")
    for i in range(5):
        con.execute("INSERT INTO t VALUES (%s, %s, %s, %s)", (i, ids[i].tolist(), x[i].tolist(), mask[i].tolist()))
    con.execute("INSERT INTO t VALUES (5, NULL, '{1,2,3}', '{t,f}'), (6, '{1,2,3,4}', '{1,NULL,3}', '{t,f}')")
    parts = [(ids - BIG).astype(np.float32), x] + ([mask.astype(np.float32)] if with_mask else [])
    return np.concatenate(parts, axis=1)


def test_several_columns_of_mixed_types_in_one_call(pg):
    url, con, db = pg
    db.models.register("two", multi_model())
    db.models.register("three", multi_model(with_mask=True))
    expected2 = _multi_table(con)
    expected3 = np.concatenate([expected2, _mask_of(con)], axis=1)
    forms = {
        "two": ["dbdl.predict_array('two', ids, x)", "dbdl.predict_array('two', ROW(ids, x))"],
        "three": ["dbdl.predict_array('three', ROW(ids, x, mask))"],
    }
    for model, calls in forms.items():
        expected = expected2 if model == "two" else expected3
        for call in calls:
            got = values(con, f"SELECT {call} FROM t ORDER BY id")
            np.testing.assert_allclose(got[:5], expected, rtol=1e-6, err_msg=call)
            assert got[5:] == [None, None], call
        cols = "ids, x" if model == "two" else "ids, x, mask"
        con.execute(f"CALL dbdl.predict_into('{model}', 'SELECT id, {cols} FROM t', 'out_{model}')")
        got = values(con, f"SELECT prediction FROM out_{model} ORDER BY id")
        np.testing.assert_allclose(got[:5], expected, rtol=1e-6)
        assert got[5:] == [None, None]
        for strategy in ("udf", "dl"):
            got = [r[0] for r in db.sql(f"SELECT predict_array('{model}', {cols}) FROM t ORDER BY id",
                                        strategy=strategy).fetchall()]
            np.testing.assert_allclose(got[:5], expected, rtol=1e-6, err_msg=f"{model} {strategy}")
            assert got[5:] == [None, None]
    # three arguments of different types have no native form (it would coerce them): ROW(...) takes them
    with pytest.raises(psycopg.errors.UndefinedFunction):
        con.execute("SELECT dbdl.predict_array('three', ids, x, mask) FROM t")
    with pytest.raises(dbdl.DTypeMismatch, match=r"ROW\(a, b, c\)"):  # what the Python client says of it
        db.backend.run_query("SELECT dbdl.predict_array('three', ids, x, mask) FROM t")
    # db.sql plans it into the ROW form, with the model literal or named by a column
    for model_ref in ("'three'", "m.name"):
        got = [r[0] for r in db.sql(f"SELECT predict_array({model_ref}, ids, x, mask) FROM t, "
                                    "(SELECT 'three' AS name) AS m ORDER BY id", strategy="udf").fetchall()]
        np.testing.assert_allclose(got[:5], expected3, rtol=1e-6, err_msg=model_ref)
    # no row identity (a CTE): the DL-centric side table is keyed by the arguments themselves
    got = [r[0] for r in db.sql("WITH s AS (SELECT * FROM t) SELECT predict_array('two', ids, x) FROM s ORDER BY id",
                                strategy="dl").fetchall()]
    np.testing.assert_allclose(got[:5], expected2, rtol=1e-6)
    assert got[5:] == [None, None]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"takes 2 inputs .*got 3 columns"):
        con.execute("SELECT dbdl.predict_array('two', ROW(ids, x, mask)) FROM t")
    db.models.register("img", image_model())
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"takes 1 input"):
        con.execute("SELECT dbdl.predict_array('img', ROW(ids, x)) FROM t")


def _mask_of(con):
    return np.array(values(con, "SELECT mask FROM t WHERE id < 5 ORDER BY id"), dtype=np.float32)


# -- 3. variable-length inputs -------------------------------------------------------------------


def test_token_lists_padded_per_batch_with_the_models_pad_id(pg):
    url, con, db = pg
    db.models.register("seq", sequence_model())
    db.models.set_options("seq", pad_id=1000)
    rows = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [94_000, 2], None, [1, None]]
    con.execute("CREATE TABLE t (id bigint, ids bigint[])")
    for i, r in enumerate(rows):
        con.execute("INSERT INTO t VALUES (%s, %s)", (i, r))
    longest = 5
    batched = [float(sum(r) + 1000 * (longest - len(r))) for r in rows[:4]]
    # row at a time: each call is its own batch, so nothing is padded
    assert values(con, "SELECT dbdl.predict('seq', ids) FROM t ORDER BY id") == \
        [float(np.float32(sum(r))) for r in rows[:4]] + [None, None]
    con.execute("CALL dbdl.predict_into('seq', 'SELECT id, ids FROM t', 'out', 'scalar')")
    assert values(con, "SELECT prediction FROM out ORDER BY id") == [float(np.float32(v)) for v in batched] + [None, None]
    got = [r[0] for r in db.sql("SELECT predict('seq', ids) FROM t ORDER BY id", strategy="dl").fetchall()]
    assert got == [float(np.float32(v)) for v in batched] + [None, None]


def test_embedding_bag_gets_flat_tokens_and_offsets(pg, text_model):
    url, con, db = pg
    module, onnx_bytes = text_model
    db.models.register("news", onnx_bytes)
    rng = np.random.default_rng(5)
    rows = [rng.integers(0, 95_000, size=int(k)).tolist() for k in rng.integers(1, 12, size=20)]
    con.execute("CREATE TABLE t (id bigint, tokens integer[], label bigint)")
    for i, r in enumerate(rows):
        con.execute("INSERT INTO t VALUES (%s, %s, %s)", (i, r, i % 4))
    con.execute("INSERT INTO t VALUES (20, NULL, 0)")
    with torch.no_grad():
        flat = torch.tensor([t for r in rows for t in r])
        offsets = torch.tensor(np.cumsum([0] + [len(r) for r in rows[:-1]]))
        expected = module(flat, offsets).numpy()
    got = values(con, "SELECT dbdl.predict_array('news', tokens) FROM t ORDER BY id")
    np.testing.assert_allclose(got[:20], expected, rtol=1e-5, atol=1e-6)
    assert got[20] is None
    con.execute("CALL dbdl.predict_into('news', 'SELECT id, tokens FROM t', 'out', 'class')")
    assert values(con, "SELECT prediction FROM out ORDER BY id") == expected.argmax(axis=1).tolist() + [None]
    for strategy in ("udf", "dl"):
        got = [r[0] for r in db.sql("SELECT predict_class('news', tokens) FROM t ORDER BY id",
                                    strategy=strategy).fetchall()]
        assert got == expected.argmax(axis=1).tolist() + [None], strategy
    # accuracy computed in SQL
    accuracy = con.execute("SELECT avg((dbdl.predict_class('news', tokens) = label)::int) FROM t "
                           "WHERE tokens IS NOT NULL").fetchone()[0]
    assert float(accuracy) == pytest.approx(float(np.mean(expected.argmax(axis=1) == np.arange(20) % 4)))


# -- 4. errors -----------------------------------------------------------------------------------


def test_wrong_types_get_dbdl_errors_naming_the_fix(pg):
    url, con, db = pg
    db.models.register("ids", ids_model())
    with pytest.raises(psycopg.errors.DatatypeMismatch, match=r"dbdl.DTypeMismatch: .*whole numbers"):
        con.execute("SELECT dbdl.predict_array('ids', '{1.5,2,3,4}'::real[])")
    with pytest.raises(psycopg.errors.DatatypeMismatch, match=r"dbdl.DTypeMismatch: .*text.*cast"):
        con.execute("SELECT dbdl.predict_array('ids', '{a,b,c,d}'::text[])")
    with pytest.raises(psycopg.errors.DatatypeMismatch, match=r"dbdl.DTypeMismatch: .*int64.*booleans"):
        con.execute("SELECT dbdl.predict_array('ids', '{t,f,t,f}'::boolean[])")
    with pytest.raises(dbdl.DTypeMismatch, match="cast"):
        db.sql("SELECT predict_array('ids', '{a,b,c,d}'::text[])", strategy="udf")
    with pytest.raises(dbdl.ShapeMismatch):
        db.sql("CALL dbdl.predict_into('ids', 'SELECT 1::bigint AS id, ''{1,2}''::bigint[] AS ids', 'z')")
    assert values(con, "SELECT pg_catalog.to_regclass('z')::text") == [None]  # nothing half-written


# -- 5. hostile callers ----------------------------------------------------------------------------

from test_security import assert_nothing_ran_as_another_role, connect, evil_body, world  # noqa: E402,F401


@pytest.mark.parametrize("attacker", ["user", "admin"])
def test_nothing_a_caller_plants_runs_in_the_new_input_forms(world, attacker):
    """Better-matching record_send / array_send / sha256 overloads, operators on the new array types,
    shadowing predict overloads of the new arities, in public and in an attacker's schema searched
    first; victims (the owner and another dbdl_user) then use every new form. None of the planted
    code runs as anyone but the attacker, and the victims' results are the model's."""
    role = world["roles"][attacker]
    with dbdl.connect(world["url"]) as db:
        db.models.register("two", multi_model())
        db.models.register("ids", ids_model())
        db.models.set_options("ids", cache=True)
        db.sql("CREATE TABLE mt (id bigint, ids bigint[], x real[], img bytea)")
        rows = ids_rows()[:4]
        for i, r in enumerate(rows):
            db.sql("INSERT INTO mt VALUES (?, ?, ?, ?)", [i, r.tolist(), [0.5, float(i), -1.0], bytes(range(12))])
        db.sql("GRANT SELECT ON mt TO PUBLIC")
        db.sql(f"CREATE SCHEMA planted AUTHORIZATION {role}")
        db.sql("GRANT USAGE ON SCHEMA planted TO PUBLIC")
    expected = np.concatenate([(rows - BIG).astype(np.float32),
                               np.array([[0.5, i, -1.0] for i in range(4)], np.float32)], axis=1)
    with connect(world, attacker) as con:
        con.execute("CREATE FUNCTION public.c(bigint[]) RETURNS real[] LANGUAGE sql RETURN NULL::real[]")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # casts between built-in types: owners only
            con.execute("CREATE CAST (bigint[] AS real[]) WITH FUNCTION public.c(bigint[]) AS IMPLICIT")
        for schema in ("public", "planted"):
            for fn, args, returns in (("record_send", "record", "bytea"), ("array_send", "bigint[]", "bytea"),
                                      ("array_send", "boolean[]", "bytea"), ("array_send", "integer[]", "bytea"),
                                      ("array_send", "anyarray", "bytea"), ("sha256", "bytea", "bytea")):
                body = evil_body(f"{schema}.{fn}") + "RETURN NULL; END"
                con.execute(f"CREATE FUNCTION {schema}.{fn}({args}) RETURNS {returns} LANGUAGE plpgsql AS $${body}$$")
            for fn in ("predict", "predict_array", "predict_class"):
                for args in ("text, record", "text, anyelement, anycompatible", "text, bigint[], real[]",
                             "text, bigint[]", "text, boolean[]", "text, anyelement, anyelement, anyelement"):
                    con.execute(f"CREATE FUNCTION {schema}.{fn}({args}) RETURNS bigint LANGUAGE plpgsql AS "
                                f"$${evil_body(f'{schema}.{fn}')}RETURN 0; END$$")
            for fn in ("cache_key", "cache_input"):
                con.execute(f"CREATE FUNCTION {schema}.{fn}(bigint[]) RETURNS bytea LANGUAGE plpgsql AS "
                            f"$${evil_body(f'{schema}.{fn}')}RETURN NULL; END$$")
            for op, left, right in (("=", "bigint[]", "bigint[]"), ("=", "record", "record"), ("-", "bigint", "bigint")):
                fn = f"op_{abs(hash((schema, op, left)))}"
                con.execute(f"CREATE FUNCTION {schema}.{fn}({left}, {right}) RETURNS boolean LANGUAGE plpgsql AS "
                            f"$${evil_body(f'{schema} {op}')}RETURN false; END$$")
                con.execute(f"CREATE OPERATOR {schema}.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = {schema}.{fn})")
    for who in (None, "analyst"):
        for path in ('"$user", public', "planted, public, pg_catalog", '"$user", dbdl, planted, public'):
            with connect(world, who) as con:
                con.execute(f"SET search_path = {path}")
                for call in ("dbdl.predict_array('two', ids, x)", "dbdl.predict_array('two', ROW(ids, x))"):
                    got = [r[0] for r in con.execute(f"SELECT {call} FROM public.mt ORDER BY id").fetchall()]
                    np.testing.assert_allclose(got, expected, rtol=1e-6)
                got = [r[0] for r in con.execute("SELECT dbdl.predict_array('ids', ids) FROM public.mt ORDER BY id")]
                np.testing.assert_array_equal(got, (rows - BIG).astype(np.float32))
                con.execute("SELECT dbdl.predict_class('two', ids, x), dbdl.predict_array('ids', ids::integer[]), "
                            "dbdl.cache_key(ids), dbdl.cache_input(ids) FROM public.mt").fetchall()
                con.execute("SELECT count(*) FROM dbdl.cache_fill('ids', ARRAY(SELECT dbdl.cache_input(ids) "
                            "FROM public.mt))").fetchall()
                target = f"public.victim_{next(_victims)}"
                con.execute(f"CALL dbdl.predict_into('two', 'SELECT id, ids, x FROM public.mt', '{target}')")
                got = [r[0] for r in con.execute(f"SELECT prediction FROM {target} ORDER BY id")]
                np.testing.assert_allclose(got, expected, rtol=1e-6)
        url = world["server"].url(world["db"], world["roles"][who]) if who else world["url"]
        with dbdl.connect(url, migrate=False) as db:
            db.sql("SET search_path = planted, public, pg_catalog")
            for strategy in ("udf", "dl"):
                got = [r[0] for r in db.sql("SELECT predict_array('two', ids, x) FROM public.mt ORDER BY id",
                                            strategy=strategy).fetchall()]
                np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert_nothing_ran_as_another_role(world, attacker)


_victims = iter(range(1_000_000))


def test_cache_fill_bytes_have_one_meaning():
    """dbdl.cache_fill keys each input by the SHA-256 of its bytes, so a byte string must decode one
    way only: a bytea row (4w or w bytes) that is also a well-formed array_send() is refused."""
    import struct

    from dbdl_udf.postgres import decode_inputs
    from dbdl_udf.runtime import Signature, TensorSpec

    sig = Signature((TensorSpec("x", "float32", (10,)),), (TensorSpec("y", "float32", (2,)),))
    bool4 = struct.pack(">iiiii", 1, 0, 16, 4, 1) + b"".join(struct.pack(">i", 1) + b"\x01" for _ in range(4))
    assert len(bool4) == 40  # the length of a float32 row of 10 values
    with pytest.raises(dbdl.ShapeMismatch, match="no single meaning"):
        decode_inputs([bool4], sig)
    np.testing.assert_array_equal(decode_inputs([np.arange(10, dtype="<f4").tobytes()], sig)[0].values, np.arange(10))
    assert decode_inputs([bytes(range(10))], sig)[0].values.dtype == np.uint8
    real10 = struct.pack(">iiiii", 1, 0, 700, 10, 1) + b"".join(struct.pack(">if", 4, v) for v in range(10))
    np.testing.assert_array_equal(decode_inputs([real10], sig)[0].values, np.arange(10))
