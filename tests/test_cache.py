"""The result cache (docs/cache.md): same rows with and without it, under every backend and
strategy; versions, drops, the bound and its eviction, counters, concurrency, the cost model."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
from conftest import export_onnx, has, make_mlp, run_onnx
from test_behaviour import q

import dbdl

_attackers = itertools.count()

QUERY = ("SELECT id, predict('score', feats) AS s, predict_array('m', feats) AS a, predict_class('m', feats) AS c "
         "FROM t ORDER BY id")


@pytest.fixture
def cached(db, features, mlp_onnx, scorer_onnx):
    """t(id, feats) with duplicate and NULL feature rows; models m (3 outputs) and score (1 output)."""
    x = features.copy()
    x[10] = x[11]  # two rows, one key
    db.create_table("t", {"id": np.arange(len(x)), "feats": x})
    db.sql("UPDATE t SET feats = NULL WHERE id IN (3, 4)")
    db.models.register("m", mlp_onnx)
    db.models.register("score", scorer_onnx)
    return x


def filler(db, strategy):
    """The strategy that fills the cache: on PostgreSQL only the server's own scoring writes it
    (docs/security.md), so a forced dl or relation reads the cache and leaves it as it was."""
    return strategy if not has(db, "in_server") or strategy == "udf" else None


def assert_same_rows(got, want):
    """Equal rows, floats to float32 precision (a cache filled by another strategy's arithmetic)."""
    assert got.schema == want.schema and got.num_rows == want.num_rows
    for a, b in zip(got.to_pylist(), want.to_pylist()):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], (float, list)):
                np.testing.assert_allclose(np.array(a[k], dtype=np.float64), np.array(b[k], dtype=np.float64),
                                           rtol=1e-5, atol=1e-6)
            else:
                assert a[k] == b[k]


def rows(db, sql=QUERY, strategy=None):
    return db.sql(q(db, sql), strategy=strategy).arrow()


def cache_rows(db, name=None) -> int:
    sql = "SELECT count(*) FROM dbdl.result_cache"
    if name:
        return db.sql(sql + " WHERE cache_id IN (SELECT cache_id FROM dbdl.cache_entries WHERE name = ?)",
                      (name,)).scalar()
    return db.sql(sql).scalar()


def test_rows_are_identical_with_and_without_the_cache(db, cached, strategy, mlp_onnx, scorer_onnx):
    plain = rows(db, strategy=strategy)
    db.models.set_options("m", cache=True)
    db.models.set_options("score", cache=True)
    cold = rows(db, strategy=strategy)
    assert cold.schema == plain.schema and cold.to_pylist() == plain.to_pylist()
    if filler(db, strategy) != strategy:
        assert cache_rows(db) == 0 and db.sql("SELECT count(*) FROM dbdl.cache_entries").scalar() == 0
        assert_same_rows(rows(db), plain)  # the planner's choice fills it
    warm = rows(db, strategy=strategy)
    assert_same_rows(warm, plain)
    # and they are the model's outputs
    valid = [i for i in range(len(cached)) if i not in (3, 4)]
    a = np.array([r["a"] for r in warm.to_pylist() if r["a"] is not None], dtype=np.float32)
    np.testing.assert_allclose(a, run_onnx(mlp_onnx, {"x": cached[valid]}), atol=1e-5)
    assert [r["c"] for r in warm.to_pylist() if r["c"] is not None] == a.argmax(axis=1).tolist()
    s = np.array([r["s"] for r in warm.to_pylist() if r["s"] is not None], dtype=np.float32)
    np.testing.assert_allclose(s, run_onnx(scorer_onnx, {"x": cached[valid]})[:, 0], atol=1e-5)
    assert [r["id"] for r in warm.to_pylist() if r["a"] is None] == [3, 4]
    # one cached row per distinct non-NULL input and model; the second run only hit
    distinct = len(cached) - 2 - 1
    assert cache_rows(db, "m") == distinct and cache_rows(db, "score") == distinct
    stats = {s.name: s for s in db.models.cache_stats()}
    assert (stats["m"].misses, stats["m"].hits, stats["m"].rows) == (distinct, distinct, distinct)
    from dbdl.cachestore import ROW_OVERHEAD

    assert stats["m"].bytes == distinct * (db.backend.cache_key_bytes + 4 * 3 + ROW_OVERHEAD)
    assert stats["m"].hit_rate == 0.5


