"""PostgreSQL's sqlglot dialect as dbdl reads it, and the spellings of relation-centric SQL there.

The one difference from sqlglot's Postgres: ``PREDICT(...)`` is an ordinary function call (sqlglot
parses it as BigQuery's ``ML.PREDICT(MODEL m, ...)``, which would mangle ``predict('m', feats)``).
"""

from __future__ import annotations

import functools
import re

import sqlglot
import sqlglot.expressions as exp
from sqlglot.dialects.postgres import Postgres

from dbdl_udf.kinds import KINDS

from ...ir.sql import RelationalSQL
from ...query import without_predict


class DbdlPostgres(Postgres):
    class Parser(Postgres.Parser):
        FUNCTIONS = without_predict(Postgres.Parser.FUNCTIONS)


def _no_null_elements(features: exp.Expression) -> exp.Expression:
    # array_position finds NULL with IS NOT DISTINCT FROM; it refuses a multidimensional array (a
    # nested real[] image), whose elements are searched through unnest instead
    flat = exp.Is(this=exp.Anonymous(this="pg_catalog.array_position", expressions=[features.copy(), exp.Null()]),
                  expression=exp.Null())
    nested = sqlglot.parse_one("NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(dbdl_x) AS dbdl_e(v) "
                               "WHERE dbdl_e.v IS NULL)", read="postgres")
    for column in [c for c in nested.find_all(exp.Column) if c.name == "dbdl_x"]:
        column.replace(features.copy())
    ndims = exp.Anonymous(this="pg_catalog.array_ndims", expressions=[features.copy()])
    # qualified here: the condition sits in the user's part of the query, which qualify_builtins skips
    more = exp.Operator(this=ndims, operator="pg_catalog.>", expression=exp.Literal.number(1))
    return exp.Case(ifs=[exp.If(this=more, true=nested)], default=flat)


def _fail(message: exp.Expression, features: exp.Expression) -> exp.Expression:
    # dbdl.fail(message, anyelement) raises and "returns" the features' type
    return exp.Anonymous(this="dbdl.fail", expressions=[message, features.copy()])


# the polymorphic built-ins carry their schema, because an exact overload a user created
# (public.unnest(real[])) would beat them wherever it sits on the caller's path
RELATIONAL = RelationalSQL(
    unnest="SELECT s.rid, u.i - 1 AS i, CAST(u.v AS DOUBLE PRECISION) AS v "
           "FROM {src} AS s, pg_catalog.unnest(s.dbdl_f) WITH ORDINALITY AS u(v, i)",
    collect="CAST(pg_catalog.array_agg(v ORDER BY i) AS REAL[])",  # PostgreSQL arrays have no fixed length
    argmax="(pg_catalog.array_agg(i ORDER BY v DESC, i))[1]",
    real="REAL",
    length="pg_catalog.cardinality",
    nonzeros="pg_catalog.cardinality(pg_catalog.array_remove({a}, 0))",
    avg="pg_catalog.avg",
    no_null_elements=_no_null_elements,
    fail=_fail,
    typed_decimals=True,
)


_DBDL_ROUTINES = {k.function for k in KINDS.values()} | {"predict_into", "train_export"}


_LEADING_CALL = re.compile(r"\s*CALL\s+(predict_into|train_export)\s*\(", re.I)


_UNQUALIFIED_CALL = re.compile(r"(?<![.\w\"])(predict(_array|_class|_text|_into)?|train_export)\s*\(", re.I)


def qualify_dbdl_calls(sql: str) -> str:
    """``dbdl.`` before each unqualified call of dbdl's functions and procedures, for statements
    db.sql sends as written (text sqlglot cannot parse, ``CALL predict_into(...)``): since 0007
    they live in schema dbdl, and the qualified name is the one no other schema can answer. Only
    the fixed prefix is inserted, at token positions; string literals and quoted names are left."""
    if not _UNQUALIFIED_CALL.search(sql):
        return sql
    # sqlglot's tokenizer keeps what follows CALL as one opaque token: the procedure name comes first
    call = _LEADING_CALL.match(sql)
    if call:
        return sql[:call.start(1)] + "dbdl." + sql[call.start(1):]
    from sqlglot.dialects.dialect import Dialect
    from sqlglot.tokens import TokenType

    try:
        tokens = Dialect.get_or_raise(DbdlPostgres).tokenize(sql)
    except sqlglot.errors.SqlglotError:  # text that does not even tokenize goes as written
        return sql
    out, last = [], 0
    for i, token in enumerate(tokens):
        if (token.token_type == TokenType.VAR and token.text.lower() in _DBDL_ROUTINES
                and i + 1 < len(tokens) and tokens[i + 1].token_type == TokenType.L_PAREN
                and (i == 0 or tokens[i - 1].token_type != TokenType.DOT)):
            out += [sql[last:token.start], "dbdl."]
            last = token.start
    return "".join(out) + sql[last:]


