"""dbdl's own procedures for databases whose CALL takes only table functions (DuckDB).

On DuckDB, ``db.sql("CALL dbdl.train_export('SELECT …', 'digits')")`` or
``db.sql("CALL dbdl.set_model_options('fraud', '{\\"cache\\": true}')")`` is carried out here; on
PostgreSQL the same text reaches the server's procedure. The statement is read with sqlglot;
arguments are values — literals (text, numbers, arrays, NULL, booleans) or ``?`` — given by
position and/or by name (``label_column => 'y'``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import sqlglot.expressions as exp

from dbdl_udf import catalog

from .data.export import PARAMETERS, summary, train_export
from .errors import QueryError
from .query import parse

if TYPE_CHECKING:
    from .backends.base import Backend
    from .registry import ModelRegistry


@dataclass(frozen=True)
class Procedure:
    run: Callable[..., Any]  # run(backend, models, **arguments) -> a pyarrow table, or None
    parameters: tuple[str, ...]
    required: int  # how many leading parameters must be given


#: procedure name (lower case, without schema) -> its handler and parameters
PROCEDURES: dict[str, Procedure] = {}
#: the schemas a CALL may name dbdl's procedures with
SCHEMAS = ("dbdl", "public", "main")


def procedure(name: str, parameters: Sequence[str], required: int | None = None):
    def register(fn):
        PROCEDURES[name] = Procedure(fn, tuple(parameters), len(parameters) if required is None else required)
        return fn
    return register


@procedure("set_model_options", ("name", "options"))
def _set_model_options(backend: "Backend", models: "ModelRegistry", name: str, options: str) -> None:
    models.set_options(name, **catalog.parse_options(options))


@procedure("clear_cache", ("name",))
def _clear_cache(backend: "Backend", models: "ModelRegistry", name: str) -> None:
    models.clear_cache(name)


@procedure("train_export", PARAMETERS, required=2)
def _train_export(backend: "Backend", models: "ModelRegistry", **args: Any):
    options = {k: v for k, v in args.items() if v is not None and k not in ("source_query", "dataset_name")}
    return summary([train_export(backend, args["source_query"], args["dataset_name"], **options)])


def parse_call(query: str, dialect: Any, params: Sequence[Any] = ()) -> tuple[str, list, dict] | None:
    """(procedure, positional, keyword arguments) when ``query`` is ``CALL <one of PROCEDURES>(…)``,
    else None (the database then runs the text as it is)."""
    head = query.lstrip()[:5]
    if head[:4].upper() != "CALL" or not head[4:5].isspace():
        return None
    trees = parse(query, dialect)
    if not trees or len(trees) != 1:
        return None
    tree = trees[0]
    if not (isinstance(tree, exp.Command) and str(tree.this).upper() == "CALL"):
        return None
    text = tree.expression.this if isinstance(tree.expression, exp.Literal) else str(tree.expression)
    inner = parse(f"SELECT {text}", dialect)
    if not inner or len(inner) != 1 or not isinstance(inner[0], exp.Select) or len(inner[0].expressions) != 1:
        return None
    call = inner[0].expressions[0]
    qualifier = None
    if isinstance(call, exp.Dot):
        qualifier, call = call.this, call.expression
    if not isinstance(call, exp.Anonymous) or str(call.this).lower() not in PROCEDURES:
        return None
    if qualifier is not None and str(qualifier.name).lower() not in SCHEMAS:
        return None
    name = str(call.this).lower()
    parameters = PROCEDURES[name].parameters
    bound = iter(params)
    positional: list = []
    named: dict = {}
    for arg in call.expressions:
        if isinstance(arg, (exp.Kwarg, exp.PropertyEQ, exp.EQ)):
            key = arg.this.name.lower()
            if key not in parameters:
                raise QueryError(f"{name} has no parameter {key!r}; its parameters are {', '.join(parameters)}")
            named[key] = _literal(name, arg.expression, bound)
        else:
            if named:
                raise QueryError(f"{name}: positional arguments must come before named ones")
            positional.append(_literal(name, arg, bound))
    if len(positional) > len(parameters):
        raise QueryError(f"{name} takes at most {len(parameters)} arguments ({', '.join(parameters)})")
    return name, positional, named


def _literal(name: str, node: exp.Expression, params: Iterator[Any]) -> Any:
    if isinstance(node, exp.Placeholder):
        try:
            return next(params)
        except StopIteration:
            raise QueryError(f"CALL {name} has more ? placeholders than parameters") from None
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Neg):
        return -_literal(name, node.this, params)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this
        text = node.this
        return int(text) if text.lstrip("-").isdigit() else float(text)
    if isinstance(node, exp.Array):
        return [_literal(name, e, params) for e in node.expressions]
    if isinstance(node, exp.Cast):
        return _literal(name, node.this, params)
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    raise QueryError(f"CALL {name} takes literal arguments (text, numbers, arrays); got {node.sql()!r}")


def run(backend: "Backend", models: "ModelRegistry", name: str, positional: list, named: dict) -> Any:
    """Carry out a parsed CALL; what the procedure returns (a pyarrow table, or None)."""
    proc = PROCEDURES[name]
    args = dict(zip(proc.parameters, positional))
    for key, value in named.items():
        if key in args:
            raise QueryError(f"{name} got {key!r} twice")
        args[key] = value
    missing = [p for p in proc.parameters[:proc.required] if p not in args]
    if missing:
        raise QueryError(f"CALL {name}({', '.join(proc.parameters[:proc.required])}, ...) needs at least those "
                         f"argument(s); missing {', '.join(missing)}")
    return proc.run(backend, models, **args)
