"""The DM8 server of the live suite: the one DBDL_DM8_URL names (docs/dm8.md, "Running the live
suite"). No DM8 server can be started here the way pgserver starts PostgreSQL: the suite runs
against a server someone gives it, and it must not destroy anything on that server that is not
the suite's own.

Each test gets an empty dbdl: DM8's database is the whole instance, so isolation is by dropping
dbdl's schemas (DBDL, DBDL_DATA, CASCADE) and the tables and views of the test user's own schema
before the test, through a fresh dmPython connection. Two locks keep that away from real data:

- the URL's user must be a dedicated one, named ``DBDL_TEST`` or ``DBDL_TEST_<anything>``: what
  is dropped lies in schemas that user owns (its own, and dbdl's, which its migrations create);
- ``DBDL_DM8_RESET=1`` must be set: saying, once more, that everything in those schemas may go.

Without either, the live suite fails at its first test, saying which is missing: the URL was given
on purpose, so nothing is skipped silently. The instance-wide roles DBDL_USER and DBDL_ADMIN are
left in place (migration 0004 creates them only when missing).

One server, one user: under pytest-xdist (make test) the DM8 cases of different worker processes
would reset each other's schemas, so each DM8 case holds an exclusive lock file (one per URL, in
the temporary folder) from its reset to its end, and the DM8 cases run one at a time.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

URL_VAR = "DBDL_DM8_URL"
RESET_VAR = "DBDL_DM8_RESET"
#: the reason the live suite's cases are not collected without a server
SKIP_REASON = "DM8 live suite: set DBDL_DM8_URL=dm://user:password@host:5236 (docs/dm8.md)"
#: the test user's name: a dedicated user, never a real application's
TEST_USER_RE = re.compile(r"DBDL_TEST(_[A-Z0-9_]{1,100})?")
#: dbdl's schemas, dropped before each test
SCHEMAS = ("DBDL", "DBDL_DATA")


class RefusedServer(Exception):
    """The live suite will not reset this server (the reason says what to change)."""


@dataclass(frozen=True)
class LiveServer:
    url: str
    user: str
    password: str
    host: str
    port: int

    def connect(self):
        import dmPython

        try:
            return dmPython.connect(user=self.user, password=self.password, server=self.host, port=self.port)
        except dmPython.Error as exc:
            raise ConnectionError(f"the DM8 live suite cannot reach {self.host}:{self.port} as {self.user} "
                                  f"({URL_VAR}): {exc}") from exc

    @property
    def lock_path(self) -> str:
        digest = hashlib.sha256(f"{self.host}:{self.port}/{self.user}".encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), f"dbdl-dm8-{digest}.lock")

    def hold(self):
        """Take this server's lock (waiting for another process's DM8 case to end); returns the
        function that releases it."""
        handle = open(self.lock_path, "w")
        fcntl.flock(handle, fcntl.LOCK_EX)

        def release() -> None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        return release

    def reset(self) -> None:
        """Drop dbdl's schemas and the test user's own tables and views (a fresh connection)."""
        connection = self.connect()
        try:
            cursor = connection.cursor()
            for schema in SCHEMAS:
                cursor.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            # the tests' own tables: unqualified CREATE TABLE puts them in the user's schema
            cursor.execute("SELECT VIEW_NAME FROM ALL_VIEWS WHERE OWNER = ?", (self.user,))
            for (view,) in cursor.fetchall():
                cursor.execute(f"DROP VIEW {_quoted(self.user)}.{_quoted(view)} CASCADE")
            cursor.execute("SELECT TABLE_NAME FROM ALL_TABLES WHERE OWNER = ?", (self.user,))
            for (table,) in cursor.fetchall():
                cursor.execute(f"DROP TABLE {_quoted(self.user)}.{_quoted(table)} CASCADE")
            connection.commit()
        finally:
            connection.close()


def _quoted(name: str) -> str:
    if '"' in name:
        raise RefusedServer(f"the server returned the object name {name!r}, which the live suite does not quote")
    return f'"{name}"'


def configured() -> str | None:
    """The URL the live suite runs against, or None (the suite's DM8 cases are not collected)."""
    return os.environ.get(URL_VAR) or None


def server(url: str, environ=os.environ) -> LiveServer:
    """The live server of ``url``, once the two locks are open; RefusedServer says which is not."""
    parts = urlsplit(url)
    if parts.scheme != "dm" or not parts.hostname or not parts.username:
        raise RefusedServer(f"{URL_VAR} must be dm://user:password@host:port, got {url!r}")
    user = unquote(parts.username).upper()  # DM8 folds unquoted user names to upper case
    if not TEST_USER_RE.fullmatch(user):
        raise RefusedServer(
            f"{URL_VAR} names user {user}; the live suite drops schemas DBDL and DBDL_DATA and every table of its "
            f"user's own schema before each test, so it runs only as a dedicated user named DBDL_TEST or "
            f"DBDL_TEST_<suffix> (docs/dm8.md, \"Running the live suite\")")
    if environ.get(RESET_VAR) != "1":
        raise RefusedServer(
            f"set {RESET_VAR}=1 to let the live suite drop schemas DBDL and DBDL_DATA and the tables of user "
            f"{user} on {parts.hostname}:{parts.port or 5236} before each test")
    return LiveServer(url, user, unquote(parts.password or ""), parts.hostname, parts.port or 5236)
