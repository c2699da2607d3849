"""Privilege boundaries on PostgreSQL (docs/security.md), tried as an attacker would.

Each test plants objects as a `dbdl_user` or a `dbdl_admin` login (temporary domains, functions
and operators in pg_temp, functions and operators in public, a schema on the victim's path, direct
writes to dbdl's tables) and then lets a victim — the superuser that owns dbdl, or another
`dbdl_user` — call predict, predict_array, predict_class, predict_into and train_export. The
attacker's functions record ``current_user`` in a table it may write and try ``ALTER ROLE … SUPERUSER``
on their author; the tests assert that no such row names any role but the attacker and that the
attacker's ``rolsuper`` stays false.
"""

from __future__ import annotations

import functools
import itertools
import re
from pathlib import Path

import numpy as np
import psycopg
import pytest
import torch
from conftest import export_onnx, make_mlp, run_onnx

import dbdl

_ids = itertools.count()


@functools.cache
def _m2_onnx() -> bytes:
    """The second model's bytes, exported once per run (a torch.export per test cost ~3 s each)."""
    return export_onnx(make_mlp(seed=3), 8)


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def world(pg_server, mlp_onnx, features):
    """A migrated database with models m and m2, table t, a log the attacker writes, and three logins:
    attacker_user (dbdl_user), attacker_admin (dbdl_admin) and analyst (dbdl_user, the victim)."""
    n = next(_ids)
    name = f"dbdl_sec_{n}"
    url = pg_server.create_database(name)
    roles = {"user": f"sec_user_{n}", "admin": f"sec_admin_{n}", "analyst": f"sec_analyst_{n}"}
    with dbdl.connect(url) as db:
        db.models.register("m", mlp_onnx)
        db.models.register("m2", _m2_onnx())
        db.create_table("t", {"id": np.arange(20), "feats": features[:20]})
        db.sql("CREATE TABLE sec_log (who text, via text, tag text)")
        db.sql("GRANT INSERT, SELECT ON sec_log TO PUBLIC")
        for key, role in roles.items():
            db.sql(f"CREATE ROLE {role} LOGIN")
            db.sql(f"GRANT SELECT ON t TO {role}")
            db.sql(f"GRANT CREATE ON SCHEMA public TO {role}")
        db.sql(f"GRANT dbdl_user TO {roles['user']}, {roles['analyst']}")
        db.sql(f"GRANT dbdl_admin TO {roles['admin']}")
    world = {"server": pg_server, "db": name, "url": url, "roles": roles}
    try:
        yield world
    finally:
        drop_world(pg_server, name, url, roles.values())


def drop_world(pg_server, name: str, url: str, roles) -> None:
    """Drop a test database and the logins made for it (what they own there first)."""
    with dbdl.connect(url) as db:
        for role in roles:
            db.sql(f"DROP OWNED BY {role}")
    pg_server.drop_database(name)
    with psycopg.connect(pg_server.url(), autocommit=True) as con:
        for role in roles:
            con.execute(f"DROP ROLE IF EXISTS {role}")


def connect(world, who: str | None = None) -> psycopg.Connection:
    user = world["roles"][who] if who else "postgres"
    return psycopg.connect(world["server"].url(world["db"], user), autocommit=True)


def evil_body(tag: str) -> str:
    """plpgsql that records who runs it and tries to make its author a superuser."""
    return f"""
    BEGIN
        INSERT INTO public.sec_log VALUES (current_user, session_user, '{tag}');
        BEGIN
            EXECUTE 'ALTER ROLE ' || quote_ident(session_user) || ' SUPERUSER';
        EXCEPTION WHEN OTHERS THEN NULL;
        END;
"""


def plant_schema(world, attacker: str) -> None:
    """A schema of the attacker's that every role may use (the victims put it on their path)."""
    with connect(world) as con:
        con.execute(f"CREATE SCHEMA planted AUTHORIZATION {world['roles'][attacker]}")
        con.execute("GRANT USAGE ON SCHEMA planted TO PUBLIC")


def plant_functions(con: psycopg.Connection, schema: str, specs) -> None:
    """Better-matching overloads in ``schema``: (name, argument types, return type), each body
    evil_body's, returning NULL (or no rows)."""
    for fn, args, returns in specs:
        ret = "NULL" if not returns.startswith("SETOF") else ""
        body = evil_body(f"{schema}.{fn}") + (f"RETURN {ret}; END" if ret else "RETURN; END")
        con.execute(f"CREATE FUNCTION {schema}.{fn}({args}) RETURNS {returns} LANGUAGE plpgsql AS $${body}$$")


def assert_nothing_ran_as_another_role(world, attacker: str) -> None:
    with connect(world) as con:
        foreign = con.execute("SELECT who, via, tag FROM sec_log WHERE who <> %s", (world["roles"][attacker],)).fetchall()
        supers = con.execute("SELECT rolname FROM pg_roles WHERE rolsuper AND rolname = ANY(%s)",
                             (list(world["roles"].values()),)).fetchall()
    assert foreign == [], f"attacker code ran as another role: {foreign}"
    assert supers == [], f"a login became superuser: {supers}"


