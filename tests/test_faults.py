"""Faults leave consistent state: a client killed with SIGKILL, or its server backend terminated, in
the middle of a cached predict, a registration or a CREATE TABLE AS leaves the cache's accounting
equal to its rows and no partial registry rows; a failing cached query leaves no cache entry; a
Python exception inside PL/Python never takes the server down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import export_onnx, make_mlp

import dbdl

ROWS = 120_000


def _start(script: str, url: str) -> subprocess.Popen:
    """A client process running ``script`` with ``db`` connected to ``url`` (its PostgreSQL
    session is named dbdl_fault in pg_stat_activity)."""
    body = "import dbdl\ndb = dbdl.connect(URL)\n" + textwrap.dedent(script)
    env = dict(os.environ, PGAPPNAME="dbdl_fault")
    return subprocess.Popen([sys.executable, "-c", body.replace("URL", repr(url))], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the client ended before the fault could be injected: {err.decode()[-2000:]}")
        if condition():
            return
        time.sleep(0.02)
    proc.kill()
    pytest.fail("the client never reached the point of the fault")


def _active(db: dbdl.Database, pattern: str) -> list[int]:
    return [r[0] for r in db.sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'dbdl_fault' "
                                 "AND state = 'active' AND query LIKE ?", [pattern]).fetchall()]


def _gone(db: dbdl.Database, timeout: float = 120.0) -> None:
    """Until the killed client's server session has ended (it finishes its statement first)."""
    deadline = time.monotonic() + timeout
    while db.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbdl_fault'").scalar():
        assert time.monotonic() < deadline, "the killed client's session never ended"
        time.sleep(0.05)


def _fault(db: dbdl.Database, proc: subprocess.Popen, how: str, pattern: str = "%") -> None:
    """Kill the client, or terminate its server sessions running ``pattern``; then wait for both."""
    if how == "client SIGKILL":
        proc.send_signal(signal.SIGKILL)
    else:
        for pid in _active(db, pattern):
            db.sql("SELECT pg_terminate_backend(?)", [pid])
    proc.wait(60)
    _gone(db)


def _cache_is_consistent(db: dbdl.Database) -> int:
    rows = db.sql('SELECT e.cache_id, e."rows", (SELECT count(*) FROM dbdl.result_cache AS c '
                  "WHERE c.cache_id = e.cache_id) FROM dbdl.cache_entries AS e").fetchall()
    for cache_id, counted, actual in rows:
        assert counted == actual, f"entry {cache_id} counts {counted} rows but holds {actual}"
    orphans = db.sql("SELECT count(*) FROM dbdl.result_cache WHERE cache_id NOT IN "
                     "(SELECT cache_id FROM dbdl.cache_entries)").scalar()
    assert orphans == 0
    return sum(r[2] for r in rows)


def _registry_is_consistent(db: dbdl.Database) -> None:
    assert db.sql("SELECT count(*) FROM dbdl.model_versions v WHERE NOT EXISTS "
                  "(SELECT 1 FROM dbdl.blobs b WHERE b.sha256 = v.sha256)").scalar() == 0
    assert db.sql("SELECT count(*) FROM dbdl.models m WHERE NOT EXISTS "
                  "(SELECT 1 FROM dbdl.model_versions v WHERE v.name = m.name)").scalar() == 0
    assert db.sql("SELECT count(*) FROM dbdl.models m WHERE m.serving_version IS NULL OR NOT EXISTS "
                  "(SELECT 1 FROM dbdl.model_versions v WHERE v.name = m.name AND v.version = m.serving_version)"
                  ).scalar() == 0
    assert db.sql("SELECT count(*) FROM dbdl.models m WHERE m.next_version <= "
                  "(SELECT max(v.version) FROM dbdl.model_versions v WHERE v.name = m.name)").scalar() == 0