_OPERATORS = {exp.Add: "+", exp.Sub: "-", exp.Mul: "*", exp.Div: "/", exp.Mod: "%", exp.EQ: "=", exp.NEQ: "<>",
              exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">=", exp.DPipe: "||"}


#: functions rendered as a plain call, safe to prefix with pg_catalog.
_CALLS = (exp.Sum, exp.Max, exp.Min, exp.Count, exp.Avg, exp.Exp, exp.Ln, exp.Sqrt, exp.Abs, exp.Pow, exp.RowNumber,
          exp.ArrayAgg, exp.Floor, exp.Ceil)


#: built-ins dbdl's SQL calls by name (sqlglot keeps them as anonymous calls)
_NAMED = frozenset({"cardinality", "array_position", "array_send", "sha256", "unnest", "generate_subscripts",
                    "array_length", "format_type", "to_regclass", "array_ndims"})


_DOUBLE = "DOUBLE PRECISION"


def _operand(e: exp.Expression) -> exp.Expression:
    return e if isinstance(e, (exp.Column, exp.Literal, exp.Paren, exp.Cast, exp.Dot, exp.Null)) else exp.Paren(this=e)


def _minus_one() -> exp.Expression:
    return exp.Cast(this=exp.Literal.string("-1"), to=exp.DataType.build(_DOUBLE))


def qualify_builtins(tree: exp.Expression) -> exp.Expression:
    """Name every built-in function, operator and non-keyword type of ``tree`` with pg_catalog,
    in place: ``a * b`` becomes ``a OPERATOR(pg_catalog.*) b``, ``sum(x)`` ``pg_catalog.sum(x)``,
    ``x IN (SELECT …)`` ``x OPERATOR(pg_catalog.=) ANY (SELECT …)``. Subtrees marked
    ``meta["dbdl_user"]`` (the user's own query, to be resolved as the user wrote it) are skipped."""
    nodes = list(tree.walk(bfs=False, prune=lambda n: bool(n.meta.get("dbdl_user"))))
    for node in reversed(nodes):  # children first: a replaced child is already in its parent
        if node.meta.get("dbdl_user"):
            continue
        operator = _OPERATORS.get(type(node))
        if operator is not None:
            node.replace(exp.Paren(this=exp.Operator(this=_operand(node.this), operator=f"pg_catalog.{operator}",
                                                     expression=_operand(node.expression))))
        elif isinstance(node, exp.Neg):
            if isinstance(node.this, exp.Literal) and not node.this.is_string:
                node.replace(exp.Cast(this=exp.Literal.string("-" + node.this.this), to=exp.DataType.build(_DOUBLE)))
            else:
                node.replace(exp.Paren(this=exp.Operator(this=_operand(node.this), operator="pg_catalog.*",
                                                         expression=_minus_one())))
        elif isinstance(node, exp.In) and node.args.get("query") is not None:
            node.replace(exp.Operator(this=_operand(node.this), operator="pg_catalog.=",
                                      expression=exp.Any(this=node.args["query"])))
        elif isinstance(node, _CALLS) and not isinstance(node.parent, exp.Dot):
            node.replace(exp.Dot(this=exp.to_identifier("pg_catalog"), expression=node.copy()))
        elif isinstance(node, exp.Anonymous) and isinstance(node.this, str) and node.this.lower() in _NAMED:
            node.set("this", f"pg_catalog.{node.this}")
        elif isinstance(node, exp.DataType) and node.this in (exp.DataType.Type.TEXT, exp.DataType.Type.VARBINARY):
            node.replace(exp.DataType.build(f"pg_catalog.{'text' if node.this == exp.DataType.Type.TEXT else 'bytea'}",
                                            udt=True))
    return tree


@functools.lru_cache(maxsize=2048)
def qmark_to_format(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s``, with every other ``%`` doubled (found by sqlglot's
    tokenizer, so a ``?`` or ``%`` inside a string literal or comment is left as text)."""
    from sqlglot.tokens import TokenType

    out, position = [], 0
    for token in DbdlPostgres().tokenize(sql):
        out.append(sql[position:token.start].replace("%", "%%"))
        text = sql[token.start:token.end + 1]
        if token.token_type == TokenType.COMMAND:
            # sqlglot keeps what follows a command (CALL) as one raw string: its arguments are
            # tokens like any others, so convert them the same way
            rest = qmark_to_format("SELECT " + sql[token.end + 1:])
            return "".join(out) + text + rest[len("SELECT "):]
        out.append("%s" if token.token_type == TokenType.PLACEHOLDER and text == "?" else text.replace("%", "%%"))
        position = token.end + 1
    out.append(sql[position:].replace("%", "%%"))
    return "".join(out)