def test_partial_hits_compute_only_the_misses(db, cached, strategy, mlp_onnx):
    db.models.set_options("m", cache=True)
    first = rows(db, "SELECT id, predict_array('m', feats) AS a FROM t WHERE id < 100 ORDER BY id",
                 filler(db, strategy))
    assert len(first) == 100 and cache_rows(db) == 100 - 2 - 1  # two NULLs, rows 10 and 11 alike
    # a cached row changed on purpose shows that hits are read, not recomputed
    db.sql(q(db, "UPDATE dbdl.result_cache SET output = [9, 9, 9] WHERE key = (SELECT key FROM dbdl.result_cache "
                 "ORDER BY key LIMIT 1)"))
    out = rows(db, "SELECT id, predict_array('m', feats) AS a FROM t ORDER BY id", strategy).to_pylist()
    nines = [r["id"] for r in out if r["a"] == [9, 9, 9]]
    assert 1 <= len(nines) <= 2 and all(i < 100 for i in nines)
    expected = run_onnx(mlp_onnx, {"x": cached})
    for r in out:
        if r["id"] in (3, 4):
            assert r["a"] is None
        elif r["id"] not in nines:
            np.testing.assert_allclose(r["a"], expected[r["id"]], atol=1e-5)
    (stats,) = db.models.cache_stats("m")
    # PostgreSQL, dl or relation: the 200 misses were scored for the statement, counted, not cached
    added = 200 if filler(db, strategy) == strategy else 0
    assert (stats.hits, stats.misses, stats.rows) == (97, 97 + 200, 97 + added)


def test_joins_and_ctes_use_the_cache_keyed_by_features(db, cached, strategy):
    db.create_table("labels", {"id": np.arange(len(cached)), "y": np.arange(len(cached)) % 3})
    sql = ("WITH x AS (SELECT id, feats FROM t WHERE id >= 50) SELECT x.id, l.y, predict_class('m', x.feats) AS c "
           "FROM x JOIN labels AS l ON l.id = x.id ORDER BY x.id")
    plain = rows(db, sql, strategy)
    db.models.set_options("m", cache=True)
    assert_same_rows(rows(db, sql, filler(db, strategy)), plain)
    assert_same_rows(rows(db, sql, strategy), plain)
    (stats,) = db.models.cache_stats("m")
    assert stats.misses == stats.hits == len(cached) - 50


def test_a_new_version_never_sees_the_old_ones_results(db, cached, mlp_onnx, mlp2_onnx):
    db.models.set_options("m", cache=True)
    sql = "SELECT id, predict_array('m', feats) AS a FROM t WHERE feats IS NOT NULL ORDER BY id"
    v1 = np.array([r[1] for r in db.sql(q(db, sql)).fetchall()], dtype=np.float32)
    assert db.models.register("m", mlp2_onnx) == 2
    v2 = np.array([r[1] for r in db.sql(q(db, sql)).fetchall()], dtype=np.float32)
    x = cached[[i for i in range(len(cached)) if i not in (3, 4)]]
    np.testing.assert_allclose(v1, run_onnx(mlp_onnx, {"x": x}), atol=1e-5)
    np.testing.assert_allclose(v2, run_onnx(mlp2_onnx, {"x": x}), atol=1e-5)
    assert [(s.version, s.hits, s.misses) for s in db.models.cache_stats("m")] == [(1, 0, len(x) - 1),
                                                                                 (2, 0, len(x) - 1)]
    # dropping a version drops its cache; dropping the model drops the rest
    db.models.drop("m", 1)
    assert [s.version for s in db.models.cache_stats("m")] == [2] and cache_rows(db, "m") == len(x) - 1
    db.models.drop("m")
    assert db.models.cache_stats() == [] and cache_rows(db) == 0
    assert db.sql("SELECT count(*) FROM dbdl.cache_entries").scalar() == 0