def victim_calls(world, con: psycopg.Connection, *, superuser: bool) -> None:
    """Everything a victim does with dbdl, each of which must score right."""
    got = np.array([r[0] for r in con.execute("SELECT dbdl.predict_array('m', feats) FROM t ORDER BY id")])
    assert got.shape == (20, 3)
    con.execute("SELECT dbdl.predict_class('m', feats), dbdl.predict_array('m', feats::double precision[]), "
                "dbdl.predict_class('m', feats::numeric[]) FROM t").fetchall()
    target = f"public.victim_scores_{next(_ids)}"
    con.execute(f"CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', '{target}', 'array')")
    con.execute(f"CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', '{target}_c', 'class', 7)")
    con.execute(f"CALL dbdl.predict_into('m', 'SELECT id::text, feats FROM t', '{target}_s', 'array', 7)")
    assert con.execute(f"SELECT count(*) FROM {target}").fetchone()[0] == 20
    if superuser:
        name = f"victim_{next(_ids)}"
        con.execute(f"CALL dbdl.train_export('SELECT feats, (id % 3)::bigint AS label FROM t', '{name}', "
                    "shape => ARRAY[8])")
        # the blocked table's view, one row per sample, runs none of the planted operators either
        assert con.execute(f"SELECT pg_catalog.count(*), pg_catalog.sum(pg_catalog.length(features)) FROM "
                           f"dbdl_data.ds_{name} WHERE split OPERATOR(pg_catalog.=) 'train'::pg_catalog.text"
                           ).fetchone() == (16, 16 * 32)


# -- name resolution -----------------------------------------------------------------------------

TYPE_NAMES = ("text", "int4", "int8", "int2", "bool", "oid", "bytea", "float4", "float8", "numeric", "name", "regclass")


@pytest.mark.parametrize("attacker", ["user", "admin"])
def test_temporary_domains_never_become_dbdl_parameter_types(world, attacker):
    """pg_temp is searched first for types: domains named like the built-ins with a CHECK of the
    attacker's must run in neither dbdl's definer code nor anyone's predict_into."""
    with connect(world, attacker) as con:
        con.execute(f"CREATE FUNCTION pg_temp.evil(anyelement) RETURNS boolean LANGUAGE plpgsql AS $${evil_body('domain')}"
                    "RETURN true; END $$")
        for t in TYPE_NAMES:
            con.execute(f"CREATE DOMAIN pg_temp.{t} AS pg_catalog.{t} CHECK (pg_temp.evil(VALUE))")
        # the invoker procedure first (its plans must never be reused by definer code), then the
        # definer functions in the same session, on a model whose session is not built yet (so
        # that they read its bytes; before 0007 that reused predict_into's plan, typed pg_temp.text,
        # and ran the domain's CHECK as the owner: the attacker became SUPERUSER)
        con.execute("CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', 'mine', 'array', 5)")
        con.execute("CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', 'mine_c', 'class', 5)")
        for sql in ("SELECT dbdl.predict_array('m2', feats) FROM t", "SELECT dbdl.predict_array('m', feats) FROM t", "SELECT dbdl.predict_array('m@1', feats) FROM t",
                    "SELECT dbdl.predict_class('m', feats::pg_catalog.float8[]) FROM t",
                    "SELECT dbdl.resolve_model('m')", "SELECT * FROM dbdl.list_models()"):
            con.execute(sql).fetchall()
        if attacker == "admin":
            con.execute("SELECT dbdl.register_model('m', dbdl.model_bytes((SELECT sha256 FROM dbdl.model_catalog "
                        "LIMIT 1)), 'again', false)")
            con.execute("CALL dbdl.train_export('SELECT feats, (id % 3)::int AS label FROM t', 'planted', "
                        "shape => ARRAY[8])")
    assert_nothing_ran_as_another_role(world, attacker)


