"""Relation-centric execution on Spark: the model compiled to Spark SQL through sqlglot's Spark dialect
(no Python worker anywhere in the executed plan), its weight tables broadcast to the executors, and
predict values equal to onnxruntime's. Spark only: the same checks of the other backends' SQL live in
test_ir*.py."""

from __future__ import annotations

import re
import warnings

import numpy as np
import onnx
import pytest
import sqlglot
import sqlglot.expressions as exp
from conftest import BACKENDS, export_onnx, make_mlp, run_onnx
from onnx import TensorProto, helper, numpy_helper

import dbdl
from dbdl.planner import plan_statement
from dbdl.query import parse

#: the physical operators through which Spark runs Python (UDFs, mapInArrow / mapInPandas, ...)
PYTHON_OPERATORS = re.compile(r"ArrowEvalPython|BatchEvalPython|PythonUDF|MapInArrow|MapInPandas|"
                              r"FlatMapGroupsInPandas|FlatMapCoGroupsInPandas|AggregateInPandas|WindowInPandas|"
                              r"PythonMapInArrow|ArrowEvalPythonUDTF|BatchEvalPythonUDTF", re.I)


@pytest.fixture
def spark_db(tmp_path, request):
    database = dbdl.connect(BACKENDS["spark"](tmp_path, request))
    yield database
    database.close()


def planned_sql(db, sql: str, strategy: str) -> str:
    """The Spark SQL a statement is planned into (weight tables written on the way)."""
    return plan_statement(db.backend, parse(sql, db.backend.dialect)[0], strategy).sql


def physical_plan(db, sql: str) -> str:
    """Spark's physical plan of ``sql`` (EXPLAIN: planned, not run)."""
    return db.backend.fetchall("EXPLAIN " + sql)[0][0]


def weight_scans_not_broadcast(plan: str, data_database: str) -> list[str]:
    """The scans of weight tables (``<data_database>.rel_…``) in an EXPLAIN tree whose nearest
    exchange above is not a BroadcastExchange (each line's parent: the nearest line above it that
    is indented less)."""
    lines = [line for line in plan.splitlines() if line.strip()]
    depth = [len(line) - len(line.lstrip(" :+-")) for line in lines]
    wrong = []
    for k, line in enumerate(lines):
        if not re.search(rf"Scan \w+ \S*{data_database}\.rel_", line):
            continue
        level, exchange = depth[k], None
        for j in range(k - 1, -1, -1):
            if depth[j] < level:
                level = depth[j]
                if "Exchange" in lines[j]:
                    exchange = lines[j].strip(" :+-")
                    break
        if exchange is None or not exchange.startswith("BroadcastExchange"):
            wrong.append(line.strip(" :+-")[:120])
    return wrong


def check_pure_spark_sql(db, sql: str, strategy: str) -> str:
    """The statement's planned SQL: it runs no Python (no Python operator in Spark's physical plan),
    and every weight table it reads sits under a BroadcastExchange (a BROADCAST hint on each)."""
    text = planned_sql(db, sql, strategy)
    calls = {f.name.lower() for f in sqlglot.parse_one(text, read=db.backend.dialect).find_all(exp.Anonymous)}
    assert not {c for c in calls if c.startswith(("dbdl_", "predict"))}, calls  # no UDF left to call
    assert re.search(r"/\*\+ BROADCAST\(", text), "no BROADCAST hint for the weight tables"
    plan = physical_plan(db, text)
    assert not PYTHON_OPERATORS.search(plan), PYTHON_OPERATORS.search(plan)[0]
    assert f"{db.backend.data_schema}.rel_" in plan  # weight tables are read ...
    assert weight_scans_not_broadcast(plan, db.backend.data_schema) == []  # ... each through a broadcast
    return text


def test_an_mlp_runs_as_spark_sql_with_broadcast_weights(spark_db):
    db = spark_db
    onnx_bytes = export_onnx(make_mlp((8, 16, 3), seed=4), 8)
    x = np.random.default_rng(4).standard_normal((12, 8)).astype(np.float32)
    db.create_table("t", {"id": np.arange(len(x)), "feats": x})
    db.models.register("m", onnx_bytes)
    want = run_onnx(onnx_bytes, {"x": x})
    sql = "SELECT id, predict_array('m', feats) FROM t ORDER BY id"
    for layout in db.backend.relational.layouts:  # element (joins) and blocked (dot products)
        check_pure_spark_sql(db, sql, f"relation:{layout}")
        got = db.sql(sql, strategy=f"relation:{layout}").fetchall()
        assert [r[0] for r in got] == list(range(len(x)))
        np.testing.assert_allclose(np.array([r[1] for r in got], np.float32), want, rtol=1e-5, atol=1e-5,
                                   err_msg=layout)


