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
from typing import Any, Callable

import numpy as np

@dataclass(frozen=True)
class RelationalSQL:
    """The spellings of relation-centric SQL that differ between databases: data, not branches.
    Each backend declares one (``Backend.relational``); the compiler and the relation-centric
    strategy read only this."""

    #: SELECT (rid, i, v) from a CTE ``{src}`` of (rid, dbdl_f) rows: one row per array element
    unnest: str
    #: an aggregate of (i, v) rows back into one array, the output of predict_array
    collect: str
    #: an aggregate: the position of the largest v (ties: the first), the output of predict_class
    argmax: str
    #: the SQL type of one float32 value
    real: str
    #: the function giving an array's number of elements
    length: str
    #: (features) -> the condition that the array holds no NULL element (joins and dot products
    #: would otherwise skip the NULL or fail)
    no_null_elements: Callable[[Any], Any]
    #: (message text expression, features) -> an expression that raises the message as an error
    fail: Callable[[Any, Any], Any]
    #: blocked layout: an aggregate of a row's (i, v) into one array, and a dot product of two
    #: arrays ``{a}``, ``{b}``; None where the database has no such function (element layout only)
    pack: str | None = None
    dot: str | None = None
    #: decimal constants typed as double precision, so that arithmetic with the double precision
    #: activations finds the exact float8 operators (PostgreSQL: rather than an implicit cast that a
    #: user's numeric-by-double operator would beat)
    typed_decimals: bool = False
    #: integer division and remainder of two BIGINT expressions ``{a}``, ``{b}`` (position arithmetic:
    #: the index along one axis of a row-major per-row tensor)
    int_div: str = "{a} / {b}"
    int_mod: str = "{a} % {b}"
    #: the number of nonzero elements of an array ``{a}`` (sampled by the planner: a dense layer over a
    #: mostly-zero input joins only its nonzeros); None where not spelled (inputs taken as dense)
    nonzeros: str | None = None
    #: the aggregate AVG, as the database should be asked for it
    avg: str = "AVG"
    #: the number (rid) of each distinct feature vector ``dbdl_f``: unique per vector, and the same
    #: wherever the numbered CTE is read; None: ``ROW_NUMBER() OVER ()`` (Spark asks for an order)
    number: str | None = None
    #: a call of one column per feature (``predict('m', c0, c1, c2)``): the source CTE ``{src}`` has
    #: (rid, dbdl_f0, dbdl_f1, …) rows, and its (rid, i, v) rows are this, for each column ``{column}``
    #: at position ``{i}``, joined by UNION ALL
    unnest_column: str = "SELECT rid, CAST({i} AS BIGINT) AS i, CAST({column} AS DOUBLE PRECISION) AS v FROM {src}"
    #: the number (rid) of each distinct row of such columns ``{columns}`` (their names, comma
    #: separated): unique per row and the same wherever the numbered CTE is read (the rows are
    #: distinct, so the order is total; Oracle's and DM8's ROW_NUMBER need an ORDER BY)
    number_columns: str = "ROW_NUMBER() OVER (ORDER BY {columns})"

    @property
    def layouts(self) -> tuple[str, ...]:
        """The weight layouts this database can run ("blocked" needs a dot product of two arrays)."""
        return ("element", "blocked") if self.dot else ("element",)

    def exact_constants(self, tree):
        """``tree`` with its decimal constants typed (where ``typed_decimals``), in place."""
        import sqlglot.expressions as exp

        if not self.typed_decimals:
            return tree
        for literal in list(tree.find_all(exp.Literal)):
            if not literal.is_string and any(c in literal.this for c in ".eE"):
                literal.replace(exp.Cast(this=literal.copy(), to=exp.DataType.build("DOUBLE PRECISION")))
        return tree


def feature_columns(n: int) -> list[str]:
    """The columns of a numbered source CTE of a call of one column per feature: dbdl_f0 … dbdl_f{n-1}."""
    return [f"dbdl_f{i}" for i in range(n)]


