"""The server's side of dbdl_udf on a real PostgreSQL: errors arrive with their class's SQLSTATE,
predict_into and train_export refuse stacked statements by one rule, identifiers are quoted."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

import dbdl
from dbdl_udf import errors, sqltext
from dbdl_udf.errors import error_for_sqlstate


@pytest.fixture
def pgurl(pg_server, request):
    """A fresh migrated PostgreSQL database's URL."""
    name = f"dbdl_udf_{request.node.name[:30].lower()}"
    url = pg_server.create_database(name)
    dbdl.connect(url).close()
    yield url
    pg_server.drop_database(name)


# -- SQLSTATEs declared on the classes -------------------------------------------------------------


def test_every_error_class_declares_its_own_sqlstate():
    classes = [getattr(errors, n) for n in errors.__all__ if n[0].isupper()]
    codes = [c.__dict__["sqlstate"] for c in classes]
    assert len(set(codes)) == len(classes)  # one code per class, so it maps back
    assert all(len(c) == 5 and c.isalnum() and c == c.upper() for c in codes)
    for cls in classes:
        assert error_for_sqlstate(cls.sqlstate) is cls
    assert error_for_sqlstate("XX000") is None and error_for_sqlstate(None) is None
    # the codes psql users have seen since the first release
    assert (errors.ModelNotFound.sqlstate, errors.ShapeMismatch.sqlstate, errors.DTypeMismatch.sqlstate,
            errors.InvalidName.sqlstate, errors.ModelRuntimeError.sqlstate) == ("42704", "22023", "42804", "42602",
                                                                                 "38000")


def test_dataset_not_found_is_not_a_model_not_found():
    assert not issubclass(errors.DatasetNotFound, errors.ModelNotFound)
    assert issubclass(errors.DatasetNotFound, errors.Error) and issubclass(errors.DatasetNotFound, LookupError)


def test_server_errors_arrive_with_their_class_sqlstate(pgurl, mlp_onnx, features):
    with dbdl.connect(pgurl) as db:
        db.models.register("m", mlp_onnx)
        db.create_table("t", {"id": np.arange(4), "feats": features[:4]})
    cases = [
        ("SELECT dbdl.predict_array('ghost', ARRAY[1,2,3,4,5,6,7,8]::real[])", errors.ModelNotFound),
        ("SELECT dbdl.predict_array('m', ARRAY[1,2,3]::real[])", errors.ShapeMismatch),
        ("SELECT dbdl.predict_array('m', ARRAY['a','b'])", errors.DTypeMismatch),
        ("SELECT dbdl.register_model('bad name', '\\x00'::bytea)", errors.InvalidName),
        ("SELECT dbdl.register_model('m2', '\\x00ff'::bytea)", errors.InvalidModel),
        ("CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', 'out', 'bogus')", errors.InvalidArgument),
        ("SELECT dbdl.forget_dataset('nope')", errors.DatasetNotFound),
        ("CALL dbdl.train_export('SELECT 1 AS a; SELECT 2', 'd')", errors.QueryError),
        ("CALL dbdl.set_model_options('m', '{\"cache\": 1}')", errors.ConfigurationError),
    ]
    with psycopg.connect(pgurl, autocommit=True) as con:
        for sql, cls in cases:
            with pytest.raises(psycopg.Error) as info:
                con.execute(sql)
            primary = info.value.diag.message_primary
            assert info.value.sqlstate == cls.sqlstate, (sql, info.value.sqlstate, primary)
            assert f"dbdl.{cls.__name__}: " in primary, (sql, primary)
            assert error_for_sqlstate(info.value.sqlstate) is cls
    with dbdl.connect(pgurl) as db:  # and the client raises the same classes
        with pytest.raises(dbdl.DatasetNotFound) as info:
            db.sql("SELECT dbdl.forget_dataset('nope')")
        assert not isinstance(info.value, dbdl.ModelNotFound)
        with pytest.raises(dbdl.InvalidArgument):
            db.backend.execute("CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', 'out', 'bogus')")


# -- one statement ----------------------------------------------------------------------------------


def test_statements_follow_postgres_lexical_rules():
    assert sqltext.statements("SELECT 1") == ["SELECT 1"]
    assert sqltext.statements("SELECT 1;  -- done\n") == ["SELECT 1"]
    assert len(sqltext.statements("SELECT 1; DROP TABLE t")) == 2
    for one in ("SELECT ';' AS x", "SELECT 'it''s; fine'", 'SELECT "a;""b" FROM t', "SELECT $$;$$",
                "SELECT $q$ ; $$ ; $q$", "SELECT 1 -- ; DROP TABLE t\n", "/* ; /* ; */ ; */ SELECT 1",
                "SELECT E'\\'; x'", "SELECT $1::int"):
        assert len(sqltext.statements(one)) == 1, one
    assert len(sqltext.statements("SELECT E'\\\\'; DROP TABLE t")) == 2
    assert sqltext.statements(" ; -- nothing\n ;") == []
    with pytest.raises(dbdl.QueryError, match="one SELECT statement.*holds 2 statements"):
        sqltext.one_statement("SELECT 1; SELECT 2", "train_export")