def test_the_bound_evicts_the_least_recently_hit_rows(db, features, mlp_onnx):
    x = np.random.default_rng(1).standard_normal((1200, 8)).astype(np.float32)
    db.create_table("t", {"id": np.arange(len(x)), "feats": x})
    db.models.register("m", mlp_onnx)
    db.models.set_options("m", cache=True)
    db.sql("SELECT count(predict_class('m', feats)) FROM t WHERE id < 1")  # creates the entry
    row_bytes = db.models.cache_stats("m")[0].bytes
    db.models.set_options("m", cache_max_bytes=800 * row_bytes)  # 800 rows, generations of 100
    db.models.clear_cache("m")

    def score(lo, hi):
        return db.sql(f"SELECT count(predict_class('m', feats)) FROM t WHERE id >= {lo} AND id < {hi}").scalar()

    score(0, 800)                # A: fills the cache to its bound
    score(0, 400)                # hits the first half of A
    score(800, 1200)             # B: 400 more rows; the second half of A is the least recently hit
    keys = db.sql("SELECT key FROM dbdl.result_cache").fetchall()
    assert len(keys) == 800
    (stats,) = db.models.cache_stats("m")
    assert (stats.rows, stats.evicted, stats.hits, stats.misses) == (800, 400, 400, 1200)
    assert stats.bytes == 800 * row_bytes <= stats.max_bytes
    # what is left: A's first half and B
    score(0, 400)
    score(800, 1200)
    (after,) = db.models.cache_stats("m")
    assert (after.hits, after.misses) == (stats.hits + 800, stats.misses)
    score(400, 800)
    assert db.models.cache_stats("m")[0].misses == stats.misses + 400


def test_counters_and_options_from_sql(db, cached):
    # the same text on every backend: a procedure on PostgreSQL, carried out by dbdl on DuckDB
    db.sql("CALL dbdl.set_model_options('m', '{\"cache\": true, \"cache_max_bytes\": 1000000}')")
    assert db.models.options("m") == {"cache": True, "cache_max_bytes": 1_000_000, "pad_id": None, "feed": "auto"}
    db.sql("SELECT predict_class('m', feats) FROM t")
    db.sql("SELECT predict_class('m', feats) FROM t WHERE id < 10")
    row = db.sql("SELECT name, version, hits, misses, hit_rate, rows, bytes, max_bytes, evicted FROM dbdl.cache_stats"
                 ).fetchall()
    (stats,) = db.models.cache_stats()
    assert row == [("m", 1, stats.hits, stats.misses, stats.hit_rate, stats.rows, stats.bytes, 1_000_000, 0)]
    assert (stats.hits, stats.misses) == (8, len(cached) - 3)
    db.sql("CALL dbdl.clear_cache('m')")
    assert cache_rows(db) == 0 and db.models.options("m")["cache"] is True
    db.sql("CALL dbdl.set_model_options('m', '{\"cache\": false}')")
    assert db.models.options("m")["cache"] is False and db.models.cache_stats() == []


def test_bad_options_are_refused_with_the_fix(db, cached):
    with pytest.raises(dbdl.ConfigurationError, match="unknown model option 'cahce'.*cache"):
        db.models.set_options("m", cahce=True)
    with pytest.raises(dbdl.ConfigurationError, match="true or false"):
        db.models.set_options("m", cache="yes")
    with pytest.raises(dbdl.ConfigurationError, match="whole number of bytes"):
        db.models.set_options("m", cache_max_bytes=-5)
    with pytest.raises(dbdl.ModelNotFound, match="register it first"):
        db.models.set_options("nope", cache=True)
    with pytest.raises(dbdl.InvalidName):
        db.models.set_options("m; DROP TABLE t", cache=True)
    with pytest.raises(dbdl.Error, match="JSON object"):
        db.sql("CALL dbdl.set_model_options('m', 'cache=true')")
    assert db.models.options("m") == {"cache": False, "cache_max_bytes": 512 << 20, "pad_id": None, "feed": "auto"}
    assert db.sql("SELECT count(*) FROM t").scalar() == len(cached)


def test_the_cost_model_counts_on_the_expected_hit_rate(db, cached):
    db.models.set_options("m", cache=True)
    sql = "SELECT predict_class('m', feats) FROM t"
    cold = {e.strategy: e for e in db.explain(sql)[0].candidates}
    assert "expected hit rate 0%" in str(db.explain(sql))
    db.sql(sql)
    db.sql(sql)
    db.sql(sql)  # 2 of 3 runs hit: the expected hit rate is 2/3
    plan = db.explain(sql)[0]
    assert "expected hit rate 67%" in plan.describe()
    warm = {e.strategy: e for e in plan.candidates}
    for name in ("udf", "dl"):
        assert warm[name].terms["compute"] == pytest.approx(cold[name].terms["compute"] / 3, rel=0.05)
        assert warm[name].terms["cache look-up"] == cold[name].terms["cache look-up"]
        assert warm[name].terms["cache insert"] < cold[name].terms["cache insert"]
    # a model without the cache has no cache terms at all
    db.models.set_options("m", cache=False)
    assert all("cache look-up" not in e.terms for e in db.explain(sql)[0].candidates)


