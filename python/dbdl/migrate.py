"""Numbered, recorded, re-runnable schema migrations (migrations/<backend>/NNNN_name.sql).

Each file is applied once, inside a transaction, and recorded with its checksum in
``dbdl.schema_migrations``. Running again applies nothing new. A database that has a migration this
code does not know (it was migrated by a newer dbdl), or whose recorded checksum differs from the
file (a released migration was edited), is refused rather than guessed at.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import MigrationError
from .resources import data_dir

if TYPE_CHECKING:
    from .backends.base import Backend

_FILE_RE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True)
class Migration:
    id: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available(backend_name: str) -> list[Migration]:
    """The migrations shipped for a backend, in order."""
    folder = data_dir("migrations") / backend_name
    found = []
    for entry in folder.iterdir():
        m = _FILE_RE.fullmatch(entry.name)
        if m:
            found.append(Migration(int(m[1]), m[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.id)
    ids = [mig.id for mig in found]
    if ids != list(range(1, len(ids) + 1)):
        raise MigrationError(f"migrations/{backend_name} must be numbered 0001, 0002, … without gaps; found {ids}")
    return found


def applied(backend: "Backend") -> dict[int, tuple[str, str]]:
    """id -> (name, checksum) of what the database has recorded (empty for a new database)."""
    if not backend.table_exists("dbdl", "schema_migrations"):
        return {}
    return {int(r[0]): (r[1], r[2]) for r in backend.fetchall("SELECT id, name, checksum FROM dbdl.schema_migrations")}


def status(backend: "Backend") -> tuple[list[Migration], dict[int, tuple[str, str]]]:
    """The migrations shipped for the database that holds dbdl's tables (``backend.catalog``:
    Spark's catalog is a DuckDB or PostgreSQL database) and those it has recorded."""
    store = backend.catalog
    return available(store.name), applied(store)


def check(backend: "Backend", known: list[Migration], done: dict[int, tuple[str, str]]) -> None:
    by_id = {m.id: m for m in known}
    newer = sorted(i for i in done if i not in by_id)
    if newer:
        raise MigrationError(
            f"the database schema is at migration {max(done)} but this dbdl only knows up to "
            f"{max(by_id, default=0)}; upgrade dbdl (pip install -U dbdl) before using this database"
        )
    for mig_id, (name, checksum) in sorted(done.items()):
        if by_id[mig_id].checksum != checksum:
            raise MigrationError(
                f"migration {mig_id:04d}_{name}.sql differs from the copy applied to this database; released "
                "migrations must never be edited — restore the file and put the change in a new migration"
            )


def pending(backend: "Backend") -> list[Migration]:
    known, done = status(backend)
    check(backend, known, done)
    return [m for m in known if m.id not in done]


def migrate(backend: "Backend", on_apply=None) -> list[Migration]:
    """Apply every pending migration; returns those applied (none when the schema is current)."""
    store = backend.catalog
    with store.migration_lock():
        todo = pending(backend)
        for mig in todo:
            try:
                with store.transaction():
                    store.executescript(store.migrations_table_script)
                    store.executescript(mig.sql)
                    store.execute(
                        "INSERT INTO dbdl.schema_migrations (id, name, checksum) VALUES (?, ?, ?)",
                        (mig.id, mig.name, mig.checksum),
                    )
            except MigrationError:
                raise
            except Exception as exc:
                hint = ""
                if any(t in str(exc) for t in ("permission denied", "must be superuser", "admin option")):
                    hint = (" — on PostgreSQL, dbdl migrate must run as a superuser (it installs plpython3u "
                            "functions and the dbdl_user/dbdl_admin roles)")
                raise MigrationError(
                    f"migration {mig.id:04d}_{mig.name}.sql failed and was rolled back: {exc}{hint}"
                ) from exc
            if on_apply is not None:
                on_apply(mig)
        backend.after_migrate()
        return todo


def ensure(backend: "Backend", migrate_: bool | None = None) -> None:
    """Make sure the schema is current when a database is opened: a new database gets dbdl's
    migrations; pending ones are applied when ``migrate_`` is True, or None and the backend
    ``auto_upgrade``s (an embedded file); otherwise MigrationError names `dbdl migrate`."""
    if backend.read_only:
        known, done = status(backend)
        check(backend, known, done)
        if len(done) < len(known):
            raise MigrationError(
                f"the database opened read-only has {len(done)} of {len(known)} dbdl migrations; "
                f"run: dbdl migrate {backend.url}")
        return
    todo = pending(backend)  # refuses a newer or edited schema
    if not todo:
        return
    new = not applied(backend.catalog)
    if migrate_ or (migrate_ is None and (new or backend.catalog.auto_upgrade)):
        migrate(backend)
    else:
        raise MigrationError(
            f"the database needs {len(todo)} dbdl migration(s) ({todo[0].id:04d}_{todo[0].name} …); "
            f"run: dbdl migrate {backend.url}"
        )