@pytest.mark.parametrize("attacker", ["user", "admin"])
def test_functions_and_operators_in_the_victims_path_never_run_in_its_calls(world, attacker):
    """Better-matching overloads of every built-in dbdl's SQL uses, in public (on everyone's path)
    and in a schema of the attacker's that the victim searches; the victims then score, as
    superuser and as another dbdl_user, with pg_catalog searched first and last."""
    plant_schema(world, attacker)
    with connect(world, attacker) as con:
        for schema in ("public", "planted"):
            plant_functions(con, schema, (
                    ("array_send", "real[]", "bytea"), ("array_send", "double precision[]", "bytea"),
                    ("array_send", "numeric[]", "bytea"), ("array_send", "text[]", "bytea"),
                    ("sha256", "bytea", "bytea"), ("unnest", "bigint[]", "SETOF bigint"),
                    ("unnest", "real[]", "SETOF real"), ("unnest", "boolean[]", "SETOF boolean"),
                    ("unnest", "text[]", "SETOF text"), ("generate_subscripts", "bigint[], integer", "SETOF integer"),
                    ("format_type", "oid, integer", "text"), ("format", "text, text, text", "text"),
                    ("array_lower", "real[], integer", "integer"),
                    ("to_regclass", "text", "regclass"), ("quote_ident", "text", "text"),
                    # a blocked dataset table's export, view and reader (0014)
                    ("substring", "bytea, integer, integer", "bytea"), ("array_send", "bigint[]", "bytea"),
                    ("unnest", "integer[]", "SETOF integer")))
            for op, left, right in (("=", "text", "text"), ("=", "oid", "oid"), ("=", "bigint", "bigint"),
                                    ("+", "integer", "integer"), ("-", "integer", "integer"),
                                    ("*", "integer", "integer"), ("+", "smallint", "integer"),
                                    ("-", "bigint", "integer"), (">", "real", "real"), ("||", "text", "text"),
                                    ("~", "name", "text"), ("*", "bigint", "integer"), ("/", "bigint", "integer"),
                                    ("<", "bigint", "integer"), (">=", "bigint", "integer"), ("+", "bigint", "bigint")):
                fn = f"op_{abs(hash((schema, op, left, right)))}"
                con.execute(f"CREATE FUNCTION {schema}.{fn}({left}, {right}) RETURNS boolean LANGUAGE plpgsql AS "
                            f"$${evil_body(f'{schema} {op}')}RETURN false; END$$")
                con.execute(f"CREATE OPERATOR {schema}.{op} (LEFTARG = {left}, RIGHTARG = {right}, "
                            f"FUNCTION = {schema}.{fn})")
            # the aggregates that build a blocked dataset table's values
            con.execute(f"CREATE FUNCTION {schema}.agg_step(bytea, bytea, bytea) RETURNS bytea LANGUAGE plpgsql AS "
                        f"$${evil_body(f'{schema}.string_agg')}RETURN NULL; END$$")
            con.execute(f"CREATE AGGREGATE {schema}.string_agg(bytea, bytea) (SFUNC = {schema}.agg_step, STYPE = bytea)")
            con.execute(f"CREATE FUNCTION {schema}.agg_step(bigint[], bigint) RETURNS bigint[] LANGUAGE plpgsql AS "
                        f"$${evil_body(f'{schema}.array_agg')}RETURN NULL; END$$")
            con.execute(f"CREATE AGGREGATE {schema}.array_agg(bigint) (SFUNC = {schema}.agg_step, STYPE = bigint[])")
            # the user-facing names too: identical and near signatures
            for fn in ("predict", "predict_array", "predict_class"):
                for args in ("text, real[]", "varchar, real[]", "text, anyarray", "text, bytea"):
                    con.execute(f"CREATE FUNCTION {schema}.{fn}({args}) RETURNS bigint LANGUAGE plpgsql AS "
                                f"$${evil_body(f'{schema}.{fn}')}RETURN 0; END$$")
    for path in ('"$user", public', 'planted, public', 'planted, public, pg_catalog',
                 '"$user", dbdl, planted, public'):
        with connect(world) as con:
            con.execute(f"SET search_path = {path}")
            victim_calls(world, con, superuser=True)
        with connect(world, "analyst") as con:
            con.execute(f"SET search_path = {path}")
            victim_calls(world, con, superuser=False)
    assert_nothing_ran_as_another_role(world, attacker)


def test_the_documented_search_path_reaches_dbdl_before_public(world):
    """docs/security.md: ALTER ROLE … SET search_path = "$user", dbdl, public. A function of the same
    name in public — even an identical signature — does not win there; unqualified CREATE is
    refused rather than landing in an unexpected schema."""
    with connect(world, "user") as con:
        for args in ("text, real[]", "varchar, real[]", "text, double precision[]", "text, anyarray"):
            con.execute(f"CREATE FUNCTION public.predict_array({args}) RETURNS real[] LANGUAGE plpgsql AS "
                        f"$${evil_body('public predict')}RETURN NULL; END$$")
    with connect(world) as con:
        con.execute(f"ALTER ROLE {world['roles']['analyst']} SET search_path = \"$user\", dbdl, public")
    with connect(world, "analyst") as con:
        got = np.array([r[0] for r in con.execute("SELECT predict_array('m', feats) FROM t ORDER BY id")])
        assert got.shape == (20, 3)
        con.execute("SELECT predict_array('m', feats::double precision[]), predict_class('m', feats::integer[]) "
                    "FROM t").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="schema dbdl"):
            con.execute("CREATE TABLE unqualified (a int)")
        con.execute("CREATE TABLE public.qualified (a int)")
        con.execute("CALL predict_into('m', 'SELECT id, feats FROM t', 'public.scores')")
    with connect(world) as con:
        assert con.execute("SELECT count(*) FROM sec_log").fetchone()[0] == 0


@pytest.mark.parametrize("attacker", ["user", "admin"])
def test_nobody_but_the_owner_creates_objects_in_dbdl(world, attacker):
    with connect(world, attacker) as con:
        for sql in ("CREATE TABLE dbdl.mine (a int)", "CREATE FUNCTION dbdl.array_send(real[]) RETURNS bytea "
                    "LANGUAGE sql RETURN NULL", "CREATE DOMAIN dbdl.text AS pg_catalog.text",
                    "CREATE VIEW dbdl.mine AS SELECT 1"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute(sql)


def test_a_view_or_row_security_in_dbdl_data_is_not_read(world, features):
    """dbdl_data is dbdl_admin's: a weight table that is a view, or has a policy, would run the
    admin's expressions as every reader. The client refuses to read such a relation."""
    with dbdl.connect(world["url"]) as db:
        weights = db.sql("SELECT predict_array('m', feats) FROM t", strategy="relation")
        assert len(weights.fetchall()) == 20
        (table,) = db.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'dbdl_data' "
                          "AND table_name LIKE 'rel_%' LIMIT 1").fetchall()[0]
        db.sql(f"ALTER TABLE dbdl_data.{table} OWNER TO {world['roles']['admin']}")
    with connect(world, "admin") as con:
        con.execute(f"CREATE FUNCTION public.evil() RETURNS boolean LANGUAGE plpgsql AS $${evil_body('policy')}"
                    "RETURN true; END$$")
        con.execute(f"ALTER TABLE dbdl_data.{table} ENABLE ROW LEVEL SECURITY")
        con.execute(f"CREATE POLICY p ON dbdl_data.{table} USING (public.evil())")
    analyst = world["server"].url(world["db"], world["roles"]["analyst"])
    with dbdl.connect(analyst, migrate=False) as db:
        with pytest.raises(dbdl.QueryError, match="row security"):
            db.sql("SELECT predict_array('m', feats) FROM t", strategy="relation")
    assert_nothing_ran_as_another_role(world, "admin")


