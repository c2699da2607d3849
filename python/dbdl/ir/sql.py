"""Relation-centric compilation: a model as SQL over (rid, i, v) relations.

Every per-row tensor is a relation with one row per value: ``rid`` (which input row), ``i``
(which position, from 0) and ``v``. A dense layer is a join of the activations with the weight
relation ``(i, j, w)`` and a ``SUM … GROUP BY rid, j``; activations are scalar expressions; softmax
is a window over the row. Weights live in tables (written on first use); the statements are
parsed by sqlglot and rendered for the backend's dialect, so one compiler serves every dialect.
Identifiers here are all generated (CTE names, weight tables named by the model's hash).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# the few spellings that differ between dialects: data, not branches
DIALECT_SQL = {
    "duckdb": {
        "unnest": "SELECT rid, CAST(generate_subscripts(CAST(dbdl_f AS DOUBLE[]), 1) - 1 AS BIGINT) AS i, "
                  "unnest(CAST(dbdl_f AS DOUBLE[])) AS v FROM {src}",
        "collect": "CAST(list(v ORDER BY i) AS FLOAT[])",
        "argmax": "arg_max(i, v)",
        "real": "FLOAT",
        # blocked layout: a row's activations as one array, a weight column as one array
        "pack": "list(v ORDER BY i)",
        "dot": "list_dot_product({a}, {b})",
        "length": "len",
    },
    # PostgreSQL: the polymorphic built-ins carry their schema, because an exact overload a user
    # created (public.unnest(real[])) would beat them wherever it sits on the caller's path
    "postgres": {
        "unnest": "SELECT s.rid, u.i - 1 AS i, CAST(u.v AS DOUBLE PRECISION) AS v "
                  "FROM {src} AS s, pg_catalog.unnest(s.dbdl_f) WITH ORDINALITY AS u(v, i)",
        "collect": "CAST(pg_catalog.array_agg(v ORDER BY i) AS REAL[])",  # PostgreSQL arrays have no fixed length
        "argmax": "(pg_catalog.array_agg(i ORDER BY v DESC, i))[1]",
        "real": "REAL",
        "length": "pg_catalog.cardinality",
    },
}


def no_null_elements(dialect: str, features):
    """A sqlglot condition: the array ``features`` holds no NULL element. Joins and dot products
    would otherwise skip the NULL (PostgreSQL's SUM) or fail (DuckDB's list_dot_product)."""
    import sqlglot.expressions as exp

    if dialect == "duckdb":  # list_count counts the non-NULL elements
        return exp.EQ(this=exp.Anonymous(this="list_count", expressions=[features.copy()]),
                      expression=exp.Anonymous(this="len", expressions=[features.copy()]))
    # array_position finds NULL with IS NOT DISTINCT FROM
    return exp.Is(this=exp.Anonymous(this="pg_catalog.array_position", expressions=[features.copy(), exp.Null()]),
                  expression=exp.Null())


def exact_constants(dialect: str, tree):
    """PostgreSQL: decimal constants (numeric) typed as double precision, so that arithmetic with the
    double precision activations finds pg_catalog's exact float8 operators rather than an implicit
    cast that a user's numeric-by-double operator would beat. Other dialects: unchanged."""
    import sqlglot.expressions as exp

    if dialect != "postgres":
        return tree
    for literal in list(tree.find_all(exp.Literal)):
        if not literal.is_string and any(c in literal.this for c in ".eE"):
            literal.replace(exp.Cast(this=literal.copy(), to=exp.DataType.build("DOUBLE PRECISION")))
    return tree


@dataclass(frozen=True)
class Relation:
    name: str  # CTE holding (rid, i, v)
    width: int


