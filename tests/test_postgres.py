"""PostgreSQL only: the functions live in the server, so psql (any client) can use them."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import sqlglot.expressions as exp
from conftest import export_onnx, make_mlp, run_onnx

import dbdl

_roles = itertools.count()


@pytest.fixture
def pg(pg_server, request):
    """A fresh migrated database: (server, dbname, url)."""
    name = f"dbdl_pg_{request.node.name[:30].lower().replace('[', '_').replace(']', '')}"
    url = pg_server.create_database(name)
    dbdl.connect(url).close()
    yield pg_server, name, url
    pg_server.drop_database(name)


def psql(server, dbname, sql, user="postgres", check=True):
    result = server.psql("-qAt", "-F", "|", dbname=dbname, user=user, input=sql)
    if check and result.returncode != 0:
        raise AssertionError(f"psql failed: {result.stderr}")
    return result


def floats(text: str) -> list[float]:
    return [float(v) for v in text.strip("{}").split(",")]


def test_psql_register_predict_and_batched_predict(pg, mlp_onnx, features):
    server, name, url = pg
    rows = "\n".join(f"{i}\t{{{','.join(map(repr, map(float, f)))}}}" for i, f in enumerate(features[:50]))
    out = psql(server, name, f"""
CREATE TABLE t (id bigint, feats real[]);
COPY t FROM STDIN;
{rows}
\\.
SELECT dbdl.register_model('fraud', decode('{mlp_onnx.hex()}', 'hex'), 'from psql');
SELECT name, version, serving, source, n_features, description FROM dbdl.list_models();
SELECT id, dbdl.predict_array('fraud', feats), dbdl.predict_class('fraud', feats) FROM t ORDER BY id;
CALL dbdl.predict_into('fraud', 'SELECT id, feats FROM t', 'fraud_scores');
SELECT count(*) FROM fraud_scores;
SELECT id, prediction FROM fraud_scores ORDER BY id;
""").stdout.splitlines()
    expected = run_onnx(mlp_onnx, {"x": features[:50]})
    assert out[0] == "1"
    assert out[1] == "fraud|1|t|onnx|8|from psql"
    scored = [line.split("|") for line in out[2:52]]
    np.testing.assert_allclose([floats(r[1]) for r in scored], expected, atol=1e-5)
    assert [int(r[2]) for r in scored] == expected.argmax(axis=1).tolist()
    assert out[52] == "50"
    batched = [line.split("|") for line in out[53:103]]
    np.testing.assert_allclose([floats(r[1]) for r in batched], expected, atol=1e-5)


def test_sql_administration(pg, mlp_onnx, mlp2_onnx):
    server, name, url = pg
    out = psql(server, name, f"""
