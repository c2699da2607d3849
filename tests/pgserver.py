"""A throwaway PostgreSQL server for the test suite.

``PostgresServer`` runs ``initdb`` and ``pg_ctl`` on a fresh temporary directory, listening on a
free TCP port of 127.0.0.1 only (its unix socket lives inside that directory), and removes it all
again on ``stop()`` / leaving the ``with`` block / interpreter exit.  PostgreSQL refuses to run as
root, so when we are root the server programs run as the ``postgres`` system user (``runuser``,
or ``setpriv`` where ``runuser`` is missing).

``available()`` says whether a server can be started here, and why not; the test suite skips its
PostgreSQL tests with that reason.  ``postgres_can_read(path)`` says whether the server (and so
its embedded Python) can read a directory, and if not, which directory is in the way.
"""

from __future__ import annotations

import atexit
import functools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import quote

PG_USER = "postgres"
MIN_VERSION = 15
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")

SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "128MB",
    "max_connections": "50",
}

# environment variables that would silently redirect pg_ctl / psql or the server's embedded Python
_SCRUB_PREFIXES = ("PG", "PYTHON")
_SCRUB_NAMES = ("VIRTUAL_ENV", "CONDA_PREFIX")


class PostgresServerError(RuntimeError):
    """The server could not be set up, started or stopped."""


# -- finding things --------------------------------------------------------------------------------


def _version_key(bindir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name)) or (0,)


def _has_server_programs(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in SERVER_PROGRAMS)


@functools.lru_cache(maxsize=None)
def find_pg_bin() -> Path | None:
    """The bin directory of the newest PostgreSQL >= 15 server here, or None.

    ``$DBDL_PG_BINDIR`` wins if set; then /usr/lib/postgresql/<version>/bin (Debian's layout,
    highest version first); then ``pg_config --bindir`` if there is a pg_config on PATH.
    """
    override = os.environ.get("DBDL_PG_BINDIR")
    if override:
        path = Path(override)
        return path if _has_server_programs(path) else None
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for bindir in candidates:
        if _version_key(bindir)[0] >= MIN_VERSION and _has_server_programs(bindir):
            return bindir
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        bindir = Path(out)
        if _has_server_programs(bindir) and _server_major(bindir) >= MIN_VERSION:
            return bindir
    return None


def _server_major(bindir: Path) -> int:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    match = re.search(r"(\d+)", out)
    return int(match.group(1)) if match else 0


def pg_libdir(bindir: Path) -> Path:
    """The server's package library directory (where plpython3.so lives)."""
    pg_config = bindir / "pg_config"
    if os.access(pg_config, os.X_OK):
        try:
            out = subprocess.run(
                [str(pg_config), "--pkglibdir"], capture_output=True, text=True, timeout=10
            )
            if out.returncode == 0 and out.stdout.strip():
                return Path(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return bindir.parent / "lib"


def _psql_binary(bindir: Path) -> str | None:
    if os.access(bindir / "psql", os.X_OK):
        return str(bindir / "psql")
    return shutil.which("psql")


# -- running as the postgres user -----------------------------------------------------------------


def _as_postgres() -> list[str]:
    """The command prefix that runs a program as the postgres user (empty if we are it)."""
    if os.geteuid() == 0:
        if shutil.which("runuser"):
            return ["runuser", "-u", PG_USER, "--"]
        if shutil.which("setpriv"):
            return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", "--"]
        raise PostgresServerError("we are root but neither runuser nor setpriv is available")
    if _current_user() == PG_USER:
        return []
    raise PostgresServerError(f"must run as root or as the {PG_USER!r} user")


def _current_user() -> str | None:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return None


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_SCRUB_PREFIXES) and key not in _SCRUB_NAMES
    }
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["LC_ALL"] = "C"
    env.update(extra or {})
    return env