# -- registry integrity ------------------------------------------------------------------------

REGISTRY_WRITES = (
    "UPDATE dbdl.blobs SET bytes = '\\x00'", "DELETE FROM dbdl.blobs",
    "INSERT INTO dbdl.blobs VALUES ('x', '\\x00', 1)",
    "UPDATE dbdl.models SET serving_version = 1", "DELETE FROM dbdl.models",
    "UPDATE dbdl.model_versions SET signature = '{}'", "INSERT INTO dbdl.alias_history VALUES ('m', 9, 1)",
    "UPDATE dbdl.datasets SET table_name = 'x'", "INSERT INTO dbdl.calibration VALUES ('udf_row_s', 1)",
    "UPDATE dbdl.settings SET value = '[]'", "TRUNCATE dbdl.blobs",
)


@pytest.mark.parametrize("attacker", ["user", "admin"])
def test_registry_tables_are_written_only_by_dbdl_functions(world, attacker):
    with connect(world, attacker) as con:
        for sql in REGISTRY_WRITES:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute(sql)
        if attacker == "user":
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute("SELECT count(*) FROM dbdl.blobs")
            for sql in ("SELECT dbdl.register_model('x', '\\x00'::bytea)",
                        "SELECT dbdl.register_model('x', '\\x00'::bytea, NULL, true, 'onnx', NULL)",
                        "SELECT dbdl.promote_model('m', 1)", "SELECT dbdl.rollback_model('m')",
                        "SELECT dbdl.drop_model('m')", "CALL dbdl.set_model_options('m', '{}')",
                        "CALL dbdl.clear_cache('m')", "SELECT dbdl.set_calibration('udf_row_s', 1)",
                        "SELECT dbdl.record_dataset('{}')", "SELECT dbdl.forget_dataset('d')",
                        "CALL dbdl.train_export('SELECT feats, id AS label FROM t', 'd')"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    con.execute(sql)
        else:
            # the definer functions check what they are given
            with pytest.raises(psycopg.Error, match="dbdl.InvalidName: source"):
                con.execute("SELECT dbdl.register_model('x', dbdl.model_bytes((SELECT sha256 FROM dbdl.model_catalog "
                            "LIMIT 1)), NULL, true, 'handmade', NULL)")
            forged = ('{"name": "d", "version": 1, "table_name": "(SELECT 1)", "shape": "[8]", "dtype": "float32", '
                      '"label_dtype": "int64", "n_rows": 1, "n_train": 1, "n_validation": 0, "n_test": 0, '
                      '"train_fraction": 1.0, "validation_fraction": 0.0, "seed": 0, "features": "[]", '
                      '"label_column": "label", "source_query": "x", "uid": "u", "block_rows": 0}')
            with pytest.raises(psycopg.Error, match="dbdl.InvalidName: dataset 'd' version 1 lives in"):
                con.execute("SELECT dbdl.record_dataset(%s)", (forged,))
            with pytest.raises(psycopg.Error, match="does not exist as a table"):
                con.execute("SELECT dbdl.record_dataset(%s)", (forged.replace("(SELECT 1)", "dbdl_data.ds_d_v1"),))
            # a table of the dataset's name in any other schema (one the caller owns, or the server's
            # own): the catalog's rules take any plain schema for Spark's data database, the server's
            # function only its own two
            for elsewhere in ("public.ds_d_v1", "pg_catalog.ds_d_v1", "dbdl_user.ds_d_v1"):
                with pytest.raises(psycopg.Error, match="dbdl.InvalidName: dataset 'd' version 1 lives in"):
                    con.execute("SELECT dbdl.record_dataset(%s)", (forged.replace("(SELECT 1)", elsewhere),))
            # a blocked layout's claim is checked too: its size, and one row per block in the table
            real = forged.replace("(SELECT 1)", "dbdl_data.ds_d_v1")
            for block_rows, message in (("-1", "block_rows is 0"), ("1025", "block_rows is 0"), ("true", "whole"),
                                        ("4", "does not exist as a table")):
                with pytest.raises(psycopg.Error, match=message):
                    con.execute("SELECT dbdl.record_dataset(%s)",
                                (real.replace('"block_rows": 0', f'"block_rows": {block_rows}'),))
            with pytest.raises(psycopg.Error, match="block_rows is 0"):  # rows of different lengths: one per row
                con.execute("SELECT dbdl.record_dataset(%s)", (real.replace('"block_rows": 0', '"block_rows": 4')
                                                              .replace('"shape": "[8]"', '"shape": "[-1]"'),))


def test_the_python_api_works_for_dbdl_admin_through_the_functions(world, mlp2_onnx, features, tmp_path):
    import subprocess
    import sys

    admin = world["server"].url(world["db"], world["roles"]["admin"])
    path = tmp_path / "m3.onnx"
    path.write_bytes(mlp2_onnx)
    cli = subprocess.run([sys.executable, "-m", "dbdl.cli", "register", admin, "m3", str(path)],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    with dbdl.connect(admin, migrate=False) as db:
        assert db.models.register("m", mlp2_onnx, description="v2", promote=False) == 2
        info = db.models.get("m", 2)
        assert (info.source, info.description, info.serving) == ("onnx", "v2", False)
        assert info.n_params > 0 and info.flops_per_row > 0  # computed by the server
        db.models.promote("m", 2)
        assert db.models.rollback("m") == 1
        assert db.models.set_options("m", cache=True)["cache"] is True
        db.models.clear_cache("m")
        db.models.set_options("m", cache=False)
        db.train_export("SELECT feats, (id % 3)::int AS label FROM t", "d", shape=(8,))
        assert db.datasets.get("d").table == "dbdl_data.ds_d_v1"
        db.train_export("SELECT feats, (id % 3)::int AS label FROM t", "d", shape=(8,))
        assert db.datasets.get("d").table == "dbdl_data.ds_d_v2"
        db.datasets.drop("d")
        assert db.models.drop("m", 2) == 1
        db.backend.set_calibration({"udf_row_s": 1e-6})
        got = np.array([r[0] for r in db.sql("SELECT predict_array('m', feats) FROM t ORDER BY id",
                                             strategy="relation").fetchall()])
        assert got.shape == (20, 3)


def test_forged_blobs_are_never_served(world, mlp_onnx, mlp2_onnx, features):
    """Bytes changed behind the registry (here by the owner, which alone can) do not match their
    sha256: new sessions refuse them, in the server and in the client."""
    with connect(world) as con:
        con.execute("UPDATE dbdl.blobs SET bytes = %s", (mlp2_onnx,))
    for who in ("analyst", None):
        with connect(world, who) as con:
            with pytest.raises(psycopg.Error, match="dbdl.InvalidModel: the stored bytes of model 'm@1' do not match"):
                con.execute("SELECT dbdl.predict_array('m', feats) FROM t").fetchall()
            with pytest.raises(psycopg.Error, match="dbdl.InvalidModel"):
                con.execute("CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', 'forged')")
    from dbdl_udf.runtime import SESSIONS

    SESSIONS.clear()
    analyst = world["server"].url(world["db"], world["roles"]["analyst"])
    with dbdl.connect(analyst, migrate=False) as db:
        with pytest.raises(dbdl.InvalidModel, match="model 'm@1' do not match"):
            db.sql("SELECT predict_array('m', feats) FROM t", strategy="dl")


def test_forged_blobs_are_never_served_on_duckdb(tmp_path, mlp_onnx, mlp2_onnx, features):
    from dbdl_udf.runtime import SESSIONS

    url = f"duckdb:///{tmp_path / 'forged.duckdb'}"
    with dbdl.connect(url) as db:
        db.models.register("m", mlp_onnx)
        db.create_table("t", {"id": np.arange(5), "feats": features[:5]})
        db.backend.execute("UPDATE dbdl.blobs SET bytes = ?", (mlp2_onnx,))
    SESSIONS.clear()
    with dbdl.connect(url) as db:
        for strategy in ("udf", "dl"):
            with pytest.raises(dbdl.InvalidModel, match="model 'm@1' do not match"):
                db.sql("SELECT predict_array('m', feats) FROM t", strategy=strategy)


def test_model_bytes_are_readable_by_dbdl_user_only_through_model_bytes(world, mlp_onnx):
    """Decision (docs/security.md): scoring roles may fetch a model's bytes — the client's
    DL-centric and relation-centric plans need them — but never read or write the table."""
    with connect(world, "analyst") as con:
        sha = con.execute("SELECT sha256 FROM dbdl.model_catalog").fetchone()[0]
        assert bytes(con.execute("SELECT dbdl.model_bytes(%s)", (sha,)).fetchone()[0]) == mlp_onnx
    with psycopg.connect(world["server"].url(world["db"], "postgres"), autocommit=True) as con:
        con.execute("CREATE ROLE sec_nobody_x LOGIN")
    try:
        with psycopg.connect(world["server"].url(world["db"], "sec_nobody_x"), autocommit=True) as con:
            for sql in ("SELECT dbdl.model_bytes('x')", "SELECT dbdl.predict_array('m', ARRAY[1,2,3,4,5,6,7,8]::real[])",
                        "CALL dbdl.predict_into('m', 'SELECT 1, ARRAY[1]::real[]', 'x')"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    con.execute(sql)
    finally:
        with psycopg.connect(world["server"].url(world["db"], "postgres"), autocommit=True) as con:
            con.execute("DROP ROLE sec_nobody_x")


# -- the catalog and the sources ----------------------------------------------------------------


def test_catalog_definer_functions_pin_search_path_and_public_holds_nothing_of_dbdls(world):
    with connect(world) as con:
        definer = con.execute(
            "SELECT p.oid::regprocedure::text, coalesce(array_to_string(p.proconfig, ','), '') FROM pg_proc p "
            "WHERE p.pronamespace = 'dbdl'::regnamespace AND p.prosecdef").fetchall()
        public = con.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace "
            "AND (p.proname ~ '^predict' OR p.proname IN ('train_export') OR p.prosrc ~ 'dbdl')").fetchall()
        grants = con.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = 'dbdl'::regnamespace "
            "AND has_function_privilege('public', p.oid, 'EXECUTE')").fetchall()
        create = con.execute("SELECT r.rolname FROM pg_roles r WHERE r.rolname IN ('dbdl_user', 'dbdl_admin') "
                             "AND has_schema_privilege(r.rolname, 'dbdl', 'CREATE')").fetchall()
        overloads = {r[0] for r in con.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = 'dbdl'::regnamespace "
            "AND p.proname = 'predict'").fetchall()}
    assert len(definer) >= 15
    for function, config in definer:
        assert re.fullmatch(r"search_path=pg_catalog, dbdl, pg_temp", config), (function, config)
    assert public == []
    assert grants == [], "PUBLIC may execute nothing of dbdl's"
    assert create == []
    for t in ("real[]", "double precision[]", "integer[]", "bigint[]", "smallint[]", "numeric[]", "bytea",
              "anyarray"):
        assert f"dbdl.predict(text,{t})" in overloads