@pytest.mark.never(["duckdb"], reason="one DuckDB file is written by one process; concurrency is PostgreSQL's")
def test_concurrent_sessions_filling_the_same_keys(url, features, mlp_onnx):
    """Several connections score overlapping rows at once: no duplicate-key errors, right rows."""
    x = np.random.default_rng(5).standard_normal((4000, 8)).astype(np.float32)
    with dbdl.connect(url) as db:
        db.create_table("t", {"id": np.arange(len(x)), "feats": x})
        db.models.register("m", mlp_onnx)
        db.models.set_options("m", cache=True)
    expected = run_onnx(mlp_onnx, {"x": x})
    errors, results = [], {}
    barrier = threading.Barrier(4)
    # the planner's choice and udf fill the cache; dl and relation only read it (docs/security.md)
    STRATEGIES = [None, "udf", "dl", "relation"]

    def work(worker: int) -> None:
        try:
            with dbdl.connect(url) as db:
                for round_ in range(3):
                    lo = (worker * 500 + round_ * 700) % 3000
                    barrier.wait(timeout=60)
                    got = db.sql(f"SELECT id, predict_array('m', feats) FROM t WHERE id >= {lo} AND id < {lo + 1000} "
                                 "ORDER BY id", strategy=STRATEGIES[worker]).fetchall()
                    results[(worker, round_)] = (lo, got)
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for lo, got in results.values():
        assert [r[0] for r in got] == list(range(lo, lo + 1000))
        np.testing.assert_allclose(np.array([r[1] for r in got], dtype=np.float32), expected[lo:lo + 1000],
                                   atol=1e-5)
    with dbdl.connect(url) as db:
        keys = {r[0] for (w, _), (lo, got) in results.items() if w < 2 for r in got}
        assert db.sql("SELECT count(*) FROM dbdl.result_cache").scalar() == len(keys)
        (stats,) = db.models.cache_stats("m")
        # the fillers' statements always count; a reader's only once the entry exists
        assert stats.rows == len(keys) and 6 * 1000 <= stats.hits + stats.misses <= 12 * 1000
        # every cached row is the model's output for the input its key names
        cached = db.sql("SELECT c.output, t.id FROM dbdl.result_cache AS c JOIN t ON c.key = dbdl.cache_key(t.feats) "
                        "ORDER BY t.id").fetchall()
        assert sorted(r[1] for r in cached) == sorted(keys)
        np.testing.assert_allclose(np.array([r[0] for r in cached], dtype=np.float32),
                                   expected[[r[1] for r in cached]], atol=1e-5)


@pytest.mark.never(["duckdb"], reason="psql is PostgreSQL's")
def test_psql_switches_the_cache_on_and_reads_its_counters(url, request, mlp_onnx, features):
    server = request.getfixturevalue("pg_server")
    with dbdl.connect(url) as db:
        db.create_table("t", {"id": np.arange(len(features)), "feats": features})
        db.models.register("m", mlp_onnx)
        server_db = db.sql("SELECT current_database()").scalar()
    out = server.psql("-qAt", dbname=server_db, input=(
        "CALL dbdl.set_model_options('m', '{\"cache\": true}');\n"
        "SELECT options FROM dbdl.models;\n"
        "CALL dbdl.set_model_options('m', '{\"cache\": 1}');\n"), check=False)
    assert out.stdout.splitlines() == ['{"cache": true}']
    assert "dbdl.ConfigurationError" in out.stderr and "true or false" in out.stderr
    with dbdl.connect(url) as db:
        db.sql("SELECT predict_class('m', feats) FROM t")
    out = server.psql("-qAt", dbname=server_db, input="SELECT name, misses, rows FROM dbdl.cache_stats;", check=True)
    assert out.stdout.strip() == f"m|{len(features)}|{len(features)}"