def postgres_can_read(path: str | os.PathLike[str]) -> tuple[bool, str]:
    """Whether the postgres user can read and traverse ``path`` and every directory above it.

    Returns ``(True, "")``, or ``(False, reason)`` where reason names the blocking directory.
    """
    target = Path(path).resolve()
    if not target.exists():
        return False, f"{target} does not exist"
    chain = [str(p) for p in reversed([target, *target.parents])]  # "/" first
    try:
        prefix = _as_postgres()
    except PostgresServerError as exc:
        return False, f"cannot check access to {target} as {PG_USER}: {exc}"
    script = 'for d do test -r "$d" -a -x "$d" || { printf "%s" "$d"; exit 1; }; done'
    try:
        proc = subprocess.run(
            [*prefix, "sh", "-c", script, "sh", *chain],
            capture_output=True, text=True, timeout=30, cwd="/", env=_clean_env(),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"cannot check access to {target} as {PG_USER}: {exc}"
    if proc.returncode == 0:
        return True, ""
    blocker = proc.stdout.strip()
    if not blocker:
        return False, f"cannot check access to {target} as {PG_USER}: {proc.stderr.strip()}"
    return False, (
        f"the {PG_USER} user cannot read+traverse {blocker}"
        + ("" if blocker == str(target) else f" (a parent of {target})")
    )


@functools.lru_cache(maxsize=None)
def available() -> tuple[bool, str]:
    """Whether a PostgreSQL server with plpython3u can be started here; the reason when not."""
    bindir = find_pg_bin()
    if bindir is None:
        return False, (
            f"no PostgreSQL >= {MIN_VERSION} server programs ({', '.join(SERVER_PROGRAMS)}) "
            "found under /usr/lib/postgresql/*/bin: run `make postgres-packages`"
        )
    if _psql_binary(bindir) is None:
        return False, f"no psql binary next to {bindir} or on PATH"
    plpython = pg_libdir(bindir) / "plpython3.so"
    if not plpython.exists():
        return False, f"{plpython} missing (plpython3u not installed): run `make postgres-packages`"
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return False, f"no {PG_USER!r} system user"
    try:
        _as_postgres()
    except PostgresServerError as exc:
        return False, str(exc)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False, "psycopg is not installed (pip install 'psycopg[binary]')"
    ok, why = postgres_can_read(tempfile.gettempdir())
    if not ok:
        return False, f"temporary directory unusable by the server: {why}"
    return True, ""


# -- the server ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """A private PostgreSQL server in a temporary directory; ``with PostgresServer() as pg: ...``.

    ``settings`` adds to / overrides ``SETTINGS`` (values are written verbatim into
    postgresql.conf, so quote strings: ``{"search_path": "'x'"}``).  ``env`` adds environment
    variables for the server process (its embedded Python sees them).
    """

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout: int = 60,
    ) -> None:
        self.settings = dict(settings or {})
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.bindir: Path | None = None
        self.tmpdir: Path | None = None
        self.datadir: Path | None = None
        self.logfile: Path | None = None
        self.port: int | None = None
        self.running = False

    # -- lifecycle --

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> PostgresServer:
        if self.tmpdir is not None:
            raise PostgresServerError("server already started")
        ok, why = available()
        if not ok:
            raise PostgresServerError(f"cannot start PostgreSQL here: {why}")
        self.bindir = find_pg_bin()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="dbdl-pg-"))
        atexit.register(self.stop)
        try:
            pg = pwd.getpwnam(PG_USER)
            os.chown(self.tmpdir, pg.pw_uid, pg.pw_gid)
            os.chmod(self.tmpdir, 0o700)
            self.datadir = self.tmpdir / "data"
            self.logfile = self.tmpdir / "server.log"
            self._run_as_postgres(
                [
                    str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", PG_USER,
                    "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync",
                ],
                what="initdb",
            )
            conf = self.datadir / "postgresql.conf"
            initial_conf = conf.read_text()
            for attempt in range(3):
                self.port = _free_port()
                self.logfile.unlink(missing_ok=True)
                conf.write_text(initial_conf + self._settings_block())
                if self._pg_ctl_start():
                    self.running = True
                    return self
                # another process may have grabbed the port between _free_port() and the bind
                if attempt < 2 and "could not bind" in self.log_tail():
                    continue
                raise PostgresServerError(
                    f"PostgreSQL failed to start (port {self.port}); server log tail:\n"
                    + self.log_tail()
                )
            raise AssertionError("unreachable")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (fast shutdown, harder if need be) and remove its directory."""
        tmpdir, self.tmpdir = self.tmpdir, None
        if tmpdir is None:
            return
        atexit.unregister(self.stop)
        try:
            if self.datadir is not None and (self.datadir / "postmaster.pid").exists():
                self._pg_ctl_stop()
        finally:
            self.running = False
            shutil.rmtree(tmpdir, ignore_errors=True)

    def _pg_ctl_start(self) -> bool:
        assert self.bindir and self.datadir and self.logfile
        try:
            proc = subprocess.run(
                [
                    *_as_postgres(), str(self.bindir / "pg_ctl"), "start", "-w",
                    "-t", str(self.start_timeout), "-D", str(self.datadir), "-l", str(self.logfile),
                ],
                capture_output=True, text=True, cwd=self.tmpdir, env=_clean_env(self.env),
                timeout=self.start_timeout + 30,
            )
        except subprocess.TimeoutExpired:
            self._pg_ctl_stop()
            return False
        if proc.returncode != 0:
            self._pg_ctl_stop()  # pg_ctl may have given up on a postmaster that is still coming up
            return False
        return True

    def _pg_ctl_stop(self) -> None:
        assert self.bindir and self.datadir
        pg_ctl = str(self.bindir / "pg_ctl")
        for mode in ("fast", "immediate"):
            try:
                proc = subprocess.run(
                    [*_as_postgres(), pg_ctl, "stop", "-w", "-t", "30", "-m", mode,
                     "-D", str(self.datadir)],
                    capture_output=True, text=True, cwd="/", env=_clean_env(), timeout=60,
                )
            except subprocess.TimeoutExpired:
                continue
            if proc.returncode == 0 or not (self.datadir / "postmaster.pid").exists():
                return
        # last resort: kill the postmaster named in postmaster.pid
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        except (OSError, ValueError, IndexError):
            pass

    def _run_as_postgres(self, cmd: Sequence[str], what: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*_as_postgres(), *cmd], capture_output=True, text=True, cwd=self.tmpdir,
            env=_clean_env(), timeout=300,
        )
        if proc.returncode != 0:
            raise PostgresServerError(
                f"{what} failed (exit {proc.returncode}):\n"
                f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            )
        return proc

    def _settings_block(self) -> str:
        settings = {
            **SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": f"'{self.tmpdir}'",
            **self.settings,
        }
        lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
        return f"\n# -- dbdl test harness --\n{lines}"

    def log_tail(self, n: int = 40) -> str:
        if self.logfile is None or not self.logfile.exists():
            return "(no server log)"
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(cannot read server log: {exc})"
        return "\n".join(lines[-n:])

    # -- using it --

    def _require_running(self) -> None:
        if not self.running:
            raise PostgresServerError("server is not running")

    def url(self, dbname: str = "postgres", user: str = PG_USER) -> str:
        self._require_running()
        return f"postgresql://{quote(user, safe='')}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def _execute(self, statement) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(statement)

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its URL."""
        from psycopg import sql

        self._execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions."""
        from psycopg import sql

        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        self._execute(drop.format(sql.Identifier(name)))

    def psql(
        self,
        *args: str,
        input: str | None = None,
        dbname: str = "postgres",
        user: str = PG_USER,
        check: bool = False,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        """Run psql (no psqlrc, ON_ERROR_STOP=1) against the server; text in, text out."""
        self._require_running()
        assert self.bindir
        psql = _psql_binary(self.bindir)
        if psql is None:
            raise PostgresServerError("psql not found")
        return subprocess.run(
            [psql, "-X", "-v", "ON_ERROR_STOP=1", "-d", self.url(dbname, user), *args],
            input=input, capture_output=True, text=True, check=check, timeout=timeout,
            env=_clean_env(),
        )