_BARE_TYPES = ("text", "bytea", "bool", "boolean", "oid", "name", "regclass", "numeric", "real", "integer", "bigint",
               "smallint", "double precision", "int2", "int4", "int8", "float4", "float8")
_CAST = re.compile(r"::\s*(text|bytea|float4|float8|int2|int4|int8|oid|bool|numeric|name|regclass)\b")


def _calls(text: str, opener: str):
    """The argument text of every ``opener(...)`` call (parentheses balanced)."""
    start = text.find(opener)
    while start != -1:
        depth, i = 0, start + len(opener) - 1
        while i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        yield text[start:i + 1]
        start = text.find(opener, i)


def test_sources_qualify_every_type_in_prepare_lists_and_casts():
    """A grep over the in-database code: every type a plpy.prepare list names (and every cast of a
    non-keyword type) is schema-qualified, in the Python bodies and in migration 0007 on."""
    checked = 0
    for path in sorted((ROOT / "udf" / "dbdl_udf").glob("*.py")):
        text = path.read_text()
        for opener in ("plpy.prepare(", ".get(plpy,", ".get(self.plpy,"):
            for call in _calls(text, opener):
                for literal in re.findall(r'"([^"]*)"', call):
                    if literal.removesuffix("[]") in _BARE_TYPES:
                        raise AssertionError(f"{path.name}: unqualified type {literal!r} in {call[:80]}…")
                    checked += literal.startswith("pg_catalog.")
        for line_no, line in enumerate(text.splitlines(), 1):
            assert not _CAST.search(line), f"{path.name}:{line_no}: unqualified cast: {line.strip()}"
    assert checked >= 10  # the scan saw the type lists
    for path in sorted((ROOT / "migrations" / "postgres").glob("*.sql")):
        if int(path.name[:4]) < 7:
            continue  # released; 0007 replaces what they defined
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("--")[0]
            assert not _CAST.search(code), f"{path.name}:{line_no}: unqualified cast: {line.strip()}"
            assert not re.search(r"(?<![.\w])(array_send|sha256|array_lower|array_upper|format|unnest)\(", code), (
                f"{path.name}:{line_no}: unqualified built-in: {line.strip()}")