def _forest():
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    from dbdl_udf.adapt import adapt

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    forest = RandomForestClassifier(4, max_depth=3, random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = to_onnx(forest, X[:1], target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString()
    import onnxruntime as ort

    adapted = adapt(data, lambda b: ort.InferenceSession(b, providers=["CPUExecutionProvider"])).onnx_bytes
    return adapted, X[::10]


def test_a_forest_runs_as_spark_sql_with_its_node_tables_broadcast(spark_db, monkeypatch):
    from dbdl.ir.ops import _trees

    monkeypatch.setattr(_trees, "CASE_NODES", 0)  # the walk over node tables (joins), not CASE text
    db = spark_db
    adapted, x = _forest()
    db.create_table("t", {"id": np.arange(len(x)), "feats": x})
    db.models.register("forest", adapted)
    session_inputs = onnx.load_from_string(adapted).graph.input[0].name
    probs = run_onnx(adapted, {session_inputs: x}, output=1)
    sql = ("SELECT id, predict_array('forest:probabilities', feats), predict_class('forest:probabilities', feats) "
           "FROM t ORDER BY id")
    check_pure_spark_sql(db, sql, "relation")
    got = db.sql(sql, strategy="relation").fetchall()
    np.testing.assert_allclose(np.array([r[1] for r in got], np.float64), probs, rtol=1e-4, atol=1e-5)
    assert [r[2] for r in got] == np.argmax(probs, axis=1).tolist()


HOSTILE = "x'); DROP TABLE t; --\\"


def test_hostile_names_reach_the_spark_sql_only_quoted(spark_db):
    """A table name and an ONNX input name made to break out of the SQL: the table is named only
    as a quoted identifier, the input name only inside a string literal (the whole-number refusal
    of an integer model), and the statement scores the rows right, leaving every table in place."""
    db = spark_db
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("Cast", [HOSTILE], ["xf"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["xf", "W"], ["y"])],
        "g", [helper.make_tensor_value_info(HOSTILE, TensorProto.INT64, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [numpy_helper.from_array(w, "W")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    db.models.register("ints", proto.SerializeToString())
    ids = np.arange(4 * 5, dtype=np.int64).reshape(5, 4) % 7
    db.create_table("t", {"id": np.arange(5), "feats": ids.astype(np.float64)})
    table = "t`; DROP TABLE t; --"
    quoted = exp.to_identifier(table, quoted=True).sql(dialect=db.backend.dialect)
    db.backend.spark.table("t").createOrReplaceTempView(quoted)
    sql = f"SELECT id, predict_array('ints', feats) FROM {quoted} ORDER BY id"
    text = planned_sql(db, sql, "relation")
    tree = sqlglot.parse_one(text, read=db.backend.dialect)  # one statement, nothing after it
    assert {t.name for t in tree.find_all(exp.Table) if not t.db} >= {table}
    literals = [lit.this for lit in tree.find_all(exp.Literal) if lit.is_string]
    assert any("DROP TABLE t" in lit for lit in literals)  # the input name, inside a message
    assert not any("DROP" in i.name for i in tree.find_all(exp.Identifier) if i.name != table)
    got = db.sql(sql, strategy="relation").fetchall()
    np.testing.assert_allclose(np.array([r[1] for r in got], np.float32), ids.astype(np.float32) @ w, rtol=1e-6)
    assert db.sql("SELECT count(*) FROM t").scalar() == 5
    # the refusal of a value that is not a whole number names the input, as the udf path does
    db.create_table("frac", {"id": np.arange(1), "feats": np.full((1, 4), 0.5)})
    with pytest.raises(dbdl.DTypeMismatch, match="whole numbers"):
        db.sql("SELECT id, predict_array('ints', feats) FROM frac", strategy="relation").fetchall()


ROWS = {  # rid -> the values at positions 0, 1, … (shuffled into the relation below)
    1: [1.0, 3.0, 3.0, 2.0],            # a tie: the first of the largest
    2: [1.0, np.nan, 5.0, np.nan],      # NaN: numpy's argmax stops at the first NaN
    3: [-0.0, 0.0, -1.0, -2.0],         # -0.0 == 0.0: the first
    4: [-np.inf, -np.inf, -np.inf, -5.0],
}


def test_the_spellings_follow_numpy(spark_db):
    """Spark's RELATIONAL spellings over a small (rid, i, v) relation in a shuffled order: the
    collected arrays are in position order, arg-max is numpy's, the dot product, the nonzero count
    and the NULL test are numpy's, integer division is floor division of positions."""
    db = spark_db
    spell = db.backend.relational
    pairs = [(r, i) for r in ROWS for i in range(4)]
    order = np.random.default_rng(0).permutation(len(pairs))
    values = ", ".join(f"({r}, {i}, CAST('{ROWS[r][i]!r}' AS DOUBLE))".replace("'nan'", "'NaN'")
                       .replace("'inf'", "'Infinity'").replace("'-inf'", "'-Infinity'")
                       for r, i in (pairs[k] for k in order))
    rel = f"(SELECT * FROM VALUES {values} AS x(rid, i, v))"
    got = db.backend.fetchall(f"SELECT rid, {spell.argmax}, {spell.collect}, {spell.pack} FROM {rel} GROUP BY rid "
                              "ORDER BY rid")
    for rid, argmax, collected, packed in got:
        want = np.array(ROWS[rid])
        assert argmax == int(np.argmax(want)), rid
        np.testing.assert_array_equal(np.array(packed, np.float64), want)
        np.testing.assert_array_equal(np.array(collected, np.float32), want.astype(np.float32))
    dot = spell.dot.format(a="array(1.5D, 2D, -3D)", b="array(2D, 0.25D, 1D)")
    nonzeros = spell.nonzeros.format(a="f")
    (d, n, m, none, q), = db.backend.fetchall(
        f"SELECT {dot}, (SELECT {nonzeros} FROM VALUES (array(0D, 1D, CAST('NaN' AS DOUBLE), -0D)) AS s(f)), "
        f"(SELECT {nonzeros} FROM (SELECT CAST(NULL AS ARRAY<DOUBLE>) AS f)), "
        f"(SELECT count(*) FROM VALUES (array(1D, NULL)), (array(1D, 2D)) AS s(f) WHERE "
        f"{spell.no_null_elements(exp.column('f')).sql(dialect=db.backend.dialect)}), "
        f"{spell.int_div.format(a='CAST(7 AS BIGINT)', b=2)}")
    assert d == float(np.dot([1.5, 2, -3], [2, 0.25, 1]))
    assert n == int(np.count_nonzero(np.array([0, 1, np.nan, -0.0])))  # NaN is nonzero, -0.0 is zero
    assert m is None and none == 1 and q == 3