@dataclass
class SQLBuilder:
    """Collects the CTEs of one model's relational plan."""

    dialect: str
    #: table_for(kind, key, columns) -> the name of a table holding ``columns`` (created if missing)
    table_for: Callable[[str, dict[str, np.ndarray]], str]
    #: CTE names start with this (one builder per predict call in a statement)
    prefix: str = "dbdl_r"
    #: "element": one row per (input row, position, value); "blocked": dense layers take each
    #: row's activations as an array and each weight column as an array, joined by a dot product
    layout: str = "element"
    ctes: list[tuple[str, str]] = field(default_factory=list)
    _layer: int = 0

    def _add(self, sql: str, width: int) -> Relation:
        name = f"{self.prefix}{len(self.ctes)}"
        self.ctes.append((name, sql))
        return Relation(name, width)

    def input(self, source_cte: str, width: int) -> Relation:
        """``source_cte`` has (rid, dbdl_f): one feature array per row."""
        return self._add(DIALECT_SQL[self.dialect]["unnest"].format(src=source_cte), width)

    def dense(self, x: Relation, weight: np.ndarray, bias: np.ndarray | None) -> Relation:
        self._layer += 1
        n_in, n_out = weight.shape
        if self.layout == "blocked":
            return self._dense_blocked(x, weight, bias)
        ii, jj = np.meshgrid(np.arange(n_in), np.arange(n_out), indexing="ij")
        keep = weight != 0  # zero weights need no rows: sparse layers cost what they hold
        w_table = self.table_for(f"w{self._layer}", {"i": ii[keep], "j": jj[keep], "w": weight[keep].astype(np.float64)})
        y = self._add(f"SELECT x.rid, w.j AS i, SUM(x.v * w.w) AS v FROM {x.name} AS x JOIN {w_table} AS w "
                      f"ON w.i = x.i GROUP BY x.rid, w.j", n_out)
        if bias is None:
            return y
        b_table = self.table_for(f"b{self._layer}", {"j": np.arange(n_out), "b": bias.astype(np.float64)})
        # every output position exists even where all inputs met zero weights
        return self._add(f"SELECT r.rid, b.j AS i, COALESCE(y.v, 0) + b.b AS v FROM (SELECT DISTINCT rid FROM {x.name}) "
                         f"AS r CROSS JOIN {b_table} AS b LEFT JOIN {y.name} AS y ON y.rid = r.rid AND y.i = b.j",
                         n_out)

    def _dense_blocked(self, x: Relation, weight: np.ndarray, bias: np.ndarray | None) -> Relation:
        import pyarrow as pa

        spell = DIALECT_SQL[self.dialect]
        n_in, n_out = weight.shape
        columns = np.ascontiguousarray(weight.T, dtype=np.float64)  # one row per output unit j
        offsets = pa.array(np.arange(0, (n_out + 1) * n_in, n_in, dtype=np.int32))
        table = self.table_for(f"wb{self._layer}", {
            "j": np.arange(n_out), "wcol": pa.ListArray.from_arrays(offsets, pa.array(columns.ravel())),
            "b": (bias if bias is not None else np.zeros(n_out)).astype(np.float64)})
        packed = self._add(f"SELECT rid, {spell['pack']} AS vec FROM {x.name} GROUP BY rid", x.width)
        dot = spell["dot"].format(a="x.vec", b="w.wcol")
        return self._add(f"SELECT x.rid, w.j AS i, {dot} + w.b AS v FROM {packed.name} AS x CROSS JOIN {table} AS w",
                         n_out)

    def scalar(self, x: Relation, template: str) -> Relation:
        return self._add(f"SELECT rid, i, {template.format(v='v')} AS v FROM {x.name}", x.width)

    def with_constant(self, x: Relation, constant: np.ndarray, op: str, constant_first: bool, width: int) -> Relation:
        self._layer += 1
        table = self.table_for(f"c{self._layer}", {"i": np.arange(len(constant)), "c": constant.astype(np.float64)})
        expr = f"c.c {op} x.v" if constant_first else f"x.v {op} c.c"
        return self._add(f"SELECT x.rid, x.i, {expr} AS v FROM {x.name} AS x JOIN {table} AS c ON c.i = x.i", width)

    def combine(self, a: Relation, b: Relation, op: str) -> Relation:
        return self._add(f"SELECT a.rid, a.i, a.v {op} b.v AS v FROM {a.name} AS a JOIN {b.name} AS b "
                         f"ON b.rid = a.rid AND b.i = a.i", a.width)

    def softmax(self, x: Relation) -> Relation:
        shifted = self._add(f"SELECT rid, i, EXP(v - MAX(v) OVER (PARTITION BY rid)) AS v FROM {x.name}", x.width)
        return self._add(f"SELECT rid, i, v / SUM(v) OVER (PARTITION BY rid) AS v FROM {shifted.name}", x.width)

    def output(self, x: Relation, kind: str) -> str:
        """The SELECT giving (rid, prediction) for predict (scalar), predict_array or predict_class."""
        spell = DIALECT_SQL[self.dialect]
        value = {"array": spell["collect"], "class": spell["argmax"],
                 "scalar": f"CAST(MAX(v) AS {spell['real']})"}[kind]
        return f"SELECT rid, {value} AS prediction FROM {x.name} GROUP BY rid"


def layouts(dialect: str) -> tuple[str, ...]:
    """The weight layouts a dialect can run ("blocked" needs a dot product of two arrays)."""
    return ("element", "blocked") if "dot" in DIALECT_SQL[dialect] else ("element",)


def compile_graph(graph, builder: SQLBuilder, source_cte: str) -> "Relation":
    """Add the CTEs that compute ``graph`` over (rid, f) rows of ``source_cte``; the output relation."""
    ok, why = graph.relational
    if not ok:
        raise NotImplementedError(why)
    (name, shape), = graph.inputs
    relations: dict[str, Relation] = {name: builder.input(source_cte, int(np.prod(shape)) if shape else 1)}
    for node in graph.nodes:
        args = [relations[i] if i else None for i in node.inputs]
        relations[node.outputs[0]] = node.op.to_sql(builder, args, node.shape)
    return relations[graph.outputs[0]]