# -- the qualified spelling, on every backend ------------------------------------------------------


def test_qualified_predict_is_planned_like_the_unqualified_call(db, mlp_onnx, features, strategy):
    """``dbdl.predict(...)`` is what PostgreSQL users write (docs/security.md); db.sql plans it as
    it plans ``predict(...)``, on DuckDB too, and a model named by a column reaches dbdl's own
    function. A ``predict`` of another schema is not dbdl's and is left alone."""
    db.models.register("m", mlp_onnx)
    db.create_table("t", {"id": np.arange(6), "feats": features[:6]})
    want = run_onnx(mlp_onnx, {"x": features[:6]})
    for sql in ("SELECT id, dbdl.predict_array('m', feats) FROM t ORDER BY id",
                "SELECT id, DBDL.PREDICT_ARRAY('m', feats) AS p FROM t ORDER BY id"):
        got = np.array([r[1] for r in db.sql(sql, strategy=strategy).fetchall()])
        np.testing.assert_allclose(got, want, atol=1e-5)
    classes = [r[0] for r in db.sql("SELECT dbdl.predict_class('m', feats) FROM t ORDER BY id",
                                    strategy=strategy).fetchall()]
    assert classes == want.argmax(axis=1).tolist()
    by_column = db.sql("SELECT dbdl.predict_array(s.name, t.feats) FROM t, (SELECT 'm' AS name) AS s ORDER BY t.id")
    np.testing.assert_allclose(np.array([r[0] for r in by_column.fetchall()]), want, atol=1e-5)
    assert len(db.explain("SELECT dbdl.predict_array('m', feats) FROM t")) == 1  # planned, not passed through


