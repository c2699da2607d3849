"""DuckDB's sqlglot dialect as dbdl reads it, and the spellings of relation-centric SQL there.

The one difference from sqlglot's DuckDB: ``PREDICT(...)`` is an ordinary function call (sqlglot
parses it as BigQuery's ``ML.PREDICT(MODEL m, ...)``, which would mangle ``predict('m', feats)``).
"""

from __future__ import annotations

import sqlglot.expressions as exp
from sqlglot.dialects.duckdb import DuckDB

from ...ir.sql import RelationalSQL
from ...query import without_predict


class DbdlDuckDB(DuckDB):
    class Parser(DuckDB.Parser):
        FUNCTIONS = without_predict(DuckDB.Parser.FUNCTIONS)


def _no_null_elements(features: exp.Expression) -> exp.Expression:
    # list_count counts the non-NULL elements
    return exp.EQ(this=exp.Anonymous(this="list_count", expressions=[features.copy()]),
                  expression=exp.Anonymous(this="len", expressions=[features.copy()]))


def _fail(message: exp.Expression, features: exp.Expression) -> exp.Expression:
    return exp.Anonymous(this="error", expressions=[message])


RELATIONAL = RelationalSQL(
    # the cast to a list in a subquery first: unnesting a fixed-size FLOAT[n] array (or a cast of one
    # in the same SELECT) takes time growing with n per element, ~100x slower at n = 10,000
    unnest="SELECT rid, CAST(generate_subscripts(dbdl_f, 1) - 1 AS BIGINT) AS i, unnest(dbdl_f) AS v "
           "FROM (SELECT rid, CAST(dbdl_f AS DOUBLE[]) AS dbdl_f FROM {src}) AS dbdl_l",
    collect="CAST(list(v ORDER BY i) AS FLOAT[])",
    argmax="arg_max(i, v)",
    real="FLOAT",
    length="len",
    nonzeros="len(list_filter({a}, lambda dbdl_x: dbdl_x <> 0))",
    no_null_elements=_no_null_elements,
    fail=_fail,
    # blocked layout: a row's activations as one array, a weight column as one array
    pack="list(v ORDER BY i)",
    dot="list_dot_product({a}, {b})",
    int_div="{a} // {b}",  # DuckDB's / on integers gives a double
)