@dataclass(frozen=True)
class Relation:
    name: str  # CTE holding (rid, i, v)
    width: int


@dataclass
class SQLBuilder:
    """Collects the CTEs of one model's relational plan."""

    #: the database's spellings
    spell: RelationalSQL
    #: table_for(kind, key, columns) -> the name of a table holding ``columns`` (created if missing)
    table_for: Callable[[str, dict[str, np.ndarray]], str]
    #: CTE names start with this (one builder per predict call in a statement)
    prefix: str = "dbdl_r"
    #: "element": one row per (input row, position, value); "blocked": dense layers take each
    #: row's activations as an array and each weight column as an array, joined by a dot product
    layout: str = "element"
    ctes: list[tuple[str, str]] = field(default_factory=list)
    #: (forest) -> "case" or "walk": how a tree ensemble compiles (the planner's choice for the rows
    #: it expects); None: the forest's own rule by size (ir/ops/_trees.py ``Forest.form``)
    tree_form: Callable[[Any], str] | None = None
    _layer: int = 0
    #: for a model of integer inputs: the DTypeMismatch message raised for an input value that is not
    #: a whole number (a fractional, NaN or infinite value from a DOUBLE[] column), as the UDF path does
    whole_numbers: str = ""
    #: 0: the source CTE holds one feature array per row (dbdl_f); n: a call of one column per
    #: feature, whose source CTE holds n columns dbdl_f0 … dbdl_f{n-1} (``RelationalSQL.unnest_column``)
    wide_columns: int = 0

    def _add(self, sql: str, width: int) -> Relation:
        name = f"{self.prefix}{len(self.ctes)}"
        self.ctes.append((name, sql))
        return Relation(name, width)

    def input(self, source_cte: str, width: int) -> Relation:
        """``source_cte`` has (rid, dbdl_f): one feature array per row; or, with ``wide_columns``, (rid,
        dbdl_f0, dbdl_f1, …): one number per column."""
        if self.wide_columns:
            x = self._add(" UNION ALL ".join(self.spell.unnest_column.format(src=source_cte, i=i, column=name)
                                             for i, name in enumerate(feature_columns(self.wide_columns))), width)
        else:
            x = self._add(self.spell.unnest.format(src=source_cte), width)
        if not self.whole_numbers:
            return x
        import sqlglot.expressions as exp

        fail = self.spell.fail(exp.Literal.string(f"dbdl.DTypeMismatch: {self.whole_numbers}"), exp.column("v")).sql()
        # NaN compares above every number in both databases: it fails the range test, as do infinities
        return self._add(f"SELECT rid, i, CASE WHEN v <> FLOOR(v) OR NOT (v > -1e300 AND v < 1e300) THEN {fail} "
                         f"ELSE v END AS v FROM {x.name}", width)

    def dense(self, x: Relation, weight: np.ndarray, bias: np.ndarray | None) -> Relation:
        self._layer += 1
        n_in, n_out = weight.shape
        if self.layout == "blocked":
            return self._dense_blocked(x, weight, bias)
        ii, jj = np.meshgrid(np.arange(n_in), np.arange(n_out), indexing="ij")
        keep = weight != 0  # zero weights need no rows: sparse layers cost what they hold
        w_table = self.table_for(f"w{self._layer}", {"i": ii[keep], "j": jj[keep], "w": weight[keep].astype(np.float64)})
        # activations equal to 0 contribute nothing either: a wide, mostly-zero input costs what it
        # holds (NaN <> 0 holds, so NaN still spreads; a NULL adds nothing to the SUM either way)
        y = self._add(f"SELECT x.rid, w.j AS i, SUM(x.v * w.w) AS v FROM {x.name} AS x JOIN {w_table} AS w "
                      f"ON w.i = x.i WHERE x.v <> 0 GROUP BY x.rid, w.j", n_out)
        if bias is None:  # the fill below still gives every row every output position (0 where nothing met)
            bias = np.zeros(n_out)
        b_table = self.table_for(f"b{self._layer}", {"j": np.arange(n_out), "b": bias.astype(np.float64)})
        # every output position exists even where all inputs met zero weights
        return self._add(f"SELECT r.rid, b.j AS i, COALESCE(y.v, 0) + b.b AS v FROM (SELECT DISTINCT rid FROM {x.name}) "
                         f"AS r CROSS JOIN {b_table} AS b LEFT JOIN {y.name} AS y ON y.rid = r.rid AND y.i = b.j",
                         n_out)

    def _dense_blocked(self, x: Relation, weight: np.ndarray, bias: np.ndarray | None) -> Relation:
        import pyarrow as pa

        n_in, n_out = weight.shape
        columns = np.ascontiguousarray(weight.T, dtype=np.float64)  # one row per output unit j
        offsets = pa.array(np.arange(0, (n_out + 1) * n_in, n_in, dtype=np.int32))
        table = self.table_for(f"wb{self._layer}", {
            "j": np.arange(n_out), "wcol": pa.ListArray.from_arrays(offsets, pa.array(columns.ravel())),
            "b": (bias if bias is not None else np.zeros(n_out)).astype(np.float64)})
        packed = self._add(f"SELECT rid, {self.spell.pack} AS vec FROM {x.name} GROUP BY rid", x.width)
        dot = self.spell.dot.format(a="x.vec", b="w.wcol")
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

    def elementwise(self, operands: list["Relation | np.ndarray"], template: str, width: int) -> Relation:
        """One value per (rid, i) from ``template`` over ``operands`` ({0}, {1}, … in order): each a
        relation of the same per-row width (joined on rid and i) or a constant broadcast over the
        row (a finite scalar inlined as a literal, else a table joined on i). At least one operand
        is a relation: the first drives the rows."""
        driver = next(k for k, o in enumerate(operands) if isinstance(o, Relation))
        terms, joins = [], []
        for k, operand in enumerate(operands):
            if isinstance(operand, Relation):
                terms.append(f"a{k}.v")
                if k != driver:
                    joins.append(f"JOIN {operand.name} AS a{k} ON a{k}.rid = a{driver}.rid AND a{k}.i = a{driver}.i")
                continue
            values = np.asarray(operand, dtype=np.float64).reshape(-1)
            if values.size == 1 and np.isfinite(values[0]):
                terms.append(f"({float(values[0])!r})")
                continue
            self._layer += 1
            table = self.table_for(f"c{self._layer}", {"i": np.arange(width),
                                                        "c": np.broadcast_to(values, (width,)).astype(np.float64)})
            terms.append(f"a{k}.c")
            joins.append(f"JOIN {table} AS a{k} ON a{k}.i = a{driver}.i")
        head = f"SELECT a{driver}.rid, a{driver}.i, {template.format(*terms)} AS v FROM {operands[driver].name} AS a{driver}"
        return self._add(" ".join([head, *joins]), width)

    def softmax(self, x: Relation, group: str | None = None) -> Relation:
        """Softmax over each row (or over the positions of a row with equal ``group``, an expression of i)."""
        w = f"PARTITION BY rid, {group}" if group else "PARTITION BY rid"
        shifted = self._add(f"SELECT rid, i, EXP(v - MAX(v) OVER ({w})) AS v FROM {x.name}", x.width)
        return self._add(f"SELECT rid, i, v / SUM(v) OVER ({w}) AS v FROM {shifted.name}", x.width)

    # -- position arithmetic: a per-row tensor of shape S is stored flattened, row-major, at i ----------

    def idiv(self, a: str, b: int) -> str:
        return a if b == 1 else "(" + self.spell.int_div.format(a=a, b=int(b)) + ")"

    def imod(self, a: str, b: int) -> str:
        return "(" + self.spell.int_mod.format(a=a, b=int(b)) + ")"

    def axis_index(self, shape, axis: int, i: str = "i") -> str:
        """The index along per-row axis ``axis`` of position ``i`` of a row-major tensor of ``shape``."""
        stride = int(np.prod(shape[axis + 1:])) if axis + 1 < len(shape) else 1
        e = self.idiv(i, stride)
        return e if axis == 0 else self.imod(e, int(shape[axis]))

    @staticmethod
    def flat_index(terms: list[tuple[str, int]]) -> str:
        """The position ``Σ index × stride`` of (index expression, stride) terms ("0" for none)."""
        parts = [e if s == 1 else f"{e} * {int(s)}" for e, s in terms if s != 0]
        return "(" + " + ".join(parts) + ")" if parts else "0"

    def positions(self, x: Relation, expr: str, width: int, where: str | None = None) -> Relation:
        """Each value moved to position ``expr`` (arithmetic on i), keeping the rows where ``where``."""
        return self._add(f"SELECT rid, {expr} AS i, v FROM {x.name}" + (f" WHERE {where}" if where else ""), width)

    def union(self, parts: list[Relation], width: int) -> Relation:
        return self._add(" UNION ALL ".join(f"SELECT rid, i, v FROM {p.name}" for p in parts), width)

    def reduce(self, x: Relation, key: str, aggregate: str, width: int) -> Relation:
        """One value per output position ``key`` (an expression of i): ``aggregate`` of v over its group."""
        if key == "0":
            return self._add(f"SELECT rid, 0 AS i, {aggregate} AS v FROM {x.name} GROUP BY rid", width)
        return self._add(f"SELECT rid, {key} AS i, {aggregate} AS v FROM {x.name} GROUP BY rid, {key}", width)

    def log_softmax(self, x: Relation, group: str | None = None) -> Relation:
        w = f"PARTITION BY rid, {group}" if group else "PARTITION BY rid"
        shifted = self._add(f"SELECT rid, i, v - MAX(v) OVER ({w}) AS v FROM {x.name}", x.width)
        return self._add(f"SELECT rid, i, v - LN(SUM(EXP(v)) OVER ({w})) AS v FROM {shifted.name}", x.width)

    def layer_norm(self, x: Relation, group: str, size: int, epsilon: float, scale: np.ndarray | None,
                   bias: np.ndarray | None) -> Relation:
        """(v - mean) / sqrt(variance + epsilon) over the positions of a row with equal ``group``, then
        × scale + bias, both of ``size`` values indexed by i % size (``group`` None: the whole row)."""
        w = f"PARTITION BY rid, {group}" if group else "PARTITION BY rid"
        centred = self._add(f"SELECT rid, i, v - AVG(v) OVER ({w}) AS v FROM {x.name}", x.width)
        normed = self._add(f"SELECT rid, i, v / SQRT(AVG(v * v) OVER ({w}) + {float(epsilon)!r}) AS v "
                           f"FROM {centred.name}", x.width)
        if scale is None and bias is None:
            return normed
        self._layer += 1
        table = self.table_for(f"ln{self._layer}", {
            "i": np.arange(size), "g": (scale if scale is not None else np.ones(size)).astype(np.float64),
            "b": (bias if bias is not None else np.zeros(size)).astype(np.float64)})
        at = "x.i" if size == x.width else self.imod("x.i", size)
        return self._add(f"SELECT x.rid, x.i, x.v * c.g + c.b AS v FROM {normed.name} AS x JOIN {table} AS c "
                         f"ON c.i = {at}", x.width)

    def positional(self, x: Relation, columns: dict[str, np.ndarray], template: str) -> Relation:
        """Each value with constants of its position: ``template`` names the value ``{v}`` and each
        of ``columns`` (one value per position) as ``{name}``."""
        self._layer += 1
        table = self.table_for(f"p{self._layer}", {"i": np.arange(x.width), **{
            k: np.broadcast_to(np.asarray(c, dtype=np.float64), (x.width,)).copy() for k, c in columns.items()}})
        expr = template.format(v="x.v", **{k: f"c.{k}" for k in columns})
        return self._add(f"SELECT x.rid, x.i, {expr} AS v FROM {x.name} AS x JOIN {table} AS c ON c.i = x.i", x.width)

    def lookup(self, x: Relation, table: np.ndarray, width: int) -> Relation:
        """An embedding lookup: each value of ``x`` is an index into the rows of ``table`` (rows ×
        dim); the row's ``dim`` values land at positions ``i × dim + d``. A negative index counts from
        the end; one outside ``[-rows, rows)`` raises ModelRuntimeError (as onnxruntime refuses it)."""
        import sqlglot.expressions as exp

        self._layer += 1
        rows, dim = table.shape
        tt, dd = np.meshgrid(np.arange(rows), np.arange(dim), indexing="ij")
        name = self.table_for(f"e{self._layer}", {"token": tt.reshape(-1), "d": dd.reshape(-1),
                                                  "w": table.reshape(-1)})
        message = exp.DPipe(
            this=exp.Literal.string(f"dbdl.ModelRuntimeError: an embedding lookup (Gather) got an index outside its "
                                    f"table of {rows} rows (valid: {-rows} to {rows - 1}); pass token ids below "
                                    f"{rows} — got index "),
            expression=exp.Cast(this=exp.Cast(this=exp.column("v"), to=exp.DataType.build("BIGINT")),
                                to=exp.DataType.build("TEXT")))
        fail = self.spell.fail(message, exp.column("v")).sql()
        index = self._add(f"SELECT rid, i, CAST(CASE WHEN v < {-rows} OR v >= {rows} OR v <> FLOOR(v) THEN {fail} "
                          f"WHEN v < 0 THEN v + {rows} ELSE v END AS BIGINT) AS v FROM {x.name}", x.width)
        at = "x.i" if dim == 1 else f"x.i * {dim} + e.d"
        return self._add(f"SELECT x.rid, {at} AS i, e.w AS v FROM {index.name} AS x JOIN {name} AS e "
                         f"ON e.token = x.v", width)

    def pick(self, x: Relation, source: np.ndarray, width: int) -> Relation:
        """Output position o takes the value at position ``source[o]`` of ``x`` (a position may be
        taken more than once): a join with a constant (i, o) table."""
        self._layer += 1
        table = self.table_for(f"g{self._layer}", {"i": np.asarray(source, dtype=np.int64),
                                                   "o": np.arange(len(source))})
        return self._add(f"SELECT x.rid, t.o AS i, x.v FROM {x.name} AS x JOIN {table} AS t ON t.i = x.i", width)

    # -- convolution and pooling: im2col over relations (ir/ops/_window.py makes the patch maps) ---------

    def conv(self, x: Relation, patch: dict[str, np.ndarray], kernel: dict[str, np.ndarray], n_out: int,
             bias: np.ndarray | None, width: int, complete: bool) -> Relation:
        """A convolution: ``patch`` (i: input position, o: output spatial position, ck: input channel ×
        kernel offset) and ``kernel`` (ck, co: output channel, w) as tables; output position
        ``co * n_out + o``. ``bias`` has one value per output position; where some output position
        meets no weight (not ``complete``) every position is filled, as a dense layer's."""
        self._layer += 1
        p_table = self.table_for(f"cp{self._layer}", patch)
        k_table = self.table_for(f"ck{self._layer}", kernel)
        y = self._add(f"SELECT x.rid, k.co * {int(n_out)} + p.o AS i, SUM(x.v * k.w) AS v FROM {x.name} AS x "
                      f"JOIN {p_table} AS p ON p.i = x.i JOIN {k_table} AS k ON k.ck = p.ck "
                      f"GROUP BY x.rid, k.co, p.o", width)
        if complete and bias is None:
            return y
        b_table = self.table_for(f"cb{self._layer}", {"i": np.arange(width), "b": (
            np.zeros(width) if bias is None else bias).astype(np.float64)})
        if complete:
            return self._add(f"SELECT y.rid, y.i, y.v + b.b AS v FROM {y.name} AS y JOIN {b_table} AS b ON b.i = y.i",
                             width)
        return self._add(f"SELECT r.rid, b.i, COALESCE(y.v, 0) + b.b AS v FROM (SELECT DISTINCT rid FROM {x.name}) "
                         f"AS r CROSS JOIN {b_table} AS b LEFT JOIN {y.name} AS y ON y.rid = r.rid AND y.i = b.i",
                         width)

    def conv_blocked(self, x: Relation, patch: dict[str, np.ndarray], kernel: dict[str, Any], n_out: int,
                     width: int) -> Relation:
        """A convolution in the blocked layout: each (row, output position, group)'s patch packed into
        an array ordered by ``patch["ck"]`` (every tap, padding included: ``i = -1`` reads a 0), then
        one dot product with each output channel's kernel array (``kernel``: co, g, wcol, b)."""
        self._layer += 1
        p_table = self.table_for(f"cpb{self._layer}", patch)
        k_table = self.table_for(f"ckb{self._layer}", kernel)
        padded = self._add(f"SELECT rid, i, v FROM {x.name} UNION ALL SELECT DISTINCT rid, -1 AS i, 0.0 AS v "
                           f"FROM {x.name}", x.width + 1)
        taps = self._add(f"SELECT x.rid, p.o, p.g, p.ck AS i, x.v FROM {padded.name} AS x JOIN {p_table} AS p "
                         f"ON p.i = x.i", width)
        packed = self._add(f"SELECT rid, o, g, {self.spell.pack} AS vec FROM {taps.name} GROUP BY rid, o, g", width)
        dot = self.spell.dot.format(a="x.vec", b="w.wcol")
        return self._add(f"SELECT x.rid, w.co * {int(n_out)} + x.o AS i, {dot} + w.b AS v FROM {packed.name} AS x "
                         f"JOIN {k_table} AS w ON w.g = x.g", width)

    def pool(self, x: Relation, patch: dict[str, np.ndarray], aggregate: str, width: int) -> Relation:
        """A pooling window: ``patch`` (i: input position, o: output position[, w: a weight]) as a
        table; ``aggregate`` over each output position's inputs: "MAX", or "SUM" of v × w."""
        self._layer += 1
        table = self.table_for(f"pl{self._layer}", patch)
        value = "MAX(x.v)" if aggregate == "MAX" else "SUM(x.v * p.w)"
        return self._add(f"SELECT x.rid, p.o AS i, {value} AS v FROM {x.name} AS x JOIN {table} AS p ON p.i = x.i "
                         f"GROUP BY x.rid, p.o", width)

    def argmax(self, x: Relation) -> Relation:
        """One value per row: the position of the row's largest value (ties: the first)."""
        return self._add(f"SELECT rid, 0 AS i, {self.spell.argmax} AS v FROM {x.name} GROUP BY rid", 1)

    def columns(self, x: Relation, positions: list[int]) -> str:
        """A CTE of (rid, f<k> for each of ``positions``): the row's values as columns (for
        expressions over several positions, such as a tree's CASE)."""
        cols = ", ".join(f"MAX(CASE WHEN i = {k} THEN v END) AS f{k}" for k in positions)
        return self._add(f"SELECT rid{', ' if cols else ''}{cols} FROM {x.name} GROUP BY rid", x.width).name

    def from_columns(self, table: str, expressions: list[str]) -> Relation:
        """(rid, i, v) rows from expressions over the columns of ``table`` (one per position)."""
        parts = [f"SELECT rid, {k} AS i, {e} AS v FROM {table}" for k, e in enumerate(expressions)]
        return self._add(" UNION ALL ".join(parts), len(expressions))

    def tree_walk(self, x: Relation, nodes: dict[str, np.ndarray], roots: dict[str, np.ndarray],
                  leaves: dict[str, np.ndarray], bases: dict[str, np.ndarray], depth: int, cond: str,
                  divisor: float = 1.0) -> Relation:
        """A forest as a walk: every row starts at every tree's root (``roots``: k) and steps
        ``depth`` times through ``nodes`` (k, feature f, threshold th, yes, no, …; a leaf steps to
        itself) by ``cond`` (an expression of ``x.v``, the feature's value, and the node ``n``);
        then the weights of the leaves it ends in (``leaves``: k, output position j, w) are summed
        per j, divided by ``divisor``, and each position's base value (``bases``: j, b) added."""
        self._layer += 1
        n_table = self.table_for(f"tn{self._layer}", nodes)
        r_table = self.table_for(f"tr{self._layer}", roots)
        l_table = self.table_for(f"tl{self._layer}", leaves)
        b_table = self.table_for(f"tb{self._layer}", bases)
        rows = self._add(f"SELECT DISTINCT rid FROM {x.name}", 1)
        # one key per (row, position): the value joins the (row, node) pairs only, so no planner can
        # join the values to the nodes first (every row's values × every node reading that position)
        width = max(1, x.width)
        keyed = self._add(f"SELECT rid * {width} + i AS key, v FROM {x.name}", 1)
        at = self._add(f"SELECT r.rid, t.k FROM {rows.name} AS r CROSS JOIN {r_table} AS t", 1)
        for _ in range(depth):
            at = self._add(f"SELECT s.rid, CASE WHEN {cond} THEN n.yes ELSE n.no END AS k FROM {at.name} AS s "
                           f"JOIN {n_table} AS n ON n.k = s.k JOIN {keyed.name} AS x ON x.key = s.rid * {width} + n.f",
                           1)
        summed = self._add(f"SELECT s.rid, l.j AS i, SUM(l.w) AS v FROM {at.name} AS s JOIN {l_table} AS l "
                           f"ON l.k = s.k GROUP BY s.rid, l.j", 1)
        scale = "" if divisor == 1.0 else f" / {divisor!r}"
        return self._add(f"SELECT r.rid, b.j AS i, COALESCE(y.v, 0.0){scale} + b.b AS v FROM {rows.name} AS r "
                         f"CROSS JOIN {b_table} AS b LEFT JOIN {summed.name} AS y ON y.rid = r.rid AND y.i = b.j",
                         len(bases["j"]))

    def output(self, x: Relation, kind: str) -> str:
        """The SELECT giving (rid, prediction) for predict (scalar), predict_array or predict_class."""
        value = {"array": self.spell.collect, "class": self.spell.argmax,
                 "scalar": f"CAST(MAX(v) AS {self.spell.real})"}[kind]
        return f"SELECT rid, {value} AS prediction FROM {x.name} GROUP BY rid"