def test_db_sql_sends_dbdl_qualified_calls_even_for_text_it_cannot_plan(world):
    """Text sqlglot cannot parse, and CALL statements, go to PostgreSQL as written, but with dbdl's
    schema before dbdl's unqualified names (so that the default search_path, which lacks dbdl,
    finds them and nobody else's function answers); string literals are left alone."""
    from dbdl.backends.postgres.dialect import qualify_dbdl_calls

    assert qualify_dbdl_calls("SELECT predict('m', 'predict(x)'), x.predict(1), \"predict\"(2)") == (
        "SELECT dbdl.predict('m', 'predict(x)'), x.predict(1), \"predict\"(2)")
    assert qualify_dbdl_calls("CALL train_export('SELECT predict(1)', 'd')") == (
        "CALL dbdl.train_export('SELECT predict(1)', 'd')")
    analyst = world["server"].url(world["db"], world["roles"]["analyst"])
    with dbdl.connect(analyst, migrate=False) as db:
        rows = db.sql("SELECT id, predict_array('m', CAST(feats AS REAL[8])) FROM t ORDER BY id").fetchall()
        assert len(rows) == 20
        db.sql("CALL predict_into('m', 'SELECT id, feats FROM t', 'public.compat')")
        assert db.sql("SELECT count(*) FROM public.compat").scalar() == 20


def test_upgrading_a_0006_database_moves_admin_tables_and_drops_the_public_functions(pg_server, mlp_onnx,
                                                                                   monkeypatch):
    import dbdl.migrate as migrate

    url = pg_server.create_database("dbdl_sec_upgrade")
    shipped = migrate.available
    monkeypatch.setattr(migrate, "available", lambda name: shipped(name)[:6])
    with psycopg.connect(url, autocommit=True) as con:
        dbdl.connect(url).close()
        assert con.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace "
                           "AND proname ~ '^predict'").fetchone()[0] == 7
        # what a 0006-era dbdl_admin left in schema dbdl
        con.execute("CREATE TABLE dbdl.rel_0123456789abcdef_w1 (i int, j int, w real)")
        con.execute("CREATE TABLE dbdl.ds_old_v1 (row_id bigint PRIMARY KEY, features bytea, label bigint, "
                    "split text)")
        con.execute("INSERT INTO dbdl.ds_old_v1 VALUES (0, '\\x0000803f', 1, 'train')")
        con.execute("CREATE VIEW dbdl.ds_old AS SELECT * FROM dbdl.ds_old_v1")
        con.execute("INSERT INTO dbdl.datasets VALUES ('old', 1, 'dbdl.ds_old_v1', '[1]', 'float32', 'int64', 1, "
                    "1, 0, 0, 1.0, 0.0, 0, '[\"f\"]', 'label', 'SELECT 1', 'u')")
        monkeypatch.setattr(migrate, "available", shipped)
    from dbdl.backends.base import Backend

    backend = Backend.open(url)  # connect() never upgrades PostgreSQL: `dbdl migrate` does this
    try:
        assert [m.id for m in migrate.migrate(backend)] == list(range(7, len(shipped("postgres")) + 1))
    finally:
        backend.close()
    try:
        with psycopg.connect(url, autocommit=True) as con:
            moved = con.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                "WHERE c.relname ~ '^(rel_0123|ds_old)' AND c.relkind IN ('r', 'v') ORDER BY 2").fetchall()
            assert moved == [("dbdl_data", "ds_old"), ("dbdl_data", "ds_old_v1"), ("dbdl_data", "rel_0123456789abcdef_w1")]
            assert con.execute("SELECT table_name FROM dbdl.datasets").fetchall() == [("dbdl_data.ds_old_v1",)]
            assert con.execute("SELECT count(*) FROM dbdl_data.ds_old").fetchone()[0] == 1
            assert con.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace").fetchone()[0] == 0
        with dbdl.connect(url) as db:
            assert db.datasets.get("old").view == "dbdl_data.ds_old"
            # a dataset of one row per sample, exported before blocked tables (0014), still reads
            assert db.datasets.get("old").block_rows == 0
            x, y = db.training_set("old", split=None, cache=False).arrays()
            assert x.tolist() == [[1.0]] and y.tolist() == [1]
            db.models.register("m", mlp_onnx)
    finally:
        pg_server.drop_database("dbdl_sec_upgrade")


# -- the SQL the Python client generates --------------------------------------------------------

def _deep_model() -> torch.nn.Module:
    torch.manual_seed(11)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.Sigmoid(),
                               torch.nn.Linear(8, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1))