def test_an_unused_model_pays_nothing_and_a_cheap_query_without_from_skips(db, cached, mlp_onnx):
    db.models.set_options("m", cache=True)
    value = db.sql(q(db, "SELECT predict_class('m', [1, 2, 3, 4, 5, 6, 7, 8])")).scalar()
    assert value == int(run_onnx(mlp_onnx, {"x": np.arange(1, 9, dtype=np.float32)[None]}).argmax())
    assert "not inside a SELECT" in str(db.explain(q(db, "SELECT predict_class('m', [1, 2, 3, 4, 5, 6, 7, 8])")))
    assert cache_rows(db) == 0
    other = export_onnx(make_mlp((8, 4, 2), seed=9), 8)
    db.models.register("other", other)
    db.sql("SELECT predict_class('other', feats) FROM t")
    assert db.models.cache_stats() == []


def test_bad_input_with_the_cache_on_fails_clearly_and_writes_nothing(db, cached, strategy):
    db.models.set_options("m", cache=True)
    db.create_table("short", {"id": np.arange(5), "feats": cached[:5, :7]})
    with pytest.raises(dbdl.ShapeMismatch, match="8"):
        db.sql("SELECT predict_class('m', feats) FROM short", strategy=strategy)
    with pytest.raises(dbdl.ModelNotFound):
        db.sql("SELECT predict_class('ghost', feats) FROM t", strategy=strategy)
    assert cache_rows(db) == 0
    temp = ("SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'dbdl_c%'")
    assert db.sql(temp).scalar() == 0
    # and the cache works afterwards
    assert len(db.sql("SELECT predict_class('m', feats) FROM t", strategy=filler(db, strategy)).fetchall()) == len(cached)
    assert cache_rows(db) == len(cached) - 3