def compile_graph(graph, builder: SQLBuilder, source_cte: str, output: int = 0) -> "Relation":
    """Add the CTEs that compute ``graph`` over (rid, f) rows of ``source_cte``; the relation of its
    output number ``output``."""
    from ..errors import Error, StrategyUnavailable

    ok, why = graph.relational
    if not ok:
        raise StrategyUnavailable(f"relation-centric execution cannot run this model: {why}")
    (name, shape), = graph.inputs
    relations: dict[str, Relation] = {name: builder.input(source_cte, int(np.prod(shape)) if shape else 1)}
    missing: dict[str, str] = {}  # outputs without an SQL form -> why
    for node in graph.nodes:
        lacking = [i for i in node.inputs if i in missing]
        if lacking:  # a node after an output with no SQL form has none either
            missing.update((o, missing[lacking[0]]) for o in node.outputs)
            continue
        args = [relations[i] if i else None for i in node.inputs]
        try:
            if node.op.n_outputs > 1:
                for name, rel in zip(node.outputs, node.op.to_sql(builder, args, node.shape)):
                    if isinstance(rel, str):
                        missing[name] = rel
                    else:
                        relations[name] = rel
            else:
                relations[node.outputs[0]] = node.op.to_sql(builder, args, node.shape)
        except Error:
            raise
        except Exception as exc:  # every compile failure is a dbdl error naming the operator and the fix
            raise StrategyUnavailable(f"operator {node.op.op_type} cannot be compiled to SQL ({exc}); "
                                      "use strategy='udf'") from None
    name = graph.outputs[output]
    if name in missing:  # the caller (strategies/relation.py) names the model and the fix
        raise NotImplementedError(missing[name])
    return relations[name]
