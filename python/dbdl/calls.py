"""dbdl's own procedures for databases whose CALL takes only table functions (DuckDB).

On DuckDB, ``db.sql("CALL dbdl.set_model_options('fraud', '{\\"cache\\": true}')")`` is carried out
here; on PostgreSQL the same text reaches the server's procedure. The arguments are read with
sqlglot: literals only (a procedure's arguments are values, not expressions over rows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import sqlglot
import sqlglot.expressions as exp

from .errors import QueryError

if TYPE_CHECKING:
    from .database import Database

#: procedure name (lower case, with and without the schema) -> handler(db, *args)
PROCEDURES: dict[str, Callable[..., Any]] = {}


def procedure(*names: str):
    def register(fn):
        for name in names:
            PROCEDURES[name] = fn
        return fn
    return register


@procedure("dbdl.set_model_options", "set_model_options")
def _set_model_options(db: "Database", name: str, options: str) -> None:
    from dbdl_udf import catalog

    db.models.set_options(name, **catalog.parse_options(options))


@procedure("dbdl.clear_cache", "clear_cache")
def _clear_cache(db: "Database", name: str) -> None:
    db.models.clear_cache(name)


def parse_call(query: str, dialect: str) -> tuple[str, list[Any]] | None:
    """(procedure, literal arguments) when ``query`` is ``CALL <one of PROCEDURES>(…)``, else None."""
    text = query.strip().rstrip(";").strip()
    if not text[:4].upper() == "CALL" or not text[4:5].isspace():
        return None
    try:
        call = sqlglot.parse_one(f"SELECT {text[4:].strip()}", read=dialect).expressions[0]
    except (sqlglot.errors.SqlglotError, IndexError):
        return None
    if isinstance(call, exp.Dot) and isinstance(call.expression, (exp.Anonymous, exp.Func)):
        name = f"{call.this.name}.{_func_name(call.expression)}".lower()
        args = call.expression.expressions if isinstance(call.expression, exp.Anonymous) else None
    elif isinstance(call, (exp.Anonymous, exp.Func)):
        name, args = _func_name(call).lower(), call.expressions if isinstance(call, exp.Anonymous) else None
    else:
        return None
    if name not in PROCEDURES:
        return None
    if args is None or not all(isinstance(a, (exp.Literal, exp.Boolean, exp.Null)) for a in args):
        raise QueryError(f"CALL {name}(…) takes literal arguments (text in single quotes, numbers); got "
                         f"{call.sql(dialect=dialect)}")
    return name, [_value(a) for a in args]


def _func_name(node: exp.Expression) -> str:
    return node.this if isinstance(node, exp.Anonymous) else node.sql_name()


def _value(node: exp.Expression) -> Any:
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Boolean):
        return node.this
    if node.is_string:
        return node.this
    text = node.this
    return float(text) if any(c in text for c in ".eE") else int(text)


def run(db: "Database", name: str, args: list[Any]) -> Any:
    import inspect

    handler = PROCEDURES[name]
    try:
        inspect.signature(handler).bind(db, *args)
    except TypeError as exc:
        raise QueryError(f"CALL {name}(…) got {len(args)} argument(s): {exc}; see docs/reference.md") from exc
    return handler(db, *args)