@pytest.fixture
def big(url):
    x = np.random.default_rng(3).standard_normal((ROWS, 8)).astype(np.float32)
    with dbdl.connect(url) as db:
        db.create_table("t", {"id": np.arange(ROWS), "feats": x})
        db.models.register("m", export_onnx(make_mlp((8, 64, 64, 3), seed=2), 8))
        db.models.set_options("m", cache=True)
    return url


@pytest.mark.never(["duckdb"], reason="DuckDB runs inside the client: its kill is test_a_kill_of_a_duckdb_client_…")
@pytest.mark.parametrize("how", ["client SIGKILL", "pg_terminate_backend"])
def test_a_kill_during_a_cached_predict_keeps_the_accounting(big, how):
    url = big
    with dbdl.connect(url) as db:
        proc = _start("""
            for lo in range(0, 120_000, 30_000):
                db.sql(f"SELECT count(predict_array('m', feats)) FROM t WHERE id >= {lo} AND id < {lo + 30_000}")
        """, url)
        # in the middle: rows were already cached and the client is filling more
        _wait_for(lambda: db.sql("SELECT count(*) FROM dbdl.result_cache").scalar() > 0
                  and bool(_active(db, "%cache_fill%")), proc)
        _fault(db, proc, how, "%cache_fill%")
        cached = _cache_is_consistent(db)
        assert 0 < cached < ROWS
        # and the cache goes on from there: a full run ends with every row cached, counted once
        got = db.sql("SELECT count(predict_array('m', feats)) FROM t").scalar()
        assert got == ROWS and _cache_is_consistent(db) == ROWS
        (stats,) = db.models.cache_stats("m")
        assert stats.rows == ROWS


@pytest.mark.never(["postgres"], reason="the PostgreSQL variants are above")
def test_a_kill_of_a_duckdb_client_during_a_cached_predict_keeps_the_accounting(big):
    url = big
    marker = Path(url.removeprefix("duckdb:///") + ".started")
    proc = _start(f"""
        from pathlib import Path
        for lo in range(0, 120_000, 10_000):
            db.sql(f"SELECT count(predict_array('m', feats)) FROM t WHERE id >= {{lo}} AND id < {{lo + 10_000}}")
            Path({str(marker)!r}).touch()
    """, url)
    _wait_for(marker.exists, proc)
    time.sleep(0.3)  # somewhere inside a later statement
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    with dbdl.connect(url) as db:
        cached = _cache_is_consistent(db)
        assert 0 < cached <= ROWS
        assert db.sql("SELECT count(predict_array('m', feats)) FROM t").scalar() == ROWS
        assert _cache_is_consistent(db) == ROWS


def test_a_failing_cached_query_leaves_no_cache_entry(db, features, strategy):
    db.models.register("m", export_onnx(make_mlp((8, 16, 3)), 8))
    db.models.set_options("m", cache=True)
    db.create_table("short", {"id": np.arange(5), "feats": features[:5, :7]})
    with pytest.raises(dbdl.ShapeMismatch):
        db.sql("SELECT predict_array('m', feats) FROM short", strategy=strategy)
    assert db.sql("SELECT count(*) FROM dbdl.cache_entries").scalar() == 0
    assert db.sql("SELECT count(*) FROM dbdl.result_cache").scalar() == 0
    assert db.models.cache_stats() == []


