"""CALL dbdl.predict_into in blocks (migration 0012, native/postgres/dbdl_native.c): the C helper's
path (dbdl.predict_rows packs rows into float32 blocks, dbdl.score_block scores them) gives what the
row-batch path gives (SET dbdl.native = off) and what onnxruntime gives, for every kind, bytea and
real[] features, NULL rows, NULL elements, uint8 rows and keys of several types; it refuses wrong
lengths, malformed blocks and wrong result types with dbdl errors; nothing a hostile caller plants
runs in it; the installer creates it only from a library that loads, and predict_into falls back
when it is absent."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import numpy as np
import psycopg
import pytest
import pgserver
from conftest import run_onnx

import dbdl
from dbdl.backends.postgres import native

ROOT = Path(__file__).resolve().parent.parent
BUILT = (ROOT / "native" / "postgres" / "dbdl_native.so").is_file()
needs_build = pytest.mark.skipif(not BUILT, reason="the C helper is not built here (make native)")
PREDICT_ROWS = "dbdl.predict_rows(text, text, text, integer, integer)"
_ids = itertools.count()

N = 45
NULL_ROWS = {3, 13, 23, 33, 43}      # NULL features
NULL_ELEMENT = {7, 17}              # real[] with a NULL element; in the bytea column: uint8 rows instead


def installed(db) -> bool:
    return db.sql(f"SELECT to_regprocedure('{PREDICT_ROWS}') IS NOT NULL").scalar()


@pytest.fixture
def blocks(pg_server, request, mlp_onnx, scorer_onnx, features):
    """A database with models m (8 -> 3) and s (8 -> 1) and table t(id, feats real[], b bytea)."""
    readable, why = pgserver.postgres_can_read(ROOT / "native" / "postgres" / "dbdl_native.so")
    if not readable:
        pytest.skip(f"the server cannot load the C helper from this checkout: {why}")
    server, name = pg_server, f"dbdl_blk_{next(_ids)}"
    url = server.create_database(name)
    request.addfinalizer(lambda: server.drop_database(name))
    x = features[:N]
    with dbdl.connect(url) as db:
        db.models.register("m", mlp_onnx)
        db.models.register("s", scorer_onnx)
        db.create_table("t", {"id": np.arange(N), "feats": x})
        db.sql("ALTER TABLE t ADD COLUMN b bytea")
        with psycopg.connect(url, autocommit=True) as con:
            for i in range(N):
                value = None if i in NULL_ROWS else bytes(range(i, i + 8)) if i in NULL_ELEMENT else x[i].tobytes()
                con.execute("UPDATE t SET b = %s WHERE id = %s", (value, i))
        db.sql(f"UPDATE t SET feats = NULL WHERE id IN ({', '.join(map(str, NULL_ROWS))})")
        db.sql(f"UPDATE t SET feats[2] = NULL WHERE id IN ({', '.join(map(str, NULL_ELEMENT))})")
    return server, name, url


def login(db, role: str, member_of: str, *grants: str) -> None:
    """A login role, member of dbdl_user or dbdl_admin, with ``grants`` ('… TO {role}')."""
    db.sql(f"CREATE ROLE {role} LOGIN IN ROLE {member_of}")
    for grant in grants:
        db.sql(grant.format(role=role))


def both_paths(db, call: str) -> tuple[list, list, list]:
    """The target's rows (ordered by key text) on the block path and on the row-batch path, and
    the two paths' key column types."""
    out, types = {}, {}
    for path in ("on", "off"):
        target = f"out_{next(_ids)}"
        db.backend.execute(f"SET dbdl.native = {path}")
        db.backend.execute(call.format(target=target))
        out[path] = db.sql(f"SELECT k, prediction FROM {target} ORDER BY k::text").fetchall()
        types[path] = db.sql(f"SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                             f"'{target}'::regclass AND attnum = 1").scalar()
    db.backend.execute("RESET dbdl.native")
    assert types["on"] == types["off"]
    return out["on"], out["off"], [types["on"]]


@needs_build
def test_block_path_gives_the_fallbacks_values_and_onnxruntimes(blocks, mlp_onnx, scorer_onnx, features):
    server, name, url = blocks
    x = features[:N]
    uint8 = {i: np.arange(i, i + 8, dtype=np.float32) for i in NULL_ELEMENT}
    xb = x.copy()
    for i, row in uint8.items():
        xb[i] = row
    expected = {"m": (run_onnx(mlp_onnx, {"x": x}), run_onnx(mlp_onnx, {"x": xb})),
                "s": (run_onnx(scorer_onnx, {"x": x}), run_onnx(scorer_onnx, {"x": xb}))}
    with dbdl.connect(url) as db:
        assert installed(db)
        cases = [  # (model, kind, key expression, its Python form, feature column)
            ("m", "class", "id", int, "feats"), ("m", "array", "id::int4", int, "b"),
            ("m", "class", "id::text", str, "b"), ("s", "scalar", "(id::numeric / 2)", lambda i: i / 2, "feats"),
            ("m", "array", "'k' || id::text", lambda i: f"k{i}", "feats"), ("s", "scalar", "id::int2", int, "b"),
            ("m", "class", "NULLIF(id, 5)", lambda i: None if i == 5 else i, "b"),  # a NULL key stays NULL
        ]
        for model, kind, key, form, column in cases:
            call = (f"CALL dbdl.predict_into('{model}', 'SELECT {key.replace(chr(39), chr(39) * 2)} AS k, "
                    f"{column} FROM t', '{{target}}', '{kind}', 16)")
            on, off = both_paths(db, call)[:2]
            assert on == off, call  # bit for bit: the same keys, NULLs and values
            assert len(on) == N
            ref = expected[model][column == "b"]
            by_key = dict(on)
            for i in range(N):
                got = by_key[form(i)]
                if i in NULL_ROWS or (i in NULL_ELEMENT and column == "feats"):
                    assert got is None, (call, i)
                elif kind == "class":
                    assert got == int(np.argmax(ref[i])), (call, i)
                elif kind == "array":
                    np.testing.assert_allclose(got, ref[i], atol=1e-5)
                else:
                    assert abs(got - ref[i, 0]) < 1e-5, (call, i)


@needs_build
def test_block_path_refuses_wrong_lengths_and_malformed_blocks(blocks, mlp_onnx, features):
    server, name, url = blocks
    with dbdl.connect(url) as db:
        db.sql("CREATE TABLE bad AS SELECT id, feats, b FROM t WHERE id < 20")
        db.sql("UPDATE bad SET feats = ARRAY[1, 2, 3, 4, 5]::real[], b = '\\x000102'::bytea WHERE id = 11")
        for path, rows, nbytes in (("on", "got a row of 5 values", "got a row of 3 bytes"),
                                   ("off", "5", "got a row of 3 bytes")):
            db.backend.execute(f"SET dbdl.native = {path}")
            with pytest.raises(dbdl.ShapeMismatch, match=rows):
                db.backend.execute("CALL dbdl.predict_into('m', 'SELECT id, feats FROM bad', 'nope', 'array', 4)")
            with pytest.raises(dbdl.ShapeMismatch, match=nbytes):
                db.backend.execute("CALL dbdl.predict_into('m', 'SELECT id, b FROM bad', 'nope', 'class', 4)")
            assert db.sql("SELECT to_regclass('nope')").scalar() is None  # nothing half-written
        db.backend.execute("RESET dbdl.native")

        def rows(args: str, cols: str = "k bigint, p bigint"):
            return db.sql(f"SELECT count(*) FROM dbdl.predict_rows({args}) AS r({cols})").scalar()

        ok = "'SELECT id, feats FROM t'"
        assert rows(f"'m', 'class', {ok}, 8, 7") == N
        refused = [
            (f"NULL, 'class', {ok}, 8, 7", "k bigint, p bigint", dbdl.InvalidArgument, "no NULL argument"),
            (f"'m', 'class', {ok}, NULL, 7", "k bigint, p bigint", dbdl.InvalidArgument, "no NULL argument"),
            (f"'m', 'bogus', {ok}, 8, 7", "k bigint, p bigint", dbdl.InvalidArgument, "kind must be one of"),
            (f"'m', 'class', {ok}, 0, 7", "k bigint, p bigint", dbdl.InvalidArgument, "width must be"),
            (f"'m', 'class', {ok}, 8, 0", "k bigint, p bigint", dbdl.InvalidArgument, "batch_rows must be"),
            (f"'m', 'class', {ok}, 65536, 65536", "k bigint, p bigint", dbdl.InvalidArgument, "over 1 GiB"),
            (f"'m', 'class', {ok}, 8, 7", "k text, p bigint", dbdl.DTypeMismatch, "key column is of type bigint"),
            (f"'m', 'class', {ok}, 8, 7", "k bigint, p real", dbdl.DTypeMismatch, "prediction bigint"),
            (f"'m', 'array', {ok}, 8, 7", "k bigint, p real", dbdl.DTypeMismatch, r"prediction real\[\]"),
            (f"'m', 'class', {ok}, 8, 7", "k bigint, p bigint, z int", dbdl.DTypeMismatch, "returns"),
            ("'m', 'class', 'SELECT id, feats, b FROM t', 8, 7", "k bigint, p bigint", dbdl.ShapeMismatch, "two columns"),
            ("'m', 'class', 'SELECT id, feats::int[] FROM t', 8, 7", "k bigint, p bigint", dbdl.DTypeMismatch,
             "bytea or real"),
            ("'m', 'class', 'SELECT 1::bigint, b FROM t; SELECT 2', 8, 7", "k bigint, p bigint",
             dbdl.InvalidArgument, "one SELECT"),
            ("'m', 'class', 'DELETE FROM t', 8, 7", "k bigint, p bigint", dbdl.InvalidArgument, "one SELECT"),
            # a width that is not the model's: the C side reads the rows as that many values...
            (f"'m', 'class', {ok}, 7, 7", "k bigint, p bigint", dbdl.ShapeMismatch, "takes 7 features"),
            # ... or reads 8-byte bytea rows as two float32 each: score_block refuses the block
            ("'m', 'class', 'SELECT id, b FROM t WHERE id IN (7, 17)', 2, 7", "k bigint, p bigint",
             dbdl.ShapeMismatch, "block of 2 rows is 64 bytes, got 16"),
        ]
        for args, cols, error, message in refused:
            with pytest.raises(error, match=message):
                rows(args, cols)
        assert db.sql("SELECT count(*) FROM t").scalar() == N  # the DELETE never ran

        # straight into a table only where an INSERT would run or check nothing: any other target
        # gets NULL (nothing ran) and predict_into's INSERT … SELECT, whose trigger and index apply
        db.sql("CREATE VIEW v AS SELECT id AS k, id AS prediction FROM t")
        db.sql("CREATE TABLE checked (k bigint, prediction bigint CHECK (prediction < 0))")
        db.sql("CREATE TABLE wide (k bigint, prediction bigint, extra int)")
        db.sql("CREATE TABLE texts (k text, prediction bigint)")
        into = "SELECT dbdl.predict_into_table('m', 'class', 'SELECT id, feats FROM t', 8, 7, '{}'::regclass)"
        for target in ("v", "checked", "wide", "texts", "pg_catalog.pg_class"):
            assert db.sql(into.format(target)).scalar() is None, target
        with psycopg.connect(url, autocommit=True) as con:
            con.execute("CREATE TABLE plain (k bigint, prediction bigint)")
            con.execute("BEGIN READ ONLY")
            assert con.execute(into.format("plain")).fetchone()[0] is None
            con.execute("ROLLBACK")
            assert con.execute(into.format("plain")).fetchone()[0] == N
        assert db.sql("SELECT count(*), count(prediction) FROM plain").fetchall() == [(N, N - 7)]
        assert db.sql("SELECT count(*) FROM checked").scalar() + db.sql("SELECT count(*) FROM wide").scalar() == 0
        with pytest.raises(dbdl.InvalidArgument, match="no NULL argument"):
            db.sql("SELECT dbdl.predict_into_table('m', 'class', 'SELECT id, feats FROM t', 8, 7, NULL)")
        db.sql("CREATE TABLE fired (n int)")
        db.sql("CREATE FUNCTION count_row() RETURNS trigger LANGUAGE plpgsql AS "
               "$$BEGIN INSERT INTO fired VALUES (1); RETURN NEW; END$$")
        for table in ("indexed", "triggered"):
            db.sql(f"CREATE TABLE {table} (k bigint, prediction bigint)")
        db.sql("CREATE INDEX ON indexed (prediction)")
        db.sql("CREATE TRIGGER counted BEFORE INSERT ON triggered FOR EACH ROW EXECUTE FUNCTION count_row()")
        db.backend.execute("CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', 'plain_too', 'class', 7)")
        for table in ("indexed", "triggered"):
            db.backend.execute(f"CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', '{table}', 'class', 7)")
            assert db.sql(f"SELECT k, prediction FROM {table} ORDER BY k").fetchall() == \
                db.sql("SELECT id, prediction FROM plain_too ORDER BY id").fetchall()
        assert db.sql("SELECT count(*) FROM fired").scalar() == N
        assert db.sql("SELECT count(*) FROM indexed WHERE prediction = 1").scalar() == \
            db.sql("SELECT count(*) FROM plain_too WHERE prediction = 1").scalar()

        # the scorer on its own: a block of the right length scores as onnxruntime does; others are refused
        x = features[:3]
        block = db.sql("SELECT dbdl.score_block('m', 'array', 3, ?)", [x.tobytes()]).scalar()
        rows_, width = struct.unpack_from("=ii", block)
        assert (rows_, width) == (3, 3)
        np.testing.assert_allclose(np.frombuffer(block[8:], dtype=np.float32).reshape(3, 3),
                                   run_onnx(mlp_onnx, {"x": x}), atol=1e-5)
        classes = db.sql("SELECT dbdl.score_block('m', 'class', 3, ?)", [x.tobytes()]).scalar()
        assert np.frombuffer(classes[8:], dtype=np.int64).tolist() == run_onnx(mlp_onnx, {"x": x}).argmax(1).tolist()
        for args, error, message in [("'m', 'array', 3, ?", dbdl.ShapeMismatch, "is 96 bytes, got 95"),
                                     ("'m', 'array', 0, ?", dbdl.InvalidArgument, "rows must be from 1"),
                                     ("'m', 'array', NULL, ?", dbdl.InvalidArgument, "got NULL"),
                                     ("'m', 'text', 3, ?", dbdl.InvalidArgument, "kind must be one of"),
                                     ("NULL, 'array', 3, ?", dbdl.InvalidArgument, "needs a model reference"),
                                     ("'ghost', 'array', 3, ?", dbdl.ModelNotFound, "ghost")]:
            with pytest.raises(error, match=message):
                db.sql(f"SELECT dbdl.score_block({args})", [x.tobytes()[:-1] if "95" in message else x.tobytes()])
        with pytest.raises(dbdl.InvalidArgument, match="got NULL"):
            db.sql("SELECT dbdl.score_block('m', 'array', 3, NULL)")


@needs_build
def test_a_caller_locks_no_table_it_may_not_write(blocks):
    """predict_into_table names its target by oid: for a table the caller may not INSERT into it
    returns NULL before taking any lock (a lock would last to the caller's transaction's end), and
    predict_into then fails with PostgreSQL's own permission error."""
    server, name, url = blocks
    role = f"blk_nowrite_{next(_ids)}"
    with dbdl.connect(url) as db:
        db.sql("CREATE TABLE owners_only (k bigint, prediction bigint)")
        login(db, role, "dbdl_user", "GRANT SELECT ON t TO {role}", "GRANT SELECT ON owners_only TO {role}")
    with psycopg.connect(server.url(name, role)) as con:  # one transaction, left open
        got = con.execute("SELECT dbdl.predict_into_table('m', 'class', 'SELECT id, feats FROM t', 8, 7, "
                          "'owners_only'::regclass)").fetchone()[0]
        held = con.execute("SELECT count(*) FROM pg_catalog.pg_locks WHERE pid = pg_catalog.pg_backend_pid() "
                           "AND relation = 'owners_only'::regclass").fetchone()[0]
        assert (got, held) == (None, 0)
        con.rollback()
    with dbdl.connect(server.url(name, role), migrate=False) as db:
        with pytest.raises(dbdl.PermissionDenied):
            db.backend.execute("CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', 'owners_only', 'class')")
    with dbdl.connect(url) as db:
        assert db.sql("SELECT count(*) FROM owners_only").scalar() == 0


@needs_build
def test_nothing_a_caller_plants_runs_in_the_block_path(blocks):
    """A dbdl_user plants look-alikes of everything the block path names (score_block, predict_rows,
    native_version in public; domains named like the types it passes in pg_temp) on its path; its
    predict_into still runs dbdl's, and none of the planted code runs."""
    server, name, url = blocks
    role = f"blk_user_{next(_ids)}"
    with dbdl.connect(url) as db:
        db.sql("CREATE TABLE planted_log (who text, what text)")
        db.sql("GRANT INSERT, SELECT ON planted_log TO PUBLIC")
        login(db, role, "dbdl_user", "GRANT SELECT ON t TO {role}", "GRANT CREATE ON SCHEMA public TO {role}")
    try:
        with psycopg.connect(server.url(name, role), autocommit=True) as con:
            evil = "BEGIN INSERT INTO public.planted_log VALUES (current_user, '{0}'); RAISE EXCEPTION 'planted {0}'; END"
            for fn, args, returns in [("score_block", "text, text, int4, bytea", "bytea"),
                                      ("predict_rows", "text, text, text, int4, int4", "SETOF record"),
                                      ("predict_into_table", "text, text, text, int4, int4, oid", "int8"),
                                      ("native_version", "", "int4")]:
                con.execute(f"CREATE FUNCTION public.{fn}({args}) RETURNS {returns} LANGUAGE plpgsql AS "
                            f"$${evil.format(fn)}$$")
            con.execute(f"CREATE FUNCTION pg_temp.evil(anyelement) RETURNS boolean LANGUAGE plpgsql AS "
                        f"$${evil.format('domain')}$$")
            for t in ("text", "int4", "int8", "float4", "bytea", "oid"):
                con.execute(f"CREATE DOMAIN pg_temp.{t} AS pg_catalog.{t} CHECK (pg_temp.evil(VALUE))")
            con.execute("SET search_path = public, pg_temp")
            con.execute("CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', 'mine', 'class', 8)")
            con.execute("CALL dbdl.predict_into('m', 'SELECT id::text, b FROM t', 'mine_a', 'array', 8)")
            assert con.execute("SELECT count(prediction) FROM mine").fetchone()[0] == N - 7
            assert con.execute("SELECT count(prediction) FROM mine_a").fetchone()[0] == N - 5
        with dbdl.connect(url) as db:
            assert db.sql("SELECT * FROM planted_log").fetchall() == []
            on = db.sql("SELECT id, prediction FROM mine ORDER BY id").fetchall()
            db.backend.execute("SET dbdl.native = off")
            db.backend.execute("CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', 'theirs', 'class', 8)")
            assert db.sql("SELECT id, prediction FROM theirs ORDER BY id").fetchall() == on
    finally:
        with dbdl.connect(url) as db:
            db.sql(f"DROP OWNED BY {role}")
            db.sql(f"DROP ROLE {role}")


@needs_build
def test_installer_creates_the_helper_only_from_a_library_that_loads(blocks, monkeypatch):
    server, name, url = blocks
    build = str(ROOT / "native" / "postgres" / "dbdl_native.so")
    with dbdl.connect(url) as db, psycopg.connect(url, autocommit=True) as con:
        db.backend.execute("CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', 'native_out', 'class')")
        expected = db.sql("SELECT id, prediction FROM native_out ORDER BY id").fetchall()
        monkeypatch.setenv(native.ENV, "off")
        assert native.install(con) is None and not installed(db)
        db.backend.execute("CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', 'fallback_out', 'class')")
        assert db.sql("SELECT id, prediction FROM fallback_out ORDER BY id").fetchall() == expected
        monkeypatch.setenv(native.ENV, "/nonexistent/dbdl_native.so")  # does not load: the next one does
        assert native.install(con) == build and installed(db)
        monkeypatch.delenv(native.ENV)
        assert native.install(con) == build
        # a role that is no superuser creates no C function, and leaves what is there alone
        role = f"blk_admin_{next(_ids)}"
        login(db, role, "dbdl_admin")
        try:
            with psycopg.connect(server.url(name, role), autocommit=True) as admin:
                assert native.install(admin) is None
            assert installed(db)
        finally:
            db.sql(f"DROP ROLE {role}")