@pytest.mark.never(["duckdb"], reason="DuckDB has no roles: whoever may write the file is trusted (docs/security.md)")
def test_no_role_can_forge_a_cached_output(url, mlp_onnx, features):
    """PostgreSQL, where roles share the cache: a dbdl_user or dbdl_admin cannot write a row, and what
    it can hand dbdl.cache_fill / dbdl.cache_record only ever caches the model's true output for the
    bytes it sent; a temporary domain named like a type dbdl uses never runs as the owner."""
    n = next(_attackers)
    user, admin, victim = f"forger_{n}", f"forger_admin_{n}", f"victim_{n}"
    x = features[:40]
    expected = run_onnx(mlp_onnx, {"x": x})
    with dbdl.connect(url) as db:
        db.create_table("t", {"id": np.arange(len(x)), "feats": x})
        db.models.register("m", mlp_onnx)
        db.models.set_options("m", cache=True)
        db.sql("SELECT count(predict_array('m', feats)) FROM t WHERE id < 20")  # 20 rows cached by the owner
        db.sql("CREATE TABLE spy_log (who text, via text)")
        db.sql("GRANT INSERT, SELECT ON spy_log TO PUBLIC")
        for role in (user, admin, victim):
            db.sql(f"CREATE ROLE {role} LOGIN")
            db.sql(f"GRANT SELECT ON t TO {role}")
        db.sql(f"GRANT dbdl_user TO {user}, {victim}")
        db.sql(f"GRANT dbdl_admin TO {admin}")
        before = db.sql("SELECT key, output FROM dbdl.result_cache ORDER BY key").fetchall()
    try:
        for attacker in (user, admin):
            with dbdl.connect(url.replace("postgres@", f"{attacker}@", 1), migrate=False) as db:
                for sql in ("UPDATE dbdl.result_cache SET output = ARRAY[9, 9, 9]::real[]",
                            "INSERT INTO dbdl.result_cache SELECT cache_id, key, ARRAY[9, 9, 9]::real[], 0, gen "
                            "FROM dbdl.result_cache ON CONFLICT DO NOTHING",
                            'UPDATE dbdl.cache_entries SET "rows" = 0',
                            "INSERT INTO dbdl.cache_entries (name, version, sha256, output, row_bytes) "
                            "VALUES ('m', 1, 'x', 0, 1)"):
                    with pytest.raises(dbdl.PermissionDenied):
                        db.sql(sql)
                if attacker == user:
                    for sql in ("DELETE FROM dbdl.result_cache", "TRUNCATE dbdl.result_cache"):
                        with pytest.raises(dbdl.PermissionDenied):
                            db.sql(sql)
                # what cache_fill is handed: bytes; the key is the digest of those very bytes and the
                # output the model's for them — so a victim's input can only ever get its true output
                target = "(SELECT pg_catalog.array_send(feats::real[]) FROM t WHERE id = 30)"
                for forged in (f"ARRAY[{target} || '\\x00'::bytea]",  # trailing junk: refused
                               "ARRAY[pg_catalog.array_send('[0:7]={1,2,3,4,5,6,7,8}'::real[])]",  # other bounds
                               f"ARRAY[{target}]"):  # the victim's own bytes: its true output
                    try:
                        db.sql(f"SELECT count(*) FROM dbdl.cache_fill('m@1', {forged})")
                    except dbdl.ShapeMismatch:
                        pass
                db.sql("SELECT dbdl.cache_record('m@1', 1000000000, 0, ARRAY(SELECT key FROM dbdl.result_cache))")
                # a temporary domain named like the types dbdl's definer code prepares with
                db.sql("CREATE FUNCTION pg_temp.spy(v anyelement) RETURNS boolean LANGUAGE sql AS "
                       "$$ INSERT INTO public.spy_log VALUES (current_user, 'domain check'); SELECT true $$")
                for type_name in ("bytea", "text", "int4", "int8"):
                    db.sql(f"CREATE DOMAIN pg_temp.{type_name} AS pg_catalog.{type_name} CHECK (pg_temp.spy(VALUE))")
                db.sql("SELECT count(*) FROM dbdl.cache_fill('m@1', ARRAY(SELECT pg_catalog.array_send(feats::real[]) "
                       "FROM t WHERE id >= 35))")
                db.sql("SELECT count(predict_array('m', feats)) FROM t")
        with dbdl.connect(url.replace("postgres@", f"{victim}@", 1), migrate=False) as db:
            got = np.array([r[0] for r in db.sql("SELECT predict_array('m', feats) FROM t ORDER BY id").fetchall()],
                           dtype=np.float32)
            np.testing.assert_allclose(got, expected, atol=1e-5)
        with dbdl.connect(url) as db:
            # every cached row is the model's output for the input its key digests
            rows = db.sql("SELECT t.id, c.output FROM dbdl.result_cache AS c JOIN t ON c.key = dbdl.cache_key(t.feats) "
                          "ORDER BY t.id").fetchall()
            assert [r[0] for r in rows] == list(range(len(x)))
            np.testing.assert_allclose(np.array([r[1] for r in rows], dtype=np.float32), expected, atol=1e-5)
            others = db.sql("SELECT c.output FROM dbdl.result_cache AS c WHERE NOT EXISTS "
                            "(SELECT 1 FROM t WHERE c.key = dbdl.cache_key(t.feats))").fetchall()
            want = run_onnx(mlp_onnx, {"x": np.arange(1, 9, dtype=np.float32)[None]})
            for (out,) in others:  # the '[0:7]' array: other bytes, the same numbers, their true output
                np.testing.assert_allclose(out, want[0], atol=1e-5)
            assert [r[0] for r in db.sql("SELECT key, output FROM dbdl.result_cache ORDER BY key").fetchall()
                    if r in before] == [r[0] for r in before]
            spies = db.sql("SELECT DISTINCT who FROM spy_log").fetchall()
            assert {r[0] for r in spies} <= {user, admin}, f"attacker code ran as {spies}"
            (stats,) = db.models.cache_stats("m")
            assert stats.rows == db.sql("SELECT count(*) FROM dbdl.result_cache").scalar()
    finally:
        with dbdl.connect(url) as db:
            for role in (user, admin, victim):
                db.sql(f"DROP OWNED BY {role}")
                db.sql(f"DROP ROLE {role}")



@pytest.mark.never(["duckdb"], reason="DuckDB's client scores the misses itself (the test below)")
def test_explain_says_who_scores_the_misses(db, cached):
    db.models.set_options("m", cache=True)
    plan = db.explain("SELECT predict_class('m', feats) FROM t")[0]
    assert plan.choice == "udf" and "scored in the server by dbdl.cache_fill" in plan.describe()


@pytest.mark.never(["postgres"], reason="PostgreSQL's server scores the misses (the test above)")
def test_explain_names_no_server_filler_where_the_client_scores_the_misses(db, cached):
    db.models.set_options("m", cache=True)
    plan = db.explain("SELECT predict_class('m', feats) FROM t")[0]
    assert "dbdl.cache_fill" not in plan.describe()