@pytest.mark.never(["duckdb"], reason="a killed DuckDB client loses only uncommitted transactions (the test above)")
@pytest.mark.parametrize("how", ["client SIGKILL", "pg_terminate_backend"])
def test_a_kill_during_register_or_create_table_as_leaves_no_partial_rows(url, how, tmp_path):
    # a model of ~40 MB: its blob takes long enough to write that the kill lands inside the transaction
    path = tmp_path / "big.onnx"
    path.write_bytes(export_onnx(make_mlp((8, 3200, 3200, 3), seed=4), 8))
    with dbdl.connect(url) as db:
        db.models.register("small", export_onnx(make_mlp((8, 4, 2)), 8))
        x = np.random.default_rng(0).standard_normal((ROWS, 8)).astype(np.float32)
        db.create_table("t", {"id": np.arange(ROWS), "feats": x})
        proc = _start(f"""
            for i in range(20):
                db.models.register("big", open({str(path)!r}, "rb").read(), description=str(i))
                db.models.drop("big")
        """, url)
        _wait_for(lambda: bool(_active(db, "%dbdl.blobs%")) or bool(_active(db, "%register_model%")), proc)
        _fault(db, proc, how)
        _registry_is_consistent(db)
        assert [m.name for m in db.models.list()] in (["small"], ["big", "small"])

        proc = _start("""
            db.sql("CREATE TABLE scores AS SELECT id, predict_array('small', feats) AS p FROM t", strategy="udf")
        """, url)
        _wait_for(lambda: bool(_active(db, "%CREATE TABLE scores%")), proc)
        time.sleep(0.2)
        _fault(db, proc, how)
        exists = db.sql("SELECT to_regclass('public.scores') IS NOT NULL").scalar()
        if exists:  # the statement had finished, and committed whole
            assert db.sql("SELECT count(*) FROM scores").scalar() == ROWS
        _registry_is_consistent(db)


@pytest.mark.never(["duckdb"], reason="PL/Python is PostgreSQL's")
def test_python_exceptions_in_pl_python_never_take_the_server_down(url, features):
    with dbdl.connect(url) as db:
        db.models.register("m", export_onnx(make_mlp((8, 16, 3)), 8))
        started = db.sql("SELECT pg_postmaster_start_time()").scalar()
        bad = ["SELECT dbdl.register_model('x', '\\x0102'::bytea)", "SELECT dbdl.register_model('x', NULL)",
               "SELECT dbdl.drop_model('ghost')", "SELECT dbdl.promote_model('m', 99)",
               "SELECT dbdl.cache_fill('m', ARRAY['\\x00'::bytea])", "SELECT dbdl.cache_fill('ghost', NULL)"]
        for sql in bad:
            with pytest.raises(dbdl.Error):
                db.sql(sql)
        assert db.sql("SELECT pg_postmaster_start_time()").scalar() == started
        assert db.sql("SELECT count(*) FROM dbdl.model_catalog").scalar() == 1


@pytest.mark.notimpl(["duckdb"], reason="CALL predict_into and CALL train_export are PostgreSQL's procedures")
@pytest.mark.parametrize("how", ["client SIGKILL", "pg_terminate_backend"])
def test_a_kill_during_predict_into_or_train_export_leaves_no_partial_rows(url, how):
    x = np.random.default_rng(1).standard_normal((ROWS, 8)).astype(np.float32)
    with dbdl.connect(url) as db:
        db.create_table("t", {"id": np.arange(ROWS), "feats": x, "label": np.arange(ROWS) % 3})
        db.models.register("m", export_onnx(make_mlp((8, 64, 64, 3), seed=2), 8))
        for call, pattern in (
                ("CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', 'scores', 'array', 1000)", "%predict_into%"),
                ("CALL dbdl.train_export('SELECT feats, label FROM t', 'ds', shape => ARRAY[8])", "%train_export%")):
            proc = _start(f"db.sql({call!r})", url)
            _wait_for(lambda: bool(_active(db, pattern)), proc)
            time.sleep(0.5)  # inside the procedure, rows already written in its transaction
            _fault(db, proc, how, pattern)
            # a procedure is one transaction: everything it wrote, or nothing
            if db.sql("SELECT to_regclass('public.scores') IS NOT NULL").scalar():
                assert db.sql("SELECT count(*) FROM scores").scalar() == ROWS
            datasets = db.sql("SELECT name, table_name, n_rows FROM dbdl.datasets").fetchall()
            for name, table, n_rows in datasets:  # the view has one row per sample, blocked or not
                assert db.sql(f"SELECT count(*) FROM dbdl_data.ds_{name}").scalar() == n_rows == ROWS
            leftover = db.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'dbdl_data' AND tablename LIKE 'ds_%'"
                              ).scalar()
            assert leftover == len(datasets)
