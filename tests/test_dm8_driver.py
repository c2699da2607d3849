"""The DM8 backend's driver-level parts, with no server: URL parsing, the connection error, the
cursor description's types (dmPython's own type objects), LOB values, the error translator, and the
SQL the backend writes itself, rendered through the DM8 dialect and parsed back (a golden file for
the dataset range read). The planner on DM8 needs a connection: the live suite covers it
(DBDL_DM8_URL, docs/dm8.md)."""

from __future__ import annotations

import decimal
import json
import re
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import sqlglot
import sqlglot.expressions as exp

dmPython = pytest.importorskip("dmPython")

import dbdl  # noqa: E402
from dbdl.backends.dm8 import backend as dm8  # noqa: E402
from dbdl.backends.dm8 import driver, export, reader  # noqa: E402
from dbdl.backends.dm8.dialect import DbdlDM8, render  # noqa: E402
from dbdl_udf.datasets import DatasetInfo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "dm8"


# -- URLs -------------------------------------------------------------------------------------------


def test_url_defaults_port_and_turns_autocommit_off():
    assert driver.parse_url("dm://SYSDBA:secret@db.example:5237") == {
        "user": "SYSDBA", "password": "secret", "server": "db.example", "port": 5237, "autoCommit": False}
    assert driver.parse_url("dm://alice@localhost")["port"] == 5236
    assert driver.parse_url("dm://alice@localhost")["password"] == ""


def test_url_percent_decodes_user_and_password_and_takes_options():
    kwargs = driver.parse_url("dm://us%3Aer:p%40ss%2Fw%3Ard@h:1?schema=SALES&login_timeout=3&app_name=dbdl")
    assert (kwargs["user"], kwargs["password"]) == ("us:er", "p@ss/w:rd")
    assert (kwargs["schema"], kwargs["login_timeout"], kwargs["app_name"]) == ("SALES", 3, "dbdl")


def test_url_ipv6_host_goes_to_dmpython_in_brackets():
    assert driver.parse_url("dm://u:p@[::1]:5236")["server"] == "[::1]"
    assert driver.parse_url("dm://u:p@[2001:db8::7]")["server"] == "[2001:db8::7]"