SELECT dbdl.register_model('m', decode('{mlp_onnx.hex()}', 'hex'));
SELECT dbdl.register_model('m', decode('{mlp2_onnx.hex()}', 'hex'));
SELECT dbdl.register_model('m', decode('{mlp_onnx.hex()}', 'hex'), NULL, false);
SELECT string_agg(version || ':' || serving, ',' ORDER BY version) FROM dbdl.list_models();
SELECT dbdl.promote_model('m', 1);
SELECT dbdl.rollback_model('m');
SELECT dbdl.drop_model('m', 2);
SELECT string_agg(version || ':' || serving, ',' ORDER BY version) FROM dbdl.list_models();
""").stdout.splitlines()
    assert out == ["1", "2", "1", "1:false,2:true", "1", "2", "1", "1:true"]
    with dbdl.connect(url) as db:
        assert [(m.version, m.serving) for m in db.models.list()] == [(1, True)]
    bad = psql(server, name, "SELECT dbdl.register_model('m', decode('00ff', 'hex'));", check=False)
    assert bad.returncode != 0 and "dbdl.InvalidModel" in bad.stderr
    bad = psql(server, name, "SELECT dbdl.register_model('bad name', decode('00', 'hex'));", check=False)
    assert "dbdl.InvalidName" in bad.stderr
    assert psql(server, name, "SELECT count(*) FROM dbdl.blobs;").stdout.strip() == "1"


def test_errors_from_psql_name_the_fix(pg, mlp_onnx):
    server, name, url = pg
    psql(server, name, f"SELECT dbdl.register_model('m', decode('{mlp_onnx.hex()}', 'hex'));")
    cases = {
        "SELECT dbdl.predict_array('ghost', ARRAY[1,2,3,4,5,6,7,8]::real[]);": ("dbdl.ModelNotFound", "42704"),
        "SELECT dbdl.predict_array('m', ARRAY[1,2,3]::real[]);": ("takes 8 ", "22023"),
        "SELECT dbdl.predict_array('m', ARRAY['a','b']);": ("dbdl.DTypeMismatch", "42804"),
        "SELECT dbdl.predict('m', ARRAY[1,2,3,4,5,6,7,8]::real[]);": ("predict_array()", "22023"),
    }
    for sql, (needle, state) in cases.items():
        result = psql(server, name, "\\set VERBOSITY verbose\n" + sql, check=False)
        assert result.returncode != 0 and needle in result.stderr and state in result.stderr, (sql, result.stderr)
    ok = psql(server, name, "SELECT dbdl.predict_array('m', NULL::real[]) IS NULL, "
                            "dbdl.predict_class('m', ARRAY[1.5,2,3,4,5,6,7,8]);").stdout.strip()
    x = np.array([[1.5, 2, 3, 4, 5, 6, 7, 8]], dtype=np.float32)
    assert ok == f"t|{int(run_onnx(mlp_onnx, {'x': x}).argmax())}"


def test_bytea_features(pg, mlp_onnx, features):
    server, name, url = pg
    with dbdl.connect(url) as db:
        db.models.register("m", mlp_onnx)
        blob = features[:3].astype("<f4")
        got = [db.sql("SELECT predict_array('m', ?)", [row.tobytes()]).scalar() for row in blob]
        np.testing.assert_allclose(got, run_onnx(mlp_onnx, {"x": features[:3]}), atol=1e-5)
        with pytest.raises(dbdl.ShapeMismatch, match="32 bytes"):
            db.sql("SELECT predict_array('m', ?)", [blob[0, :5].tobytes()])


def test_predict_into_kinds_nulls_and_bad_input(pg, mlp_onnx, scorer_onnx, features):
    server, name, url = pg
    with dbdl.connect(url) as db:
        db.models.register("clf", mlp_onnx)
        db.models.register("score", scorer_onnx)
        db.create_table("t", {"id": np.arange(40), "feats": features[:40]})
        db.sql("UPDATE t SET feats = NULL WHERE id % 10 = 3")
        db.sql("CALL dbdl.predict_into('clf', 'SELECT id, feats FROM t', 'classes', 'class', 16)")
        db.sql("CALL dbdl.predict_into('score', 'SELECT id, feats::float8[] FROM t WHERE id < 20', 'scores', 'scalar')")
        classes = dict(db.sql("SELECT id, prediction FROM classes").fetchall())
        scores = dict(db.sql("SELECT id, prediction FROM scores").fetchall())
    expected_cls = run_onnx(mlp_onnx, {"x": features[:40]}).argmax(axis=1)
    expected_score = run_onnx(scorer_onnx, {"x": features[:40]})[:, 0]
    assert len(classes) == 40 and len(scores) == 20
    for i in range(40):
        assert classes[i] == (None if i % 10 == 3 else expected_cls[i])
    for i in range(20):
        if i % 10 == 3:
            assert scores[i] is None
        else:
            assert abs(scores[i] - expected_score[i]) < 1e-5
    with dbdl.connect(url) as db:
        with pytest.raises(dbdl.InvalidName, match="target table"):
            db.sql("CALL dbdl.predict_into('clf', 'SELECT id, feats FROM t', 'x; DROP TABLE t')")
        with pytest.raises(dbdl.ShapeMismatch, match="two columns"):
            db.sql("CALL dbdl.predict_into('clf', 'SELECT id, id, feats FROM t', 'out3')")
        with pytest.raises(dbdl.ModelNotFound):
            db.sql("CALL dbdl.predict_into('ghost', 'SELECT id, feats FROM t', 'out4')")
        assert db.sql("SELECT count(*) FROM t").scalar() == 40
        assert db.sql("SELECT to_regclass('out3') IS NULL AND to_regclass('out4') IS NULL").scalar()


def test_new_version_is_seen_by_other_sessions_and_sessions_are_cached(pg, mlp_onnx, mlp2_onnx, features):
    server, name, url = pg
    writer, reader = dbdl.connect(url), dbdl.connect(url)
    try:
        writer.models.register("m", mlp_onnx)
        writer.create_table("t", {"id": np.arange(100), "feats": features[:100]})
        query = "SELECT id, predict_array('m', feats) FROM t ORDER BY id"
        # the in-database function (the planner might rather ship 100 rows out)
        first = np.array([r[1] for r in reader.sql(query, strategy="udf").fetchall()])
        stats = json.loads(reader.sql("SELECT dbdl.runtime_stats()").scalar())
        assert stats["builds"] == 1  # one session for 100 rows, built once in this server process
        writer.models.register("m", mlp2_onnx)
        # the same reader connection, no reconnect: predicts with version 2 now
        second = np.array([r[1] for r in reader.sql(query, strategy="udf").fetchall()])
        raw = reader.backend.con.execute("SELECT dbdl.predict_array('m', feats) FROM t ORDER BY id").fetchall()
        assert json.loads(reader.sql("SELECT dbdl.runtime_stats()").scalar())["builds"] == 2
    finally:
        writer.close()
        reader.close()
    np.testing.assert_allclose(first, run_onnx(mlp_onnx, {"x": features[:100]}), atol=1e-5)
    np.testing.assert_allclose(second, run_onnx(mlp2_onnx, {"x": features[:100]}), atol=1e-5)
    np.testing.assert_allclose(np.array([r[0] for r in raw]), second, atol=1e-5)


def test_roles(pg, mlp_onnx, features):
    server, name, url = pg
    n = next(_roles)
    plain, user, admin = f"plain_{n}", f"analyst_{n}", f"engineer_{n}"
    with dbdl.connect(url) as db:
        db.models.register("m", mlp_onnx)
        db.create_table("t", {"id": np.arange(5), "feats": features[:5]})
        for role in (plain, user, admin):
            db.sql(f"CREATE ROLE {role} LOGIN")
            db.sql(f"GRANT SELECT, INSERT, UPDATE ON t TO {role}")
            db.sql(f"GRANT CREATE ON SCHEMA public TO {role}")
        db.sql(f"GRANT dbdl_user TO {user}")
        db.sql(f"GRANT dbdl_admin TO {admin}")
    try:
        with dbdl.connect(server.url(name, plain), migrate=False) as db:
            with pytest.raises(dbdl.PermissionDenied, match="GRANT dbdl_user"):
                db.sql("SELECT predict_array('m', feats) FROM t")
            with pytest.raises(dbdl.PermissionDenied):
                db.sql("SELECT count(*) FROM dbdl.blobs")
            with pytest.raises(dbdl.PermissionDenied):
                db.sql("UPDATE dbdl.settings SET value = '[]'")
            with pytest.raises(dbdl.PermissionDenied):
                db.models.register("evil", mlp_onnx)
        with dbdl.connect(server.url(name, user), migrate=False) as db:
            got = np.array([r[0] for r in db.sql("SELECT predict_array('m', feats) FROM t ORDER BY id").fetchall()])
            np.testing.assert_allclose(got, run_onnx(mlp_onnx, {"x": features[:5]}), atol=1e-5)
            assert db.sql("SELECT count(*) FROM dbdl.model_catalog").scalar() == 1
            db.sql("CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', 'my_scores')")
            assert db.sql("SELECT count(*) FROM my_scores").scalar() == 5
            for forbidden in ("SELECT count(*) FROM dbdl.blobs", "SELECT dbdl.register_model('x', '\\x00'::bytea)",
                              "SELECT dbdl.drop_model('m')", "DELETE FROM dbdl.models",
                              "CREATE TABLE dbdl.mine (a int)"):
                with pytest.raises(dbdl.PermissionDenied):
                    db.sql(forbidden)
            with pytest.raises(dbdl.PermissionDenied):
                db.models.drop("m")
            # predict_into runs as the caller: it cannot read what the caller cannot
            with pytest.raises(dbdl.PermissionDenied):
                db.sql("CALL dbdl.predict_into('m', 'SELECT 1::bigint, bytes FROM dbdl.blobs', 'stolen')")
        with dbdl.connect(server.url(name, admin), migrate=False) as db:
            assert db.sql("SELECT dbdl.register_model('m2', ?)", [mlp_onnx]).scalar() == 1
            assert db.sql("SELECT dbdl.drop_model('m2')").scalar() == 1
            assert db.models.register("m3", mlp_onnx) == 1  # the Python API works for admins too
            db.models.promote("m3", 1)
            assert db.models.drop("m3") == 1
            # ... through dbdl's functions only: the tables and schema dbdl are the owner's
            for forbidden in ("UPDATE dbdl.settings SET value = '[]'", "DELETE FROM dbdl.models",
                              "UPDATE dbdl.blobs SET bytes = ''", "CREATE TABLE dbdl.mine (a int)",
                              "INSERT INTO dbdl.alias_history VALUES ('m', 99, 1)"):
                with pytest.raises(dbdl.PermissionDenied):
                    db.sql(forbidden)
    finally:
        with dbdl.connect(url) as db:
            for role in (plain, user, admin):
                db.sql(f"DROP OWNED BY {role}")
                db.sql(f"DROP ROLE {role}")


def test_functions_are_definer_with_pinned_search_path(pg):
    server, name, url = pg
    rows = psql(server, name, """
