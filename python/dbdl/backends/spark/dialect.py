"""Spark SQL's sqlglot dialect as dbdl reads it, and the spellings of relation-centric SQL there.

The one difference from sqlglot's Spark: ``PREDICT(...)`` is an ordinary function call (sqlglot
parses it as BigQuery's ``ML.PREDICT(MODEL m, ...)``, which would mangle ``predict('m', feats)``).
"""

from __future__ import annotations

import sqlglot.expressions as exp
from sqlglot.dialects.spark import Spark

from ...ir.sql import RelationalSQL
from ...query import without_predict


class DbdlSpark(Spark):
    class Parser(Spark.Parser):
        FUNCTIONS = without_predict(Spark.Parser.FUNCTIONS)


def _no_null_elements(features: exp.Expression) -> exp.Expression:
    # forall(...) is NULL for a NULL array, false when an element is NULL
    return exp.Anonymous(this="forall", expressions=[features.copy(), exp.Lambda(
        this=exp.Not(this=exp.Is(this=exp.to_identifier("dbdl_x"), expression=exp.Null())),
        expressions=[exp.to_identifier("dbdl_x")])])


def _fail(message: exp.Expression, features: exp.Expression) -> exp.Expression:
    # Spark appends " SQLSTATE: P0001" to the message: a newline ends the message before it (the
    # backend's error translation reads the dbdl error up to the end of its line)
    return exp.Anonymous(this="raise_error", expressions=[exp.DPipe(this=message, expression=exp.Literal.string("\n"))])


# an array in element order from (i, v) rows: collect_list's order is the shuffle's, so the pairs are
# sorted by i (a struct sorts by its first field) and their values taken
_ORDERED = "transform(array_sort(collect_list(struct(i, v))), dbdl_p -> {value})"

RELATIONAL = RelationalSQL(
    unnest="SELECT rid, CAST(dbdl_pos AS BIGINT) AS i, CAST(dbdl_v AS DOUBLE) AS v "
           "FROM {src} LATERAL VIEW posexplode(dbdl_f) dbdl_e AS dbdl_pos, dbdl_v",
    collect=_ORDERED.format(value="CAST(dbdl_p.v AS FLOAT)"),
    # numpy's arg-max: the first NaN if any (numpy's argmax stops at a NaN), else the largest v, the
    # first i among equals: the least (rank, -v, i) — a NULL v ranks last (DuckDB's arg_max skips it)
    argmax="min(struct(CASE WHEN isnan(v) THEN 0 WHEN v IS NULL THEN 2 ELSE 1 END AS dbdl_n, -v AS dbdl_nv, "
           "i AS dbdl_i)).dbdl_i",
    real="FLOAT",
    length="size",
    # NULL for a NULL array (size(NULL) is -1 where spark.sql.ansi.enabled is off)
    nonzeros="CASE WHEN {a} IS NOT NULL THEN size(filter({a}, dbdl_x -> dbdl_x <> 0)) END",
    no_null_elements=_no_null_elements,
    fail=_fail,
    pack=_ORDERED.format(value="dbdl_p.v"),
    dot="aggregate(zip_with({a}, {b}, (dbdl_x, dbdl_y) -> dbdl_x * dbdl_y), CAST(0 AS DOUBLE), "
        "(dbdl_acc, dbdl_x) -> dbdl_acc + dbdl_x)",
    int_div="{a} DIV {b}",  # Spark's / on integers gives a double
    # ROW_NUMBER() OVER () would move every row to one task (and Spark asks for an order); a row
    # number within each of 1024 hash buckets, ordered by the vector, is the same on every read of
    # the numbered CTE (monotonically_increasing_id() would depend on the shuffle's order) and runs
    # in parallel: bucket × 2^32 + the row's number in it
    number="pmod(xxhash64(dbdl_f), 1024) * 4294967296 + row_number() OVER "
           "(PARTITION BY pmod(xxhash64(dbdl_f), 1024) ORDER BY dbdl_f)",
    # the same for a call of one column per feature, over its columns
    number_columns="pmod(xxhash64({columns}), 1024) * 4294967296 + row_number() OVER "
                   "(PARTITION BY pmod(xxhash64({columns}), 1024) ORDER BY {columns})",
)
