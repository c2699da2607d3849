"""Row-at-a-time predict on PostgreSQL (migration 0013, dbdl_udf.pgrow): values, freshness, abuse.

dbdl.predict / predict_array / predict_class on real[] and bytea keep a reference's resolution for
as long as the caller's registry view (snapshot + transaction) stays the same, and score the common
model through a bound onnxruntime call. These tests check that the values are onnxruntime's, bit
for bit; that a promotion is seen exactly when the old lookup per row saw it (the next snapshot
that includes its commit; this transaction's own writes at once, a rolled-back one undone); that a
caller handing the internal function made-up tokens cannot make another statement score with a
stale version; and that the new functions are as hostile-caller safe as the rest (docs/security.md).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import psycopg
import pytest
from test_security import (assert_nothing_ran_as_another_role, connect, drop_world, evil_body, plant_functions,
                           plant_schema)

import dbdl

_ids = itertools.count()
TOKEN = ("pg_catalog.byteacat(pg_catalog.pg_snapshot_send(pg_catalog.pg_current_snapshot()), "
         "pg_catalog.timestamptz_send(pg_catalog.transaction_timestamp()))")


@pytest.fixture(scope="module")
def rowdb(pg_server, mlp_onnx, mlp2_onnx, scorer_onnx, features):
    """A database with m@1 (serving), m@2 (registered, not serving), the one-value scorer s, and
    t(id, feats real[], fb bytea) of 12 rows; a dbdl_user login and a login without dbdl_user."""
    n = next(_ids)
    name = f"dbdl_row_{n}"
    url = pg_server.create_database(name)
    roles = {"user": f"row_user_{n}", "nobody": f"row_nobody_{n}", "analyst": f"row_analyst_{n}"}
    x = features[:12]
    with dbdl.connect(url) as db:
        db.models.register("m", mlp_onnx)
        db.models.register("m", mlp2_onnx, promote=False)
        db.models.register("s", scorer_onnx)
        db.create_table("t", {"id": np.arange(len(x)), "feats": x, "fb": [r.astype("<f4").tobytes() for r in x]})
        db.sql("CREATE TABLE sec_log (who text, via text, tag text)")  # what test_security's planted code writes
        db.sql("GRANT INSERT, SELECT ON sec_log TO PUBLIC")
        for role in roles.values():
            db.sql(f"CREATE ROLE {role} LOGIN")
            db.sql(f"GRANT SELECT ON t TO {role}")
        db.sql(f"GRANT dbdl_user TO {roles['user']}, {roles['analyst']}")
        db.sql(f"GRANT CREATE ON SCHEMA public TO {roles['user']}")
    yield {"server": pg_server, "db": name, "url": url, "roles": roles, "x": x,
           "onnx": {1: mlp_onnx, 2: mlp2_onnx, "s": scorer_onnx}}
    drop_world(pg_server, name, url, roles.values())


def _con(rowdb, who: str | None = None, autocommit: bool = True) -> psycopg.Connection:
    user = rowdb["roles"][who] if who else "postgres"
    return psycopg.connect(rowdb["server"].url(rowdb["db"], user), autocommit=autocommit)


def _per_row(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """onnxruntime one row per run, one thread: what the row path must return bit for bit."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def _arrays(con, sql: str) -> np.ndarray:
    return np.array([r[0] for r in con.execute(sql).fetchall()], dtype=np.float32)


def _serving_array(con) -> np.ndarray:
    return _arrays(con, "SELECT dbdl.predict_array('m', feats) FROM t ORDER BY id")


