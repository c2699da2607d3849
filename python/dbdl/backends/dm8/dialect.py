"""DM8's sqlglot dialect as dbdl writes it, and the spellings of relation-centric SQL there.

DM8 speaks an Oracle-like SQL (sqlglot's maintainers declined a separate Dameng dialect in favour
of Oracle's), so this is sqlglot's Oracle with what DM8 does differently overridden. Every
statement dbdl sends to DM8 goes through ``render``: parsed with this dialect and written back
with it, so that the generic SQL of dbdl's catalog (``INSERT … ON CONFLICT``, ``LIMIT``, BIGINT)
comes out as DM8 takes it.
"""

from __future__ import annotations

import functools

import sqlglot
import sqlglot.expressions as exp
from sqlglot.dialects.oracle import Oracle

from ...ir.sql import RelationalSQL
from ...query import without_predict


class DbdlDM8(Oracle):
    class Parser(Oracle.Parser):
        FUNCTIONS = without_predict(Oracle.Parser.FUNCTIONS)

    class Generator(Oracle.Generator):
        TYPE_MAPPING = {
            **Oracle.Generator.TYPE_MAPPING,
            # DM8's INT is 32-bit: a BIGINT stays a BIGINT
            exp.DataType.Type.BIGINT: "BIGINT",
        }


@functools.lru_cache(maxsize=4096)
def render(sql: str) -> str:
    """``sql`` (one statement, dbdl's generic SQL or DM8's own) as DM8 takes it."""
    return sqlglot.transpile(sql, read=DbdlDM8, write=DbdlDM8)[0]


def split_script(script: str) -> list[str]:
    """The statements of a migration file of migrations/dm8/: each ends with ``;`` at the end of a
    line, except a PL/SQL block (``BEGIN … END;``), which ends with a line holding only ``/`` (the
    convention of DM's disql). Comment lines (``--``) are dropped."""
    statements, current, block = [], [], False
    for line in script.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("--")):
            continue
        if stripped == "/":
            if current:
                statements.append("\n".join(current).strip())
            current, block = [], False
            continue
        if not current and stripped.upper().split(None, 1)[0] in ("BEGIN", "DECLARE"):
            block = True
        current.append(line)
        if not block and stripped.endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";").strip())
            current = []
    if current and "\n".join(current).strip():
        statements.append("\n".join(current).strip().rstrip(";").strip() if not block else "\n".join(current).strip())
    return statements


def _no_null_elements(features: exp.Expression) -> exp.Expression:
    raise NotImplementedError("DM8 has no array columns: a feature vector is one column per feature")


def _fail(message: exp.Expression, features: exp.Expression) -> exp.Expression:
    # dbdl.fail(message) raises (migrations/dm8/): a function of dbdl's schema
    return exp.Anonymous(this="dbdl.fail", expressions=[message])


#: placeholder spellings: dialect work (issue 16) fills these in
RELATIONAL = RelationalSQL(
    unnest="",
    collect="",
    argmax="",
    real="REAL",
    length="",
    no_null_elements=_no_null_elements,
    fail=_fail,
    int_div="FLOOR({a} / {b})",
    int_mod="MOD({a}, {b})",
)