def test_predict_into_refuses_stacked_statements_like_train_export(pgurl, mlp_onnx, features):
    with dbdl.connect(pgurl) as db:
        db.models.register("m", mlp_onnx)
        db.create_table("t", {"id": np.arange(20), "feats": features[:20]})
        stacked = ["SELECT id, feats FROM t; DROP TABLE t",
                   "SELECT id, feats FROM t; CREATE TABLE pwned AS SELECT 1 AS x",
                   # one that closes predict_into's own parentheses around the query
                   "SELECT id, feats FROM t) AS q LIMIT 0; DROP TABLE t; SELECT * FROM (SELECT 1"]
        messages = set()
        for query in stacked:
            with pytest.raises(dbdl.QueryError, match="one SELECT statement") as info:
                db.backend.execute("CALL dbdl.predict_into('m', ?, 'scores')", [query])
            messages.add(str(info.value).split(";")[0])
            with pytest.raises(dbdl.QueryError, match="one SELECT statement") as info:
                db.backend.execute("CALL dbdl.train_export(?, 'd')", [query.replace("feats", "feats, id AS label")])
            messages.add(str(info.value).split(";")[0].replace("train_export", "predict_into"))
        assert len(messages) == 1  # the same check and the same words
        assert db.sql("SELECT count(*) FROM t").scalar() == 20
        for missing in ("scores", "pwned"):
            assert db.sql("SELECT pg_catalog.to_regclass(?) IS NULL", [missing]).scalar()
        assert db.sql("SELECT count(*) FROM dbdl.datasets").scalar() == 0
        # semicolons inside literals and comments are data; a trailing one is allowed
        db.backend.execute("CALL dbdl.predict_into('m', ?, 'scores', 'class')",
                           ["SELECT id, feats FROM t WHERE 'a;b' <> '' -- ; DROP TABLE t\n;"])
        assert db.sql("SELECT count(*) FROM scores").scalar() == 20


# -- quoted identifiers -------------------------------------------------------------------------------


def test_quoted_names_reach_tables_with_odd_characters(pgurl, tmp_path):
    odd = 'we"ird; name'
    qualified = sqltext.quote_qualified(f"public.{odd}")
    assert qualified == '"public"."we""ird; name"'
    for url in (pgurl, f"duckdb:///{tmp_path / 'q.duckdb'}"):
        with dbdl.connect(url) as db:
            db.sql(f"CREATE TABLE {sqltext.quote_ident(odd)} (x INTEGER)")
            db.sql(f"INSERT INTO {qualified} VALUES (1), (2)" if url == pgurl else
                   f"INSERT INTO {sqltext.quote_ident(odd)} VALUES (1), (2)")
            assert db.sql(f"SELECT sum(x) FROM {sqltext.quote_ident(odd)}").scalar() == 3
            db.sql(f"DROP TABLE {sqltext.quote_ident(odd)}")


def test_dataset_tables_and_views_go_through_quoting(pgurl, features):
    """Export, re-export (drops the old table read back from the catalog) and drop a dataset on
    PostgreSQL: every name dbdl splices is the catalog's, quoted."""
    with dbdl.connect(pgurl) as db:
        db.create_table("t", {"id": np.arange(30), "feats": features[:30], "label": np.arange(30) % 3})
        db.train_export("SELECT feats, label FROM t", "d")
        db.train_export("SELECT feats, label FROM t WHERE id < 20", "d")
        info = db.datasets.get("d")
        assert (info.version, info.n_rows, info.table) == (2, 20, "dbdl_data.ds_d_v2")
        assert db.sql("SELECT count(*) FROM dbdl_data.ds_d").scalar() == 20
        assert db.sql("SELECT pg_catalog.to_regclass('dbdl_data.ds_d_v1') IS NULL").scalar()
        db.datasets.drop("d")
        assert db.sql("SELECT pg_catalog.to_regclass('dbdl_data.ds_d_v2') IS NULL").scalar()
        assert db.sql("SELECT pg_catalog.to_regclass('dbdl_data.ds_d') IS NULL").scalar()


def test_every_trampoline_calls_a_body_that_takes_its_arguments():
    """The migrations' PL/Python trampolines call dbdl_udf.postgres positionally; the sql_errors
    decorator keeps each body's signature, so each call still binds."""
    import inspect
    import re
    from pathlib import Path

    from dbdl_udf import postgres

    calls = set()
    for path in sorted((Path(__file__).resolve().parent.parent / "migrations" / "postgres").glob("*.sql")):
        text = path.read_text()
        for name, args in re.findall(r'GD\["dbdl"\]\.(\w+)\(plpy((?:, [^)]*)?)\)', text):
            calls.add((name, len([a for a in args.split(",") if a.strip()])))
    assert len({n for n, _ in calls}) >= 14
    for name, n_args in calls:
        body = getattr(postgres, name)
        inspect.signature(body).bind("plpy", *range(n_args))  # raises TypeError if it does not bind
        assert getattr(body, "__wrapped__", None) is not None, name  # wrapped by sql_errors