def test_upgrading_clamps_a_stored_bound_that_broke_cache_stats(pg_server, mlp_onnx, monkeypatch):
    """Before options were range-checked, cache_max_bytes = 10^23 could be stored, and the view
    dbdl.cache_stats then failed for everyone; migration 0008 brings such a value into range and
    takes away dbdl_user's writes on the cache."""
    import psycopg

    import dbdl.migrate as migrate
    from dbdl.backends.base import Backend

    url = pg_server.create_database("dbdl_cache_upgrade")
    shipped = migrate.available
    try:
        monkeypatch.setattr(migrate, "available", lambda name: shipped(name)[:7])
        with psycopg.connect(url, autocommit=True) as con:
            dbdl.connect(url).close()
            con.execute("INSERT INTO dbdl.models (name, next_version, options) VALUES "
                        "('m', 1, '{\"cache\": true, \"cache_max_bytes\": 100000000000000000000000}')")
            con.execute("INSERT INTO dbdl.cache_entries (name, version, sha256, output, row_bytes) "
                        "VALUES ('m', 1, 'x', 0, 92)")
            with pytest.raises(psycopg.errors.NumericValueOutOfRange):
                con.execute("SELECT * FROM dbdl.cache_stats").fetchall()
        monkeypatch.setattr(migrate, "available", shipped)
        backend = Backend.open(url)
        try:
            assert [m.id for m in migrate.migrate(backend)] == list(range(8, len(shipped("postgres")) + 1))
        finally:
            backend.close()
        with psycopg.connect(url, autocommit=True) as con:
            assert con.execute("SELECT max_bytes FROM dbdl.cache_stats").fetchall() == [(1 << 50,)]
            grants = con.execute("SELECT privilege_type FROM information_schema.role_table_grants WHERE grantee = "
                                 "'dbdl_user' AND table_name IN ('result_cache', 'cache_entries')").fetchall()
            assert {g[0] for g in grants} == {"SELECT"}
    finally:
        pg_server.drop_database("dbdl_cache_upgrade")


def test_a_limit_fills_the_cache_with_its_rows_only(db, cached, strategy, mlp_onnx):
    db.models.set_options("m", cache=True)
    got = db.sql("SELECT id, predict_array('m', feats) AS a FROM t WHERE id > 4 ORDER BY id LIMIT 3",
                 strategy=strategy).fetchall()
    assert [i for i, _ in got] == [5, 6, 7]
    np.testing.assert_allclose(np.array([a for _, a in got], np.float32), run_onnx(mlp_onnx, {"x": cached[5:8]}),
                               atol=1e-5)
    # only the LIMIT's rows were scored and cached (planner/rewrite.py: query.push_limit)
    assert cache_rows(db, "m") == (3 if filler(db, strategy) else 0)


# -- issue 14: misses streamed from the source (DuckDB), the cache table without an index -------------


def test_hits_and_misses_read_back_the_uncached_rows_bit_for_bit(db, cached, mlp_onnx):
    """Half the rows cached first, then every row: hits and misses (the misses streamed from the
    source into the model on DuckDB, keyed by their cache keys), duplicates, NULL rows, a LIMIT and
    a join (keyed per distinct vector) give exactly the uncached rows, and each input is cached once."""
    import hashlib

    sql = "SELECT id, predict_array('m', feats) AS a, predict_class('m', feats) AS c FROM t ORDER BY id"
    limited = "SELECT id, predict_array('m', feats) AS a FROM t WHERE id >= 140 ORDER BY id LIMIT 25"
    joined = ("SELECT x.id, predict_array('m', x.feats) AS a FROM t AS x JOIN t AS y ON y.id = x.id "
              "WHERE x.id >= 100 ORDER BY x.id")
    plain = {s: db.sql(q(db, s), strategy="dl").arrow() for s in (sql, limited, joined)}
    db.models.set_options("m", cache=True)
    db.sql(q(db, "SELECT id, predict_array('m', feats) AS a FROM t WHERE id < 150 ORDER BY id"))
    for s in (limited, sql, joined, sql):
        got = db.sql(q(db, s), strategy=filler(db, "dl")).arrow()
        assert got.to_pylist() == plain[s].to_pylist(), s
    distinct = len(cached) - 2 - 1
    (stats,) = db.models.cache_stats("m")
    assert cache_rows(db, "m") == stats.rows == distinct  # no key written twice
    keys = {bytes(k) for (k,) in db.sql("SELECT key FROM dbdl.result_cache").fetchall()}
    if backend_is(db, "duckdb"):  # the client's key: BLAKE2b-128 of the float32 bytes, as before
        want = {hashlib.blake2b(r.astype("<f4").tobytes(), digest_size=16).digest()
                for i, r in enumerate(cached) if i not in (3, 4)}
    else:
        want = {hashlib.sha256(array_send_real(r)).digest() for i, r in enumerate(cached) if i not in (3, 4)}
    assert keys == want