SELECT p.proname, p.prosecdef, coalesce(array_to_string(p.proconfig, ','), '')
FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
WHERE l.lanname = 'plpython3u' ORDER BY 1;""").stdout.splitlines()
    assert len(rows) >= 10
    for row in rows:
        proname, secdef, config = row.split("|")
        if proname in ("predict_into", "train_export"):
            assert secdef == "f", f"{proname} runs the caller's query: it must not run as the owner"
        elif proname in ("predict_scalar_row", "predict_vector_row", "predict_argmax_row"):
            # 0013's row path: invoker code without a SET (a setting change per row), reading the
            # registry through definer helpers (tests/test_row_security.py tries to abuse it)
            assert secdef == "f" and config == "", row
        else:
            assert secdef == "t" and "search_path=pg_catalog, dbdl, pg_temp" in config, row
    owner_schema = psql(server, name, "SELECT string_agg(DISTINCT n.nspname, ',') FROM pg_proc p "
                                      "JOIN pg_namespace n ON n.oid = p.pronamespace "
                                      "WHERE p.proname IN ('predict', 'predict_array', 'predict_class', "
                                      "'predict_into', 'train_export')").stdout.strip()
    assert owner_schema == "dbdl"  # where only the owner creates functions (docs/security.md)


def test_python_path_is_stored_and_doctor_explains(pg, tmp_path):
    server, name, url = pg

    def cli(*args, plain_env=False):
        env = {k: v for k, v in os.environ.items() if not (plain_env and k == "DBDL_SERVER_PYTHON_PATH")}
        return subprocess.run([sys.executable, "-m", "dbdl.cli", *args], capture_output=True, text=True, env=env)

    with dbdl.connect(url) as db:
        stored = json.loads(db.sql("SELECT value FROM dbdl.settings WHERE key = 'python_path'").scalar())
        db.models.register("m", export_onnx(make_mlp((1, 2)), 1))
    from dbdl.backends.postgres import default_python_path

    override = os.environ.get("DBDL_SERVER_PYTHON_PATH")  # set where the checkout is not readable
    assert stored == (json.loads(override) if override else default_python_path())
    healthy = cli("doctor", url)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "onnxruntime" in healthy.stdout and "the server can run dbdl's functions" in healthy.stdout

    blocked = tmp_path / "private"
    blocked.mkdir(mode=0o700)
    assert cli("migrate", url, "--python-path", str(blocked)).returncode == 0
    broken = cli("doctor", url)
    assert broken.returncode == 1
    assert "not readable" in broken.stdout and "dbdl migrate" in broken.stdout
    with dbdl.connect(url) as db:  # a new server session reads the new (broken) path
        with pytest.raises(dbdl.ConfigurationError, match="cannot import dbdl_udf"):
            db.sql("SELECT predict_array('m', ARRAY[1]::real[])")
    assert cli("migrate", url, plain_env=True).returncode == 0  # a plain re-run keeps the recorded path...
    assert cli("doctor", url).returncode == 1
    assert cli("migrate", url, "--python-path", *stored).returncode == 0  # ...an explicit one replaces it
    assert cli("doctor", url).returncode == 0


def test_parallel_plans_and_target_names(pg, scorer_onnx):
    server, name, url = pg
    with dbdl.connect(url) as db:
        db.models.register("s", scorer_onnx)
        rng = np.random.default_rng(0)
        db.create_table("big", {"id": np.arange(20000), "feats": rng.standard_normal((20000, 8), dtype=np.float32)})
        for setting in ("max_parallel_workers_per_gather = 2", "parallel_setup_cost = 0", "parallel_tuple_cost = 0",
                        "min_parallel_table_scan_size = 0"):
            db.sql(f"SET {setting}")
        # the planner would go parallel here; PL/Python cannot run in parallel workers
        got = db.sql("SELECT count(*) FROM big WHERE predict('s', feats) > 0.5").scalar()
        x = np.array([r[0] for r in db.sql("SELECT feats FROM big ORDER BY id").fetchall()], dtype=np.float32)
        assert got == int((run_onnx(scorer_onnx, {"x": x})[:, 0] > 0.5).sum())
        db.sql("CALL dbdl.predict_into('s', 'SELECT id, feats FROM big WHERE id < 10', 'MyScores', 'scalar')")
        assert db.sql("SELECT count(*) FROM myscores").scalar() == 10  # folded like an unquoted name


def test_dl_centric_keys_one_table_queries_by_ctid(pg, mlp_onnx, features):
    server, name, url = pg
    with dbdl.connect(url) as db:
        db.models.register("m", mlp_onnx)
        db.create_table("t", {"id": np.arange(len(features)), "feats": features})
        db.sql("UPDATE t SET feats = NULL WHERE id % 7 = 0")
        expected = run_onnx(mlp_onnx, {"x": features})
        for feats in ("feats", "feats::float8[]", "s.feats"):  # numpy fast path, general path, an alias
            source = "t AS s" if feats.startswith("s.") else "t"
            key = "s.id" if feats.startswith("s.") else "id"
            sql = f"SELECT {key}, predict_array('m', {feats}) FROM {source} WHERE {key} > 10 ORDER BY {key}"
            rows = db.sql(sql, strategy="dl").fetchall()
            assert [r[0] for r in rows] == list(range(11, len(features)))
            for i, value in rows:
                if i % 7 == 0:
                    assert value is None
                else:
                    np.testing.assert_allclose(value, expected[i], atol=1e-5)
        from dbdl.query import parse, row_identity

        b = db.backend
        tree = parse("SELECT predict_array('m', feats) FROM t", db.backend.dialect)[0]
        assert row_identity(tree, b.row_identity, b.is_base_table, b.dialect).sql() == "t.ctid"
        with_cte = parse("WITH t AS (SELECT * FROM t) SELECT predict_array('m', feats) FROM t", db.backend.dialect)[0]
        assert row_identity(with_cte.find(exp.Select, bfs=False), b.row_identity, b.is_base_table, b.dialect) is None


def test_roles_and_the_result_cache(pg, mlp_onnx, features):
    """dbdl_admin switches the cache on; a dbdl_user's queries read and fill it; a dbdl_user may
    not change the options."""
    server, name, url = pg
    n = next(_roles)
    user, admin = f"cache_user_{n}", f"cache_admin_{n}"
    with dbdl.connect(url) as db:
        db.models.register("m", mlp_onnx)
        db.create_table("t", {"id": np.arange(50), "feats": features[:50]})
        for role in (user, admin):
            db.sql(f"CREATE ROLE {role} LOGIN")
            db.sql(f"GRANT SELECT ON t TO {role}")
        db.sql(f"GRANT dbdl_user TO {user}")
        db.sql(f"GRANT dbdl_admin TO {admin}")
    try:
        with dbdl.connect(server.url(name, admin), migrate=False) as db:
            db.sql("SELECT count(predict_class('m', feats)) FROM t", strategy="relation")  # its weight tables
            db.sql("CALL dbdl.set_model_options('m', '{\"cache\": true}')")
            assert db.models.options("m")["cache"] is True
        with dbdl.connect(server.url(name, user), migrate=False) as db:
            for strategy in ("udf", "dl", "relation"):
                got = np.array([r[0] for r in db.sql("SELECT predict_array('m', feats) FROM t ORDER BY id",
                                                     strategy=strategy).fetchall()])
                np.testing.assert_allclose(got, run_onnx(mlp_onnx, {"x": features[:50]}), atol=1e-5)
            (stats,) = db.models.cache_stats("m")
            assert (stats.misses, stats.hits, stats.rows) == (50, 100, 50)
            with pytest.raises(dbdl.PermissionDenied):
                db.sql("CALL dbdl.set_model_options('m', '{\"cache\": false}')")
            with pytest.raises(dbdl.PermissionDenied):
                db.models.set_options("m", cache=False)
    finally:
        with dbdl.connect(url) as db:
            for role in (user, admin):
                db.sql(f"DROP OWNED BY {role}")
                db.sql(f"DROP ROLE {role}")