@pytest.mark.parametrize("attacker", ["user", "admin"])
def test_the_sql_dbdl_generates_never_runs_a_planted_overload(world, attacker, features):
    """db.sql turns predict calls into SQL that runs with the victim's rights and path: the
    relation-centric layers, the DL-centric and cached joins, the cache's look-up and fill. Exact
    and better-matching overloads of every built-in that SQL uses, planted in public and in a
    schema the victim searches before pg_catalog, never run in it, and the predictions are right."""
    role = world["roles"][attacker]
    with dbdl.connect(world["url"]) as db:
        db.models.register("deep", _deep_model(), example=torch.randn(1, 8))
        db.models.register("cached", _deep_model(), example=torch.randn(1, 8), description="cache on")
        db.models.set_options("cached", cache=True)
        for name in ("deep", "cached"):  # the weight tables, made by the owner
            db.sql(f"SELECT count(predict_array('{name}', feats)) FROM t", strategy="relation")
        db.models.clear_cache("cached")
        con = db.backend.con
        con.execute(f"CREATE SCHEMA planted AUTHORIZATION {role}")
        con.execute("GRANT USAGE ON SCHEMA planted TO PUBLIC")
        expected = db.models.load("deep")(features[:20])
    with connect(world, attacker) as con:
        for schema in ("public", "planted"):
            for fn, args, returns in (
                    ("cardinality", "real[]", "integer"), ("array_position", "real[], real", "integer"),
                    ("unnest", "real[]", "SETOF real"), ("array_send", "real[]", "bytea"),
                    ("sha256", "bytea", "bytea"), ("exp", "double precision", "double precision"),
                    ("exp", "numeric", "numeric")):
                ret = "" if returns.startswith("SETOF") else "NULL"
                con.execute(f"CREATE FUNCTION {schema}.{fn}({args}) RETURNS {returns} LANGUAGE plpgsql AS "
                            f"$${evil_body(f'{schema}.{fn}')}RETURN {ret}; END$$")
            for agg, arg, state in (("sum", "double precision", "double precision"), ("max", "double precision",
                                    "double precision"), ("array_agg", "bigint", "bigint[]"),
                                    ("array_agg", "double precision", "double precision[]"), ("min", "tid", "tid"),
                                    ("count", "bigint", "bigint")):
                step = f"step_{agg}_{abs(hash((schema, arg)))}"
                con.execute(f"CREATE FUNCTION {schema}.{step}({state}, {arg}) RETURNS {state} LANGUAGE plpgsql AS "
                            f"$${evil_body(f'{schema}.{agg}({arg})')}RETURN $1; END$$")
                con.execute(f"CREATE AGGREGATE {schema}.{agg}({arg}) (SFUNC = {schema}.{step}, STYPE = {state})")
            for op, left, right in (("=", "real[]", "real[]"), ("=", "bytea", "bytea"), ("=", "bigint", "bigint"),
                                    ("=", "tid", "tid"), ("<>", "integer", "integer"), ("||", "text", "text"),
                                    ("/", "numeric", "double precision"), ("*", "numeric", "double precision"),
                                    ("-", "numeric", "double precision"), ("+", "numeric", "double precision"),
                                    ("*", "double precision", "real"), ("+", "double precision", "real"),
                                    ("-", "bigint", "integer"), ("-", "double precision", "double precision"),
                                    ("/", "double precision", "double precision"), (">", "bigint", "integer"),
                                    ("<=", "bigint", "integer"), ("<", "bigint", "integer")):
                fn = f"op_{abs(hash((schema, op, left, right)))}"
                result = "boolean" if op in ("=", "<>", ">", "<", "<=") else ("text" if op == "||" else right)
                con.execute(f"CREATE FUNCTION {schema}.{fn}({left}, {right}) RETURNS {result} LANGUAGE plpgsql AS "
                            f"$${evil_body(f'{schema} {op}')}RETURN NULL; END$$")
                con.execute(f"CREATE OPERATOR {schema}.{op} (LEFTARG = {left}, RIGHTARG = {right}, "
                            f"FUNCTION = {schema}.{fn})")
    for victim in (None, "analyst"):
        url = world["url"] if victim is None else world["server"].url(world["db"], world["roles"][victim])
        with dbdl.connect(url, migrate=False) as db:
            db.backend.execute("SET search_path = planted, public, pg_catalog")
            for strategy in ("relation", "dl", "udf", None):
                for model in ("deep", "cached"):
                    got = np.array([r[1] for r in db.sql(
                        f"SELECT id, predict_array('{model}', feats) AS p FROM t ORDER BY id", strategy=strategy
                    ).fetchall()], dtype=np.float32)
                    np.testing.assert_allclose(got, expected, atol=1e-5)
                labels = [r[0] for r in db.sql("SELECT predict_class('deep', f) FROM (SELECT feats AS f FROM t "
                                               "ORDER BY id) AS s", strategy=strategy).fetchall()]
                assert sorted(labels) == sorted(expected.argmax(axis=1).tolist())
    assert_nothing_ran_as_another_role(world, attacker)


@pytest.mark.parametrize("attacker", ["user", "admin"])
def test_a_model_that_reads_the_servers_files_is_refused_for_every_role(world, attacker):
    """External data pointing at pg_authid (global/1260, relative to the server's data directory),
    registered by a dbdl_admin login through SQL and through the Python API: refused before any
    session, nothing stored, no file content in the error. A dbdl_user may not register at all."""
    from test_model_safety import leaky_model

    data = leaky_model("initializer_as_input", "global/1260").SerializeToString()
    url = world["server"].url(world["db"], world["roles"][attacker])
    expected = dbdl.InvalidModel if attacker == "admin" else dbdl.PermissionDenied
    with dbdl.connect(url, migrate=False) as db:
        with pytest.raises(expected) as sql_error:
            db.sql("SELECT dbdl.register_model('leak', ?)", [data])
        # the client checks the bytes before it asks the server: a dbdl_user hears that first
        with pytest.raises((dbdl.InvalidModel, expected)) as api_error:
            db.models.register("leak", data)
    for caught in (sql_error, api_error):
        assert "SCRAM" not in str(caught.value) and "md5" not in str(caught.value)
        if attacker == "admin":
            assert "save_as_external_data=False" in str(caught.value)
    with connect(world) as con:
        assert con.execute("SELECT count(*) FROM dbdl.models WHERE name = 'leak'").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM dbdl.blobs").fetchone()[0] == 2  # m and m2 only
    assert_nothing_ran_as_another_role(world, attacker)
