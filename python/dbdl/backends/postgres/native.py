"""The installer's step for dbdl's C helper on PostgreSQL (native/postgres/dbdl_native.c).

A C function names a library file on the server and only a superuser may create one, so no
migration file can: after the migrations, ``install`` creates ``dbdl.predict_rows``,
``dbdl.predict_into_table`` and ``dbdl.native_version`` from the first library that loads, when the installing role is a
superuser. Where none loads, or the role is not a superuser, or ``DBDL_NATIVE_LIBRARY=off``, it
drops them (if an earlier install made them) and CALL dbdl.predict_into takes its row-batch path,
which gives the same values (docs/security.md says who installs what).

The libraries tried, in order: ``$DBDL_NATIVE_LIBRARY`` (a path on the server), the checkout's
build (``make native``: native/postgres/dbdl_native.so), ``$libdir/dbdl_native`` (``make -C
native/postgres install`` on the server).
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
from psycopg import sql

from ...resources import data_dir

ENV = "DBDL_NATIVE_LIBRARY"
_SIGNATURE = ("dbdl.predict_rows(pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.int4, "
              "pg_catalog.int4)")
_TABLE_SIGNATURE = ("dbdl.predict_into_table(pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.int4, "
                    "pg_catalog.int4, pg_catalog.oid)")
_CREATE = (
    "CREATE OR REPLACE FUNCTION dbdl.native_version() RETURNS pg_catalog.int4 "
    "AS {lib}, 'dbdl_native_version' LANGUAGE C IMMUTABLE PARALLEL SAFE; "
    "CREATE OR REPLACE FUNCTION dbdl.predict_rows(model pg_catalog.text, kind pg_catalog.text, "
    "query pg_catalog.text, width pg_catalog.int4, block_rows pg_catalog.int4) RETURNS SETOF record "
    "AS {lib}, 'dbdl_predict_rows' LANGUAGE C VOLATILE PARALLEL UNSAFE; "
    "CREATE OR REPLACE FUNCTION dbdl.predict_into_table(model pg_catalog.text, kind pg_catalog.text, "
    "query pg_catalog.text, width pg_catalog.int4, block_rows pg_catalog.int4, target pg_catalog.oid) "
    "RETURNS pg_catalog.int8 AS {lib}, 'dbdl_predict_into_table' LANGUAGE C VOLATILE PARALLEL UNSAFE; "
    f"REVOKE ALL ON FUNCTION dbdl.native_version(), {_SIGNATURE}, {_TABLE_SIGNATURE} FROM PUBLIC; "
    f"GRANT EXECUTE ON FUNCTION dbdl.native_version(), {_SIGNATURE}, {_TABLE_SIGNATURE} TO dbdl_user")
_DROP = (f"DROP FUNCTION IF EXISTS dbdl.native_version(); DROP FUNCTION IF EXISTS {_SIGNATURE}; "
         f"DROP FUNCTION IF EXISTS {_TABLE_SIGNATURE}")


def candidates() -> list[str]:
    """The library paths to try (none when DBDL_NATIVE_LIBRARY is 'off')."""
    chosen = os.environ.get(ENV, "").strip()
    if chosen.lower() in ("off", "none", "0", "false"):
        return []
    found = [chosen] if chosen else []
    build = Path(data_dir("native")) / "postgres" / "dbdl_native.so"
    if build.is_file():
        found.append(str(build))
    found.append("$libdir/dbdl_native")
    return found


def install(con: psycopg.Connection) -> str | None:
    """Create the C functions from the first library that loads; the library's path, or None
    (the row-batch path) — the functions are then absent. ``con`` is in autocommit mode."""
    from dbdl_udf.pgblocks import NATIVE_VERSION

    superuser = con.execute("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()
    if not (superuser and superuser[0]):
        return None  # only a superuser creates C functions; what an earlier install made stays
    for lib in candidates():
        try:
            with con.transaction():
                con.execute(sql.SQL(_CREATE).format(lib=sql.Literal(lib)))
                if con.execute("SELECT dbdl.native_version()").fetchone()[0] != NATIVE_VERSION:
                    raise psycopg.DataError("a library of another block format")
            return lib
        except psycopg.Error:
            continue  # cannot be read or loaded, or is stale: try the next
    with con.transaction():
        con.execute(_DROP)
    return None
