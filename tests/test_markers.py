"""The gap markers of conftest.py (tests/README.md): notimpl / never skip where they apply, with the
reason in `pytest -rs`; with raises= the test runs there and must raise that error (a strict xfail);
a marker without a reason or on a test without the param it names is a usage error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).resolve().parent / "conftest.py").read_text()

GAPS = '''
import pytest


@pytest.mark.notimpl(["postgres"], reason="gap on postgres")
def test_skipped_on_postgres(url):
    assert url.startswith("duckdb")


@pytest.mark.never(["postgres"], reason="duckdb only")
@pytest.mark.notimpl(["duckdb"], raises=ZeroDivisionError, reason="raises here")
def test_raises_as_declared(url):
    1 / 0


@pytest.mark.never(["postgres"], reason="duckdb only")
@pytest.mark.notimpl(["duckdb"], raises=ZeroDivisionError, reason="a closed gap")
def test_closed_gap_fails(url):
    pass


@pytest.mark.never(["postgres"], reason="duckdb only")
@pytest.mark.notimpl(["duckdb"], raises=ZeroDivisionError, reason="another error")
def test_another_error_fails(url):
    raise KeyError("not the declared error")


@pytest.mark.never(["postgres"], reason="duckdb only")
@pytest.mark.notimpl(strategies=["relation"], reason="no relation here")
def test_by_strategy(url, strategy):
    assert strategy != "relation"


@pytest.mark.never(["postgres"], reason="duckdb only")
@pytest.mark.parametrize("case", [pytest.param("a", marks=pytest.mark.notimpl(["duckdb"], strategies=["dl"],
                                                                             reason="case a under dl")), "b"])
def test_one_case(url, strategy, case):
    assert not (case == "a" and strategy == "dl")
'''


def test_gaps_skip_or_must_raise_where_they_apply(pytester, monkeypatch):
    monkeypatch.delenv("DBDL_DM8_URL", raising=False)  # the counts below are of the backends without DM8's
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gaps=GAPS)
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    # duckdb: 1 + 2 (udf, dl) + 5 (a-udf, a-relation, b-*) passed, 2 skipped (relation; a-dl);
    # postgres: every test skipped (1 + 1 + 1 + 1 + 3 + 6); spark: the same 13, this module not being
    # one of SPARK_MODULES
    result.assert_outcomes(passed=1 + 2 + 5, skipped=2 + 13 + 13, xfailed=1, failed=2)
    out = result.stdout.str()
    assert "this module's Spark cases run with DBDL_SPARK_ALL=1" in out
    assert "not implemented for postgres: gap on postgres" in out
    assert "not implemented for strategy relation: no relation here" in out
    assert "not implemented for duckdb, strategy dl: case a under dl" in out
    assert "does not apply for postgres: duckdb only" in out
    assert "XPASS(strict)" in out and "not implemented for duckdb: a closed gap" in out
    assert "KeyError" in out


@pytest.mark.parametrize("marker, problem", [
    ('notimpl(["postgres"])', "needs reason="),
    ('notimpl(reason="why")', "names no backends and no strategies"),
    ('notimpl("postgres", reason="why")', "backends must be a list"),
    ('notimpl(["sqlite"], reason="why")', "backends must be a list"),
    ('notimpl(strategies=["fast"], reason="why")', "strategies must be a list"),
    ('notimpl(["postgres"], reasons="why")', "takes (backends"),
])
def test_a_malformed_gap_is_a_usage_error(pytester, marker, problem):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_bad=f"import pytest\n\n\n@pytest.mark.{marker}\ndef test_x(url, strategy):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert problem in result.stderr.str()


def test_a_gap_on_a_test_without_its_param_is_a_usage_error(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_bad='import pytest\n\n\n@pytest.mark.notimpl(["postgres"], reason="why")\n'
                                 'def test_x(tmp_path):\n    pass\n\n\n'
                                 '@pytest.mark.notimpl(strategies=["dl"], reason="why")\ndef test_y(url):\n    pass\n')
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "test_x: @pytest.mark.notimpl" in result.stderr.str()
    assert "takes none of ('url', 'zoo_db', 'hybrid_db')" in result.stderr.str()


# DM8's cases exist only with DBDL_DM8_URL (a server of someone's); markers may name dm8 either way
DM8_WIRED = '''
import pytest


@pytest.mark.never(["postgres", "spark"], reason="duckdb only")
@pytest.mark.never(["dm8"], reason="no arrays on dm8")
def test_wired(url):
    assert url.startswith("duckdb")
'''

DM8_UNWIRED = '''
import pytest


@pytest.mark.never(["postgres", "spark"], reason="duckdb only")
def test_unwired(url):
    assert url.startswith("duckdb")
'''


def _as_test_behaviour(monkeypatch) -> None:
    """The inner run's module is named test_behaviour (one of DM8_MODULES): the real one, imported
    in this process where xdist put both files on one worker, is set aside for the run (pytest
    refuses a second module of that name) and put back after."""
    monkeypatch.delitem(sys.modules, "test_behaviour", raising=False)


def test_markers_may_name_dm8_when_its_cases_are_not_collected(pytester, monkeypatch):
    monkeypatch.delenv("DBDL_DM8_URL", raising=False)
    _as_test_behaviour(monkeypatch)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_behaviour=DM8_WIRED)
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=2)  # duckdb; postgres and spark: no dm8 case
    assert "for dm8" not in result.stdout.str() and "[dm8]" not in result.stdout.str()


def test_with_dbdl_dm8_url_the_dm8_cases_are_collected_in_dm8_modules_only(pytester, monkeypatch):
    monkeypatch.setenv("DBDL_DM8_URL", "dm://dbdl_test:x@127.0.0.1:1")
    _as_test_behaviour(monkeypatch)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_behaviour=DM8_WIRED, test_elsewhere=DM8_UNWIRED)
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    # each module: duckdb passes; postgres and spark skipped; dm8 skipped by its marker (a DM8 module)
    # or by DM8_MODULES (any other): no dm8 case reaches the (unreachable) server
    result.assert_outcomes(passed=2, skipped=6)
    out = result.stdout.str()
    assert "does not apply for dm8: no arrays on dm8" in out
    assert "this module's DM8 cases are not wired yet" in out
