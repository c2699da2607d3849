"""Migrations: numbered, recorded, re-runnable; newer or edited schemas are refused."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import backend_name

import dbdl
from dbdl import migrate as migrations
from dbdl.backends.base import Backend


def recorded(url: str) -> list[tuple]:
    backend = Backend.open(url)
    try:
        return backend.fetchall("SELECT id, name, checksum FROM dbdl.schema_migrations ORDER BY id")
    finally:
        backend.close()


def test_connect_installs_every_migration(url):
    dbdl.connect(url).close()
    backend = Backend.open(url)
    shipped = migrations.available(backend.name)
    backend.close()
    assert [(r[0], r[1], r[2]) for r in recorded(url)] == [(m.id, m.name, m.checksum) for m in shipped]


def test_migrate_twice_is_a_noop(url):
    backend = Backend.open(url)
    try:
        first = migrations.migrate(backend)
        assert [m.id for m in first] == [m.id for m in migrations.available(backend.name)]
        before = backend.fetchall("SELECT id, applied_at FROM dbdl.schema_migrations ORDER BY id")
        assert migrations.migrate(backend) == []
        assert backend.fetchall("SELECT id, applied_at FROM dbdl.schema_migrations ORDER BY id") == before
    finally:
        backend.close()


def test_newer_schema_is_refused(url):
    dbdl.connect(url).close()
    backend = Backend.open(url)
    backend.execute("INSERT INTO dbdl.schema_migrations (id, name, checksum) VALUES (9999, 'future', 'x')")
    backend.close()
    with pytest.raises(dbdl.MigrationError, match="at migration 9999.*upgrade dbdl"):
        dbdl.connect(url)
    backend = Backend.open(url)
    try:
        with pytest.raises(dbdl.MigrationError, match="upgrade dbdl"):
            migrations.migrate(backend)
    finally:
        backend.close()


def test_edited_migration_is_refused(url):
    dbdl.connect(url).close()
    backend = Backend.open(url)
    backend.execute("UPDATE dbdl.schema_migrations SET checksum = 'edited' WHERE id = 1")
    backend.close()
    with pytest.raises(dbdl.MigrationError, match="0001_registry.sql differs.*new migration"):
        dbdl.connect(url)


def test_migrate_false_refuses_to_install(url):
    # a missing DuckDB file is not created; an empty PostgreSQL database is not migrated
    with pytest.raises((dbdl.MigrationError, dbdl.ConnectionError), match="dbdl migrate"):
        dbdl.connect(url, migrate=False)
    backend = Backend.open(url)
    try:
        assert migrations.applied(backend) == {}
    finally:
        backend.close()


def test_cli_migrate(url):
    cmd = [sys.executable, "-m", "dbdl.cli", "migrate", url]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "applied 0001_registry" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "up to date" in second.stdout and "applied 0001" not in second.stdout
    assert len(recorded(url)) == len(migrations.available(backend_name(url)))


def test_migration_files_are_well_formed():
    for backend in ("duckdb", "dm8"):
        found = migrations.available(backend)
        assert [m.id for m in found] == list(range(1, len(found) + 1))


def test_default_url_comes_from_dbdl_url(tmp_path, monkeypatch):
    target = tmp_path / "from_env.duckdb"
    monkeypatch.setenv("DBDL_URL", f"duckdb:///{target}")
    with dbdl.connect() as db:
        assert db.url == f"duckdb:///{target}"
    assert target.exists()
    monkeypatch.delenv("DBDL_URL")
    monkeypatch.chdir(tmp_path)
    with dbdl.connect() as db:
        assert db.url == "duckdb:///dbdl_data.duckdb"
    assert (tmp_path / "dbdl_data.duckdb").exists()
    with pytest.raises(dbdl.ConnectionError, match="clash with dbdl's own schema"):
        dbdl.connect(f"duckdb:///{tmp_path / 'dbdl.duckdb'}")
