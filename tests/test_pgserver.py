"""The PostgreSQL test harness (tests/pgserver.py): start, databases, plpython3u, psql, stop."""

from __future__ import annotations

import socket
import sysconfig
import tempfile
from pathlib import Path

import pytest

from pgserver import PostgresServer, PostgresServerError, available, postgres_can_read

AVAILABLE, REASON = available()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"PostgreSQL unavailable: {REASON}")


@pytest.fixture(scope="module")
def pg():
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def plpy_db(pg):
    import psycopg

    name = "dbdl harness"  # a space, to exercise identifier quoting
    pg.create_database(name)
    with psycopg.connect(pg.url(name), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION plpython3u")
        conn.execute(
            "CREATE FUNCTION py_version() RETURNS text LANGUAGE plpython3u AS $$\n"
            "import sys\n"
            "return sys.version\n"
            "$$"
        )
        conn.execute(
            "CREATE FUNCTION py_numpy_version(site text) RETURNS text LANGUAGE plpython3u AS $$\n"
            "import sys\n"
            "if site not in sys.path:\n"
            "    sys.path.append(site)\n"
            "import numpy\n"
            "return numpy.__version__\n"
            "$$"
        )
    yield name
    pg.drop_database(name)


def _query(url: str, sql: str, *params):
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchone()[0]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_server_listens_on_loopback_with_socket_in_tmpdir(pg):
    assert pg.url() == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    assert _query(pg.url(), "SHOW listen_addresses") == "127.0.0.1"
    assert _query(pg.url(), "SHOW unix_socket_directories") == str(pg.tmpdir)
    assert _query(pg.url(), "SHOW fsync") == "off"
    assert _query(pg.url(), "SELECT current_setting('server_version_num')::int") >= 150000
    assert (pg.tmpdir / f".s.PGSQL.{pg.port}").exists()


def test_plpython_returns_sys_version(pg, plpy_db):
    version = _query(pg.url(plpy_db), "SELECT py_version()")
    assert version.startswith("3.")


def test_plpython_imports_numpy_from_our_venv(pg, plpy_db):
    import sys

    import numpy

    site = sysconfig.get_paths()["purelib"]
    ok, why = postgres_can_read(site)
    if not ok:
        pytest.skip(f"server cannot read the client's site-packages: {why}")
    server_python = _query(pg.url(plpy_db), "SELECT py_version()")
    client_python = f"{sys.version_info.major}.{sys.version_info.minor}."
    if not server_python.startswith(client_python):
        pytest.skip(f"server Python {server_python.split()[0]} vs client {sys.version.split()[0]}")
    assert _query(pg.url(plpy_db), "SELECT py_numpy_version(%s)", site) == numpy.__version__


def test_psql_subprocess(pg, plpy_db):
    result = pg.psql("-tAc", "SELECT 40 + 2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"
    result = pg.psql("-tA", input="SELECT current_database();\n", dbname=plpy_db)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == plpy_db
    result = pg.psql("-c", "SELECT no_such_column")
    assert result.returncode != 0 and "no_such_column" in result.stderr


def test_create_and_drop_database(pg):
    url = pg.create_database("Mixed-Case")
    assert _query(url, "SELECT current_database()") == "Mixed-Case"
    pg.drop_database("Mixed-Case")
    assert _query(pg.url(), "SELECT count(*) FROM pg_database WHERE datname = 'Mixed-Case'") == 0
    pg.drop_database("Mixed-Case")  # absent: no error


def test_postgres_can_read():
    assert postgres_can_read("/usr") == (True, "")
    with tempfile.TemporaryDirectory() as d:
        blocked = Path(d) / "private"
        (blocked / "inner").mkdir(parents=True, mode=0o700)
        blocked.chmod(0o700)
        ok, why = postgres_can_read(blocked / "inner")
        assert not ok and str(blocked) in why
    ok, why = postgres_can_read("/no/such/dir")
    assert not ok and "does not exist" in why


def test_stop_removes_directory_and_server():
    server = PostgresServer().start()
    tmpdir, port = server.tmpdir, server.port
    assert tmpdir.is_dir() and _port_open(port)
    server.stop()
    assert not tmpdir.exists()
    assert not _port_open(port)
    server.stop()  # idempotent


def test_start_failure_raises_with_log_and_cleans_up(monkeypatch):
    import pgserver

    made: list[str] = []
    real_mkdtemp = pgserver.tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs):
        made.append(real_mkdtemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(pgserver.tempfile, "mkdtemp", recording_mkdtemp)
    with pytest.raises(PostgresServerError, match="(?s)failed to start.*shared_buffers"):
        PostgresServer(settings={"shared_buffers": "'lots'"}).start()
    assert made and not Path(made[0]).exists()