@pytest.mark.parametrize("url, says", [
    ("dm://u:p@h:5236?bogus=1", "unknown option 'bogus'"),
    ("dm://u:p@h:notaport", "does not parse"),
    ("dm://u:p@:5236", "names no host"),
    ("dm://h:5236", "names no user"),
    ("dm://u:p@h/db", "names a path"),
    ("dm://u:p@h?login_timeout=soon", "whole number"),
    ("postgresql://u@h", "starts with dm://"),
])
def test_bad_urls_are_refused_with_the_fix(url, says):
    with pytest.raises(dbdl.ConnectionError, match=says) as info:
        driver.parse_url(url)
    assert ":p@" not in str(info.value)  # the password is not repeated
    if "bogus" in url:
        assert "app_name, connection_timeout, dmsvc_path, login_timeout, schema, ssl_path" in str(info.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_server_is_a_connection_error_naming_host_port_and_code_in_python_and_the_cli():
    url = f"dm://SYSDBA:secret@127.0.0.1:{_closed_port()}"
    with pytest.raises(dbdl.ConnectionError) as info:
        dbdl.connect(url)
    message = str(info.value)
    port = url.rsplit(":", 1)[1]
    assert f"127.0.0.1:{port}" in message and "-70028" in message
    assert "is the DM8 server running, is the port right" in message and "secret" not in message
    # the one DmError dmPython makes without a server: its code read by the translator too
    cause = info.value.__cause__
    assert isinstance(cause, dmPython.DatabaseError) and driver.code_and_message(cause)[0] == -70028
    assert str(driver.translate(cause)).startswith("DM error -70028: ")
    cli = subprocess.run([sys.executable, "-m", "dbdl.cli", "migrate", url], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": "python:udf", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert cli.returncode != 0
    assert f"ConnectionError: {message}" in cli.stderr


# -- types and values --------------------------------------------------------------------------------


def _desc(code, name="C", size=0, precision=0, scale=0):
    return (name, code, size, size, precision, scale, 1)


def test_description_types_map_to_arrow():
    cases = [(dmPython.NUMBER, pa.int64()), (dmPython.BIGINT, pa.int64()), (dmPython.REAL, pa.float32()),
             (dmPython.DOUBLE, pa.float64()), (dmPython.BOOLEAN, pa.bool_()), (dmPython.STRING, pa.string()),
             (dmPython.FIXED_STRING, pa.string()), (dmPython.CLOB, pa.string()), (dmPython.BLOB, pa.binary()),
             (dmPython.BINARY, pa.binary()), (dmPython.LONG_BINARY, pa.binary()), (dmPython.DATE, pa.date32()),
             (dmPython.TIMESTAMP, pa.timestamp("us"))]
    assert [driver.arrow_type(_desc(code)) for code, _ in cases] == [t for _, t in cases]
    assert driver.arrow_type(_desc(dmPython.DECIMAL, precision=10, scale=0)) == pa.int64()
    assert driver.arrow_type(_desc(dmPython.DECIMAL, precision=10, scale=2)) == pa.float64()
    assert [driver.kind(_desc(c)) for c in (dmPython.BIGINT, dmPython.DOUBLE, dmPython.BLOB, dmPython.STRING)] == [
        "int", "float", "bytes", "other"]


def test_argument_forms_from_the_description_refuse_what_is_not_a_number():
    """A call of one column per feature takes numbers only (planner/rewrite.py): the form of each
    argument, read from its probe's description, and the type as DM8's SQL names it in the message."""
    cases = {dmPython.BIGINT: ("number", "BIGINT"), dmPython.NUMBER: ("number", "INT"),
             dmPython.DOUBLE: ("number", "DOUBLE"), dmPython.REAL: ("number", "REAL"),
             dmPython.DECIMAL: ("number", "DECIMAL"), dmPython.STRING: ("text", "VARCHAR"),
             dmPython.CLOB: ("text", "CLOB"), dmPython.BOOLEAN: ("boolean", "BIT"),
             dmPython.BLOB: ("bytes", "BLOB"), dmPython.BINARY: ("bytes", "VARBINARY"),
             dmPython.TIMESTAMP: ("other", "TIMESTAMP")}
    assert {code: driver.form(_desc(code, precision=10, scale=2)) for code in cases} == cases


def test_rows_become_arrow_with_lower_cased_names_and_read_lobs():
    class Lob:  # dmPython.LOB cannot be made without a server (its constructor is refused): its interface
        def __init__(self, data):
            self.data = data

        def size(self):
            return len(self.data)

        def read(self, offset=1, amount=-1):
            return self.data

    with pytest.raises(TypeError):
        dmPython.LOB()
    description = [_desc(dmPython.BIGINT, "ID"), _desc(dmPython.DECIMAL, "PRICE", precision=10, scale=2),
                   _desc(dmPython.BLOB, "Raw"), _desc(dmPython.CLOB, "NOTE"), _desc(dmPython.REAL, "ID")]
    rows = [(1, decimal.Decimal("2.50"), Lob(b"\x00\x01"), Lob("text"), 0.5),
            (2, "3.25", b"\x02", "plain", None)]
    table = driver.rows_to_arrow(description, rows)
    assert table.column_names == ["id", "price", "Raw", "note", "id_1"]
    assert table.to_pydict() == {"id": [1, 2], "price": [2.5, 3.25], "Raw": [b"\x00\x01", b"\x02"],
                                 "note": ["text", "plain"], "id_1": [0.5, None]}
    assert table.schema.field("id_1").type == pa.float32()
    # what dbdl's own reads (fetchall) get of dmPython's Decimal: numbers json and arithmetic take
    assert [driver.plain(decimal.Decimal(t)) for t in ("5", "2.0", "0.25")] == [5, 2.0, 0.25]
    assert type(driver.plain(decimal.Decimal("5"))) is int


# -- errors ----------------------------------------------------------------------------------------------


def test_dbdl_errors_raised_in_sql_come_back_as_their_class():
    got = driver.translate(dmPython.DatabaseError(
        "[CODE:-20001]dbdl.ShapeMismatch: model 'm@1' takes 4 features per row; got a row with 3"))
    assert type(got) is dbdl.ShapeMismatch and str(got) == "model 'm@1' takes 4 features per row; got a row with 3"
    assert type(driver.translate(dmPython.DatabaseError("[CODE:-20001]dbdl.ModelNotFound: no model"))) is \
        dbdl.ModelNotFound


def test_unique_violations_read_as_duplicate_keys_so_registration_retries():
    from dbdl.backends.base import _DUPLICATE_KEY

    for exc in (dmPython.IntegrityError("[CODE:-6602]违反表[MODELS]唯一性约束."),
                dmPython.IntegrityError("[CODE:-6602]Violate unique constraint on [MODELS]")):
        got = driver.translate(exc)
        assert type(got) is dbdl.QueryError and _DUPLICATE_KEY.search(str(got)) and "-6602" in str(got)


def test_permission_and_other_errors():
    denied = driver.translate(dmPython.DatabaseError("[CODE:-5504]没有[DBDL.BLOBS]的查询权限"))
    assert type(denied) is dbdl.PermissionDenied and "GRANT DBDL_USER" in str(denied)
    assert type(driver.translate(dmPython.ProgrammingError("[CODE:-5505]no SELECT privilege on [T]"))) is \
        dbdl.PermissionDenied
    other = driver.translate(dmPython.ProgrammingError("[CODE:-2106]无效的表或视图名[T]"))
    assert type(other) is dbdl.QueryError and str(other) == "DM error -2106: 无效的表或视图名[T]"


# -- the SQL the backend writes, rendered and parsed back -----------------------------------------------


def _round_trips(sql: str) -> exp.Expression:
    tree = sqlglot.parse_one(sql, read=DbdlDM8)
    assert render(tree.sql(dialect=DbdlDM8)) == sql
    return tree


def test_every_statement_of_the_backend_renders_and_parses_back():
    filled = {"table": "dbdl_data.rel_ab", "columns": "dbdl_k BIGINT, dbdl_prediction DOUBLE", "marks": "?, ?",
              "query": "SELECT a FROM t"}
    statements = [s.format(**filled) for s in dm8.SQL.values()]
    statements += [export.CREATE.format(table="dbdl_data.ds_x_v1", features="VARBINARY(16)", label="BIGINT"),
                   export.INSERT.format(table="dbdl_data.ds_x_v1"), export.DROP.format(table="dbdl_data.ds_x_v1")]
    for sql in statements:
        _round_trips(dm8.own(sql))
    assert dm8.own('DROP VIEW IF EXISTS "dbdl_data"."ds_x"') == "DROP VIEW IF EXISTS dbdl_data.ds_x"
    # names that are not dbdl's lower-case own keep their quotes
    assert '"MyTable"' in dm8.own('SELECT "a" FROM "MyTable"') and 'SELECT a' in dm8.own('SELECT "a" FROM "MyTable"')


def test_dataset_range_read_matches_its_golden_file():
    sql = reader.range_sql("dbdl_data.ds_digits_v3")
    assert sql == (GOLDEN / "dataset_range_read.sql").read_text().strip()
    tree = _round_trips(sql)
    assert [t.sql() for t in tree.find_all(exp.Table)] == ["dbdl_data.ds_digits_v3"]
    assert len(list(tree.find_all(exp.Placeholder))) == 2 and tree.args["order"] is not None


def test_write_arrow_ddl_for_a_representative_schema():
    data = pa.table({"i": pa.array([1], pa.int64()), "n": pa.array([1], pa.int32()), "w": pa.array([0.5], pa.float32()),
                     "d": pa.array([0.5], pa.float64()), "s": ["abc"], "b": [b"\x00"], "ok": [True],
                     "t": pa.FixedSizeListArray.from_arrays(pa.array([1, 2], pa.float32()), 2)})
    sql = dm8.create_table_sql("dbdl_data.rel_ab", data)
    assert sql == ("CREATE TABLE dbdl_data.rel_ab (i BIGINT, n INT, w REAL, d DOUBLE, s VARCHAR(3), b BLOB, ok BIT, "
                   "t BLOB)")
    tree = _round_trips(dm8.own(sql))
    kinds = {c.name: c.args["kind"].sql(dialect=DbdlDM8) for c in tree.find_all(exp.ColumnDef)}
    assert (kinds["i"], kinds["b"], kinds["t"], kinds["ok"]) == ("BIGINT", "BLOB", "BLOB", "BIT")
    assert dm8.python_values(data.column("t"), data.schema.field("t").type) == [
        np.array([1, 2], "<f4").tobytes()]
    with pytest.raises(dbdl.DTypeMismatch, match="cannot store in DM8"):
        dm8.arrow_sql_type(pa.field("x", pa.struct([("a", pa.int8())])))


def test_executemany_binds_each_column_by_all_its_values():
    rows = [(None, 1, 1, "a", b"\x00", None), (2, 2.5, 3, "abcd", b"\x01" * 9000, True)]
    types, fixed = dm8.bind_types(rows)
    assert types == [int, float, int, str, dmPython.LONG_BINARY, bool]
    assert fixed[0][1] == 1.0 and type(fixed[0][1]) is float and fixed[1][4] == rows[1][4]
    assert dm8.bind_types([(None,), (None,)])[0] == [str]
    assert dm8.chunk_rows([(b"x" * (1 << 20),)] * 3) == 32 and dm8.chunk_rows([(1, 2.0)]) == dm8.FETCH_ROWS


# -- DL-centric and the dataset reader's decoding ------------------------------------------------------


def test_predictions_as_the_temporary_table_holds_them():
    valid = np.array([True, False, True])
    y = np.array([[0.5, -1.25], [2.0, 3.0]], np.float32)
    texts = dm8.prediction_values("array", valid, y)
    assert texts[1] is None and [json.loads(t) for t in (texts[0], texts[2])] == [[0.5, -1.25], [2.0, 3.0]]
    assert dm8.prediction_values("class", valid, np.array([3, 1])) == [3, None, 1]
    assert dm8.prediction_type("array", texts) == "VARCHAR(11)" and dm8.prediction_type("scalar", []) == "REAL"


def test_feature_columns_from_fetched_values():
    from dbdl_udf.runtime import Signature

    signature = Signature.from_json(json.dumps({"inputs": [{"name": "x", "shape": [2], "dtype": "float32"}],
                                                "outputs": [{"name": "y", "shape": [1], "dtype": "float32"}]}))
    floats = dm8.feature_column(_desc(dmPython.BLOB), [np.array([1, 2], "<f4").tobytes(), None], signature, 0)
    assert floats.values.tolist() == [1.0, 2.0, 0.0, 0.0] and floats.valid.tolist() == [True, False]
    pixels = dm8.feature_column(_desc(dmPython.BLOB), [b"\x01\x02\x03"], signature, 0)
    assert pixels.values.dtype == np.uint8 and pixels.offsets.tolist() == [0, 3]
    one = dm8.feature_column(_desc(dmPython.DOUBLE), [1.5, None], signature, 0)
    assert one.values.tolist() == [1.5, 0.0] and one.valid.tolist() == [True, False] and one.width == 1


def test_a_fetched_batch_scores_as_onnxruntime_does():
    """DL-centric's batch step (score_batch) on rows as dmPython's fetchmany gives them — a ROWID
    key and one DOUBLE/BIGINT column per feature, NULLs among them — keyed and keyed by the features:
    the predictions onnxruntime gives the same rows, None where a feature is NULL."""
    import onnxruntime as ort
    from conftest import export_onnx, make_mlp

    from dbdl.strategies.dl import stack_columns

    model = export_onnx(make_mlp((3, 5, 2), seed=3), 3)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((6, 3))
    x[:, 2] = np.round(x[:, 2] * 3)
    rows = [(100 + i, *map(float, r[:2]), int(r[2])) for i, r in enumerate(x)] + [(106, 1.0, None, 2)]

    def score(columns):
        stacked = stack_columns(columns)
        return session.run(None, {"x": stacked.matrix()[stacked.valid].astype(np.float32)})[0]

    expected = session.run(None, {"x": x.astype(np.float32)})[0]
    description = [_desc(dmPython.BIGINT, "DBDL_K"), _desc(dmPython.DOUBLE, "DBDL_F"),
                   _desc(dmPython.DOUBLE, "DBDL_F1"), _desc(dmPython.BIGINT, "DBDL_F2")]
    scored = dm8.score_batch(description, rows, None, True, score, "array")
    keys, got = [r[:1] for r in scored], [r[1] for r in scored]
    assert keys == [(100 + i,) for i in range(7)] and got[6] is None
    np.testing.assert_allclose([json.loads(v) for v in got[:6]], expected, rtol=1e-6)
    # a batch with no NULL takes the one-conversion path: the same values
    fast = dm8.score_batch(description, rows[:6], None, True, score, "array")
    assert [r[0] for r in fast] == list(range(100, 106))
    np.testing.assert_allclose([json.loads(r[1]) for r in fast], expected, rtol=1e-6)
    # the scorer gives predict_class its classes (strategies/dl.py's shape_outputs)
    scored = dm8.score_batch(description[1:], [r[1:] for r in rows], None, False,
                             lambda columns: score(columns).argmax(axis=1), "class")
    keys, got = [r[:-1] for r in scored], [r[-1] for r in scored]
    fast = dm8.score_batch(description[1:], [r[1:] for r in rows[:6]], None, False,
                           lambda columns: score(columns).argmax(axis=1), "class")
    assert fast == [(*r[1:], c) for r, c in zip(rows, expected.argmax(axis=1).tolist())]
    assert keys == [r[1:] for r in rows] and got == [*expected.argmax(axis=1).tolist(), None]


def _info(**kw) -> DatasetInfo:
    base = dict(name="digits", version=1, table="dbdl_data.ds_digits_v1", shape=(2,), dtype="float32",
                label_dtype="int64", n_rows=3, n_train=3, n_validation=0, n_test=0, train_fraction=1.0,
                validation_fraction=0.0, seed=0, features=("f",), label_column="label", source_query="q", uid="u")
    base.update(kw)
    return DatasetInfo(**base)


def test_range_rows_decode_and_are_checked():
    rows = [(1, np.array([1, 2], "<f4").tobytes(), 7), (2, np.array([3, 4], "<f4").tobytes(), 8)]
    x, y = reader.decode_rows(rows, _info(), 1, 3)
    assert x.tolist() == [[1.0, 2.0], [3.0, 4.0]] and y.tolist() == [7, 8] and y.dtype == np.int64
    with pytest.raises(dbdl.QueryError, match="returned 2 rows for row ids"):
        reader.decode_rows(rows, _info(), 0, 2)
    ragged = reader.decode_rows([(0, np.array([5], "<i4").tobytes(), 1.5), (1, b"", 2.5)],
                                _info(shape=(-1,), dtype="int32", label_dtype="float32"), 0, 2)
    assert ragged[0].lengths.tolist() == [1, 0] and ragged[0].values.tolist() == [5]
    assert ragged[1].dtype == np.float32
    assert export.feature_type(8) == "VARBINARY(8)" and export.feature_type(4096) == "BLOB"


def test_the_planner_and_explain_give_dm8s_reason_for_no_udf_centric(tmp_path, monkeypatch):
    """DM8's declarations (no in-database Python, its reason; no arrays) on a real database, since
    the planner on DM8 itself needs a server: EXPLAIN lists udf with DM8's reason (external functions
    are C or Java only), forcing it is a StrategyUnavailable naming the strategies that run, and the
    planner's own choice scores the one-column-per-feature call as onnxruntime does."""
    from conftest import export_onnx, make_mlp, run_onnx

    from dbdl.backends.dm8.backend import DM8Backend

    db = dbdl.connect(f"duckdb:///{tmp_path / 'dm8_like.duckdb'}")
    model = export_onnx(make_mlp((3, 4, 2), seed=5), 3)
    db.models.register("m", model)
    x = np.random.default_rng(2).standard_normal((5, 3))
    db.create_table("t", {"id": np.arange(5), **{f"c{j}": x[:, j] for j in range(3)}})
    for attribute in ("has_python_udfs", "udf_unavailable", "array_features"):
        monkeypatch.setattr(db.backend, attribute, getattr(DM8Backend, attribute))
    sql = "SELECT id, predict_class('m', c0, c1, c2) FROM t"
    plan = str(db.explain(sql))
    assert DM8Backend.udf_unavailable in plan and "C or Java only" in DM8Backend.udf_unavailable
    with pytest.raises(dbdl.StrategyUnavailable, match="C or Java only.*use strategy='dl' or 'relation'"):
        db.sql(sql, strategy="udf")
    got = [c for _, c in sorted(db.sql(sql).fetchall())]
    assert got == run_onnx(model, {"x": x.astype(np.float32)}).argmax(axis=1).tolist()
    # one vector per row (on DM8: a BLOB of float32 values) is no input relation-centric SQL can unnest there
    monkeypatch.setattr(db.backend, "relation_feature_problem",
                        types.MethodType(DM8Backend.relation_feature_problem, db.backend))
    db.sql("CREATE TABLE v AS SELECT id, [c0, c1, c2]::FLOAT[3] AS feats FROM t")
    plan = str(db.explain("SELECT id, predict_class('m', feats) FROM v"))
    assert re.search(r"relation +ruled out +DM8 has no array columns: relation-centric SQL takes the features as one "
                     r"column per feature", plan), plan
    assert "chosen: dl" in plan
    db.close()
