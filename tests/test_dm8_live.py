"""DM8's live suite (docs/dm8.md, "Running the live suite"): its switch and its safety locks.

Without DBDL_DM8_URL no DM8 case is collected, and the gap shows here: the live test below is
skipped with the reason that says how to run the suite. With it, that test checks on the server
what nothing without one can: dbdl's migrations apply on connect and are recorded, every
statement of them runs a second time over what the first run made (DM8 commits each DDL
statement, so a migration interrupted half way is completed by running it again), and
dbdl.fail raises its message. The locks that keep the suite from dropping anything but its own
objects (tests/dm8server.py) are tested without a server.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import dbdl
import dm8server
from conftest import BACKENDS, DM8_MODULES, KNOWN_BACKENDS
from dbdl import migrate
from dbdl.backends.dm8.dialect import render, split_script


@pytest.mark.skipif(not dm8server.configured(), reason=dm8server.SKIP_REASON)
def test_the_migrations_apply_record_and_run_again_on_the_live_server(dm8_server, request):
    request.addfinalizer(dm8_server.hold())
    dm8_server.reset()
    db = dbdl.connect(dm8_server.url)  # an empty dbdl: migrated on connect
    try:
        known = migrate.available("dm8")
        assert migrate.applied(db.backend.catalog) == {m.id: (m.name, m.checksum) for m in known}
        connection = dm8_server.connect()
        try:
            cursor = connection.cursor()
            for mig in known:  # each statement again, as the backend sends it (blocks as written)
                for statement in split_script(mig.sql):
                    is_block = statement.split(None, 1)[0].upper() in ("BEGIN", "DECLARE")
                    cursor.execute(statement if is_block else render(statement))
            with pytest.raises(Exception, match="dbdl.ShapeMismatch: 3 features, not 4"):
                cursor.execute("SELECT dbdl.fail('dbdl.ShapeMismatch: 3 features, not 4') FROM DUAL")
        finally:
            connection.close()
        assert migrate.pending(db.backend) == []
    finally:
        db.close()


def test_without_a_url_no_dm8_case_is_collected_and_markers_may_name_dm8_anyway():
    assert ("dm8" in BACKENDS) == bool(dm8server.configured())
    assert "dm8" in KNOWN_BACKENDS
    assert DM8_MODULES == {"test_behaviour", "test_errors", "test_registration", "test_training", "test_planner", "test_wide",
                           "test_migrations"}


@pytest.mark.parametrize("url", ["dm://SYSDBA:secret@db.example:5236", "dm://app:secret@db.example",
                                 "dm://dbdl_testing:x@db.example", "dm://xdbdl_test:x@db.example"])
def test_the_live_suite_runs_only_as_a_dedicated_test_user(url):
    with pytest.raises(dm8server.RefusedServer, match="dedicated user named DBDL_TEST or DBDL_TEST_<suffix>"):
        dm8server.server(url, environ={dm8server.RESET_VAR: "1"})


@pytest.mark.parametrize("reset", [None, "0", "yes"])
def test_the_live_suite_resets_a_server_only_when_told_to(reset):
    environ = {} if reset is None else {dm8server.RESET_VAR: reset}
    with pytest.raises(dm8server.RefusedServer, match=r"set DBDL_DM8_RESET=1 .* user DBDL_TEST on db\.example:5236"):
        dm8server.server("dm://dbdl_test:x@db.example", environ=environ)


@pytest.mark.parametrize("url", ["postgresql://dbdl_test:x@db.example:5236", "dm://db.example:5236",
                                 "dm://dbdl_test:x@:5236"])
def test_the_live_suite_needs_a_dm_url_with_user_and_host(url):
    with pytest.raises(dm8server.RefusedServer, match="must be dm://user:password@host:port"):
        dm8server.server(url, environ={dm8server.RESET_VAR: "1"})


def test_a_test_user_and_reset_give_the_server_to_connect_to():
    live = dm8server.server("dm://dbdl_test_ci:p%40ss@db.example:5237", environ={dm8server.RESET_VAR: "1"})
    assert (live.user, live.password, live.host, live.port) == ("DBDL_TEST_CI", "p@ss", "db.example", 5237)
    assert dm8server.server("dm://DBDL_TEST:x@10.0.0.7", environ={dm8server.RESET_VAR: "1"}).port == 5236


def test_an_unreachable_server_is_a_connection_error_naming_host_and_port():
    live = dm8server.server("dm://dbdl_test:x@127.0.0.1:1", environ={dm8server.RESET_VAR: "1"})
    with pytest.raises(ConnectionError, match=r"cannot reach 127\.0\.0\.1:1 as DBDL_TEST"):
        live.reset()  # refused at once: nothing listens on port 1


def test_the_dm8_cases_of_two_processes_take_turns():
    """A server's lock is exclusive: while one process's DM8 case holds it, another process (one of
    make test's workers) cannot take it, and can once it is released."""
    live = dm8server.server("dm://dbdl_test:x@192.0.2.1:5236", environ={dm8server.RESET_VAR: "1"})
    probe = ("import fcntl, sys\nf = open(sys.argv[1], 'w')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('free')\n"
             "except BlockingIOError:\n    print('held')\n")

    def other_process() -> str:
        return subprocess.run([sys.executable, "-c", probe, live.lock_path], capture_output=True, text=True,
                              check=True).stdout.strip()

    release = live.hold()
    try:
        assert other_process() == "held"
    finally:
        release()
    assert other_process() == "free"