def backend_is(db, name: str) -> bool:
    return type(db.backend).__name__.lower().startswith(name)


def array_send_real(row: np.ndarray) -> bytes:
    """PostgreSQL's array_send of a one-dimensional real[] (what dbdl.cache_key digests)."""
    import struct

    head = struct.pack(">iiiii", 1, 0, 700, len(row), 1)
    return head + b"".join(struct.pack(">i", 4) + struct.pack(">f", float(v)) for v in row)


@pytest.mark.never(["postgres"], reason="migration 0006 is DuckDB's (PostgreSQL's cache keeps its primary key)")
def test_a_duckdb_cache_filled_before_0006_keeps_its_rows_and_loses_its_index(url, mlp_onnx, features, monkeypatch):
    from dbdl import migrate

    shipped = migrate.available
    monkeypatch.setattr(migrate, "available", lambda name: shipped(name)[:5])
    db = dbdl.connect(url)
    db.create_table("t", {"id": np.arange(len(features)), "feats": features})
    db.models.register("m", mlp_onnx)
    db.models.set_options("m", cache=True)
    sql = "SELECT id, predict_array('m', feats) AS a FROM t ORDER BY id"
    first = db.sql(sql).arrow()
    before = db.sql("SELECT cache_id, key, output, label, gen FROM dbdl.result_cache ORDER BY key").fetchall()
    assert len(before) == len(features)
    db.close()
    monkeypatch.setattr(migrate, "available", shipped)
    db = dbdl.connect(url)  # applies 0006
    try:
        assert db.sql("SELECT cache_id, key, output, label, gen FROM dbdl.result_cache ORDER BY key").fetchall() == before
        assert db.sql("SELECT count(*) FROM duckdb_indexes() WHERE table_name = 'result_cache'").scalar() == 0
        assert db.sql("SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'result_cache' "
                      "AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')").scalar() == 0
        assert db.sql(sql).arrow().to_pylist() == first.to_pylist()  # every row a hit of the old rows
        (stats,) = db.models.cache_stats("m")
        assert (stats.hits, stats.rows) == (len(features), len(features))
    finally:
        db.close()


@pytest.mark.never(["postgres"], reason="PostgreSQL's keys are the server's (dbdl.cache_fill); DuckDB's client streams")
def test_keys_looked_up_batch_by_batch_give_the_uncached_rows(db, features, mlp_onnx, monkeypatch):
    """DuckDB digests and looks up keys a batch at a time while the rows stream out: an input
    repeated in a later batch, hits in every batch and NULL rows give exactly the uncached rows,
    and the counters count distinct inputs."""
    import dbdl.strategies.dl as dl

    x = features[:120].copy()
    x[100] = x[5]  # the same input in another batch
    x[101] = x[100]
    db.create_table("t", {"id": np.arange(len(x)), "feats": x})
    db.sql("UPDATE t SET feats = NULL WHERE id IN (7, 60)")
    db.models.register("m", mlp_onnx)
    sql = "SELECT id, predict_array('m', feats) AS a, predict_class('m', feats) AS c FROM t ORDER BY id"
    plain = db.sql(sql, strategy="dl").arrow()
    monkeypatch.setattr(dl, "BATCH_ROWS", 16)
    db.models.set_options("m", cache=True)
    db.sql("SELECT predict_array('m', feats) FROM t WHERE id % 3 = 0")  # a third cached, in every batch
    assert db.sql(sql).arrow().to_pylist() == plain.to_pylist()
    distinct = len(x) - 2 - 2  # two NULLs; rows 100 and 101 are row 5's input
    first = len([i for i in range(0, len(x), 3) if i != 60])  # the first query's distinct inputs
    (stats,) = db.models.cache_stats("m")
    assert stats.rows == cache_rows(db, "m") == distinct
    assert (stats.hits, stats.misses) == (first, distinct)
    assert db.sql(sql).arrow().to_pylist() == plain.to_pylist()
    (stats,) = db.models.cache_stats("m")
    assert (stats.hits, stats.misses, stats.rows) == (first + distinct, distinct, distinct)