def test_row_functions_return_onnxruntimes_values_bit_for_bit(rowdb):
    x = rowdb["x"]
    want = _per_row(rowdb["onnx"][1], x)
    want_s = _per_row(rowdb["onnx"]["s"], x)
    with _con(rowdb, "user") as con:
        for col in ("feats", "fb"):
            got = _arrays(con, f"SELECT dbdl.predict_array('m', {col}) FROM t ORDER BY id")
            assert got.tobytes() == want.tobytes(), col
            classes = [r[0] for r in con.execute(f"SELECT dbdl.predict_class('m', {col}) FROM t ORDER BY id")]
            assert classes == want.argmax(axis=1).tolist()
            scores = _arrays(con, f"SELECT dbdl.predict('s', {col}) FROM t ORDER BY id")
            assert scores.tobytes() == want_s[:, 0].tobytes()
        # a pinned version and a named output take the same path; the batch form agrees to rounding
        assert _arrays(con, "SELECT dbdl.predict_array('m@2:y', feats) FROM t ORDER BY id").tobytes() == \
            _per_row(rowdb["onnx"][2], x).tobytes()
        session = ort.InferenceSession(rowdb["onnx"][1], providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(want, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
        # what the fast path hands on to the general one: NULLs, NULL elements, uint8 bytes, other widths
        row = con.execute("SELECT dbdl.predict_class('m', NULL::real[]), dbdl.predict_array('m', "
                          "ARRAY[1, NULL, 3, 4, 5, 6, 7, 8]::real[]), dbdl.predict_array(NULL, feats), "
                          "dbdl.predict_array('m', '\\x0102030405060708'::bytea) FROM t WHERE id = 0").fetchone()
        assert row[:3] == (None, None, None)
        pixels = np.arange(1, 9, dtype=np.float32).reshape(1, 8)
        assert np.array(row[3], dtype=np.float32).tobytes() == _per_row(rowdb["onnx"][1], pixels)[0].tobytes()
        with pytest.raises(psycopg.Error, match="dbdl.ShapeMismatch: .*takes 8 features") as info:
            con.execute("SELECT dbdl.predict_array('m', ARRAY[1, 2]::real[])")
        assert info.value.sqlstate == dbdl.ShapeMismatch.sqlstate
        with pytest.raises(psycopg.Error, match="dbdl.ShapeMismatch: .*predict_array\\(\\) for the whole vector"):
            con.execute("SELECT dbdl.predict('m', feats) FROM t")
        with pytest.raises(psycopg.Error, match=r"^plpy.Error: dbdl.ModelNotFound: no model named 'nope'") as info:
            con.execute("SELECT dbdl.predict_class('nope', feats) FROM t")
        assert info.value.sqlstate == dbdl.ModelNotFound.sqlstate


def test_a_promotion_is_seen_by_the_next_snapshot_and_a_repeatable_read_keeps_its_version(rowdb):
    v1, v2 = (_per_row(rowdb["onnx"][k], rowdb["x"]) for k in (1, 2))
    with _con(rowdb, "user") as a, _con(rowdb, "user", autocommit=False) as rr, _con(rowdb) as owner:
        assert _serving_array(a).tobytes() == v1.tobytes()
        rr.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert _serving_array(rr).tobytes() == v1.tobytes()
        try:
            owner.execute("SELECT dbdl.promote_model('m', 2)")
            assert _serving_array(a).tobytes() == v2.tobytes()  # the very next statement
            assert _serving_array(rr).tobytes() == v1.tobytes()  # its snapshot predates the promotion
            rr.rollback()
            assert _serving_array(rr).tobytes() == v2.tobytes()
            # a procedure that commits sees the promotion in its next transaction
            owner.execute("CREATE OR REPLACE PROCEDURE public.row_loop() LANGUAGE plpgsql AS $$ BEGIN "
                          "CREATE TEMP TABLE IF NOT EXISTS seen (k int, v real[]); "
                          "INSERT INTO seen SELECT 1, dbdl.predict_array('m', feats) FROM t WHERE id = 0; COMMIT; "
                          "PERFORM dbdl.promote_model('m', 1); COMMIT; "
                          "INSERT INTO seen SELECT 2, dbdl.predict_array('m', feats) FROM t WHERE id = 0; COMMIT; END $$")
            owner.execute("CALL public.row_loop()")
            seen = dict(owner.execute("SELECT k, v FROM seen").fetchall())
            assert np.array(seen[1], np.float32).tobytes() == v2[0].tobytes()
            assert np.array(seen[2], np.float32).tobytes() == v1[0].tobytes()
        finally:
            owner.execute("SELECT dbdl.promote_model('m', 1)")


def test_this_transactions_own_writes_count_at_once_and_a_rolled_back_one_is_undone(rowdb):
    v1, v2 = (_per_row(rowdb["onnx"][k], rowdb["x"]) for k in (1, 2))
    with _con(rowdb, autocommit=False) as con:
        # REPEATABLE READ: one snapshot, so one token, for the whole transaction
        con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert _serving_array(con).tobytes() == v1.tobytes()
        con.execute("SAVEPOINT s")
        con.execute("SELECT dbdl.promote_model('m', 2)")
        assert _serving_array(con).tobytes() == v2.tobytes()
        con.execute("ROLLBACK TO SAVEPOINT s")
        assert _serving_array(con).tobytes() == v1.tobytes()
        con.rollback()
        assert _serving_array(con).tobytes() == v1.tobytes()
        # inside one statement: a plpgsql block that scores, promotes, scores, and undoes the promotion
        con.execute("CREATE TEMP TABLE seen (k int, v real[])")
        con.execute("DO $$ DECLARE v real[]; BEGIN "
                    "INSERT INTO seen SELECT 1, dbdl.predict_array('m', feats) FROM t WHERE id = 0; "
                    "BEGIN PERFORM dbdl.promote_model('m', 2); "
                    "v := (SELECT dbdl.predict_array('m', feats) FROM t WHERE id = 0); "
                    "RAISE EXCEPTION 'undo'; EXCEPTION WHEN raise_exception THEN NULL; END; "
                    "INSERT INTO seen VALUES (2, v); "
                    "INSERT INTO seen SELECT 3, dbdl.predict_array('m', feats) FROM t WHERE id = 0; END $$")
        seen = {k: np.array(v, np.float32).tobytes() for k, v in con.execute("SELECT k, v FROM seen").fetchall()}
        assert seen == {1: v1[0].tobytes(), 2: v2[0].tobytes(), 3: v1[0].tobytes()}
        con.rollback()
    with _con(rowdb) as con:
        assert _serving_array(con).tobytes() == v1.tobytes()


def test_a_made_up_token_makes_no_later_statement_score_a_stale_version(rowdb):
    """The attack the token check stops: in a backend another role uses next (SET ROLE, a pooler),
    hand the internal function the token of the snapshot that will follow a promotion, while the
    old version still serves; unchecked, the next statement would find the old resolution under
    its own token."""
    v1, v2 = (_per_row(rowdb["onnx"][k], rowdb["x"]) for k in (1, 2))
    attacker = rowdb["roles"]["user"]
    with _con(rowdb, autocommit=False) as victim, _con(rowdb, autocommit=False) as owner:
        assert _serving_array(victim).tobytes() == v1.tobytes()
        try:
            owner.execute("UPDATE dbdl.models SET serving_version = 2 WHERE name = 'm'")  # the owner's own SQL
            xid = int(owner.execute("SELECT pg_catalog.pg_current_xact_id()::text").fetchone()[0])
            victim.execute(f"SET LOCAL ROLE {attacker}")
            forged = victim.execute(
                "SELECT pg_catalog.byteacat(pg_catalog.pg_snapshot_send(%s::pg_catalog.pg_snapshot), "
                "pg_catalog.timestamptz_send(pg_catalog.transaction_timestamp()))", (f"{xid + 1}:{xid + 1}:",)
            ).fetchone()[0]
            got = victim.execute("SELECT dbdl.predict_vector_row('m', pg_catalog.array_send(feats), true, %s)::real[] "
                                 "FROM t ORDER BY id", (forged,)).fetchall()
            assert np.array([r[0] for r in got], np.float32).tobytes() == v1.tobytes()  # scored right, uncached
            victim.execute("RESET ROLE")
            owner.commit()
            token = victim.execute(f"SELECT {TOKEN}").fetchone()[0]
            if token != forged:  # another transaction ran meanwhile: the forgery missed, nothing to show
                pytest.skip("the server assigned another transaction id meanwhile")
            assert _serving_array(victim).tobytes() == v2.tobytes()
        finally:
            victim.rollback()
            owner.rollback()
            owner.execute("SELECT dbdl.promote_model('m', 1)")
            owner.commit()


def test_row_functions_need_dbdl_user_and_keep_nothing_a_role_without_it_can_use(rowdb):
    with _con(rowdb) as con:
        con.execute("SELECT dbdl.predict_array('m', feats) FROM t").fetchall()  # the backend's cache is warm
        con.execute(f"SET ROLE {rowdb['roles']['nobody']}")
        for sql in ("SELECT dbdl.predict_array('m', feats) FROM t", "SELECT dbdl.predict_class('m', fb) FROM t",
                    f"SELECT dbdl.predict_argmax_row('m', pg_catalog.array_send(feats), true, {TOKEN}) FROM t"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute(sql)
        con.execute("RESET ROLE")
        with pytest.raises(psycopg.Error, match="trigger functions can only be called as triggers"):
            con.execute("SELECT dbdl.registry_changed()")
        acl = con.execute("SELECT p.proname, p.prosecdef, p.proconfig FROM pg_catalog.pg_proc p WHERE p.pronamespace "
                          "= 'dbdl'::regnamespace AND p.proname ~ '_row$|^registry_changed$' ORDER BY 1").fetchall()
        # invoker code, run with the caller's rights; the trigger is definer code like the others
        assert acl == [("predict_argmax_row", False, None), ("predict_scalar_row", False, None),
                       ("predict_vector_row", False, None),
                       ("registry_changed", True, ["search_path=pg_catalog, dbdl, pg_temp"])]
    with _con(rowdb, "user") as con:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            con.execute("SELECT dbdl.registry_changed()")


def test_planted_built_ins_and_temporary_domains_never_run_in_a_row_call(rowdb):
    """Every built-in the 0013 wrappers and the row path's plans name, planted in public and in a
    schema on the victim's path as better-matching overloads (and the operator they could have
    used); pg_temp domains named like the types of the row path's plans. The victims, the owner and
    another dbdl_user, score with every form that now takes the row path. (Last in this file: what
    it plants in public stays until the database goes.)"""
    world, attacker = rowdb, "user"
    plant_schema(world, attacker)
    with connect(world, attacker) as con:
        for schema in ("public", "planted"):
            plant_functions(con, schema, (
                    ("array_send", "real[]", "bytea"), ("byteacat", "bytea, bytea", "bytea"),
                    ("pg_snapshot_send", "pg_snapshot", "bytea"), ("pg_current_snapshot", "", "pg_snapshot"),
                    ("timestamptz_send", "timestamptz", "bytea"), ("transaction_timestamp", "", "timestamptz"),
                    ("timestamptz_send", "timestamp", "bytea")))
            con.execute(f"CREATE FUNCTION {schema}.cat_evil(bytea, bytea) RETURNS bytea LANGUAGE plpgsql AS "
                        f"$${evil_body(f'{schema} ||')}RETURN NULL; END$$")
            con.execute(f"CREATE OPERATOR {schema}.|| (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = {schema}.cat_evil)")
            for fn in ("predict_scalar_row", "predict_vector_row", "predict_argmax_row"):
                con.execute(f"CREATE FUNCTION {schema}.{fn}(text, bytea, boolean, bytea) RETURNS bigint "
                            f"LANGUAGE plpgsql AS $${evil_body(f'{schema}.{fn}')}RETURN 0; END$$")
        # the attacker's own session: temporary domains, then the row path's plans are prepared
        con.execute(f"CREATE FUNCTION pg_temp.evil(anyelement) RETURNS boolean LANGUAGE plpgsql AS "
                    f"$${evil_body('domain')}RETURN true; END $$")
        for t in ("text", "bytea", "bool", "int4", "int8", "float4", "timestamptz"):
            con.execute(f"CREATE DOMAIN pg_temp.{t} AS pg_catalog.{t} CHECK (pg_temp.evil(VALUE))")
        con.execute("SELECT dbdl.predict_array('m@2', feats), dbdl.predict_class('m', fb) FROM t").fetchall()
    want = _per_row(rowdb["onnx"][1], rowdb["x"])
    for path in ('planted, public, pg_catalog', '"$user", dbdl, planted, public'):
        for who in (None, "analyst"):
            with connect(world, who) as con:
                con.execute(f"SET search_path = {path}")
                got = con.execute("SELECT dbdl.predict_array('m', feats), dbdl.predict_array('m', fb), "
                                  "dbdl.predict_class('m', fb), dbdl.predict_class('m@2', feats), "
                                  "dbdl.predict('s', fb) FROM t ORDER BY id").fetchall()
                assert np.array([r[0] for r in got], np.float32).tobytes() == want.tobytes()
                assert [r[1] for r in got] == [r[0] for r in got]
                assert [r[2] for r in got] == want.argmax(axis=1).tolist()
    assert_nothing_ran_as_another_role(world, attacker)
