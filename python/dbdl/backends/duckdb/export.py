"""``train_export`` on DuckDB, which has no procedures: the client runs the rules of
``dbdl_udf.datasets.export`` with the sink below, in one transaction."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import duckdb
import numpy as np
import pyarrow as pa

from dbdl_udf import datasets
from dbdl_udf.arrowio import array_matrix, binary_rows, column_numbers, list_ragged
from dbdl_udf.datasets import DatasetInfo, ExportSpec, Ragged, dense_rows
from dbdl_udf.sqltext import quote_qualified

from ..base import export_query


def train_export(backend: Any, spec: ExportSpec, progress: Callable[[int], None] | None = None) -> DatasetInfo:
    # DuckDB's own parser has the last word on how many statements it would run
    try:
        statements = len(backend.con.extract_statements(spec.query))
    except duckdb.Error:  # DuckDB's parse errors: sqlglot's verdict stands
        statements = None
    export_query(spec, backend.dialect, statements)
    sink = DuckDBSink(backend)
    with backend.transaction():
        try:
            return datasets.export(sink, spec, progress=progress)
        finally:
            sink.close()


_DUCKDB_TYPES = {"float32": "FLOAT", "float64": "DOUBLE", "uint8": "UTINYINT", "int8": "TINYINT",
                 "int16": "SMALLINT", "int32": "INTEGER", "int64": "BIGINT"}


_INTS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
         "UHUGEINT", "BOOLEAN"}


_FLOATS = {"FLOAT", "DOUBLE", "DECIMAL"}


_EXPORT_ROWS = 4096


_stages = itertools.count(1)


class DuckDBSink:
    """dbdl_udf.datasets.export's DuckDB backend: the query read as Arrow batches, staged in a
    temporary table, then written in row-id order (so that a range of row ids is a range of
    storage, which DuckDB's zone maps skip to)."""

    schema = "dbdl"
    #: one row per sample: DuckDB reads FLOAT[n] columns by range at ~2.5 GB/s, its large BLOBs slowly
    blocked = False

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.con = backend.con
        self.catalog = backend
        self._stage: str | None = None
        #: a nested array column's dimensions (FLOAT[32][32][3] -> (3, 32, 32)), else None
        self.dims: tuple[int, ...] | None = None

    def dataset(self, name: str) -> DatasetInfo | None:
        found = self.catalog.fetchall("SELECT name FROM dbdl.datasets WHERE name = ?", (name,))
        return datasets.get(self.catalog, name) if found else None

    def record(self, row: dict) -> None:
        datasets.record(self.catalog, row)

    def _run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.backend.execute(sql, params)

    def describe(self, query: str) -> list[tuple[str, str, str]]:
        import duckdb

        try:
            # the query streams from a cursor of its own while the backend's connection writes
            self._reader = self.con.cursor()
            self._relation = self._reader.sql(query)
        except duckdb.Error as exc:
            raise self.backend._translate(exc) from exc
        out = []
        for name, type_ in zip(self._relation.columns, self._relation.types):
            text = str(type_)
            base = text.split("[")[0].split("(")[0]
            if "[" in text:
                kind = "array" if base in _INTS | _FLOATS else "other"
            elif base == "BLOB":
                kind = "bytes"
            else:
                kind = "int" if base in _INTS else "float" if base in _FLOATS else "other"
            out.append((name, kind, text))
        return out

    def batches(self, query, features, label, kinds, ragged=False):
        import duckdb

        relation = self._relation.select(*[duckdb.ColumnExpression(c) for c in [*features, label]])
        try:
            reader = relation.to_arrow_reader(_EXPORT_ROWS)
            pos = 0
            for batch in reader:
                n = batch.num_rows
                kind = kinds[features[0]]
                if kind == "bytes":
                    rows, valid = binary_rows(batch.column(0))
                    matrix = rows if ragged else dense_rows(rows, valid, pos)
                elif kind == "array" and ragged:
                    matrix, valid = list_ragged(batch.column(0), pos)
                elif kind == "array":
                    matrix, valid = array_matrix(batch.column(0), pos)
                    self.dims = _fixed_dims(batch.schema.field(0).type)
                else:
                    cols = [column_numbers(batch.column(i)) for i in range(len(features))]
                    matrix = np.column_stack([c for c, _ in cols]) if cols else np.zeros((n, 0))
                    valid = np.logical_and.reduce([v for _, v in cols])
                labels, labels_valid = column_numbers(batch.column(len(features)))
                pos += n
                yield matrix, valid, labels, labels_valid
        except duckdb.Error as exc:
            raise self.backend._translate(exc) from exc
        finally:
            self._relation = None

    def stage(self, first_pos, features, labels, label_dtype):
        if self._stage is None:
            self._stage = f"dbdl_stage_{next(_stages)}"
            element = _DUCKDB_TYPES[features.dtype.name]
            label_sql = "BIGINT" if label_dtype == "int64" else "FLOAT"
            self._features_type = f"{element}[]" if isinstance(features, Ragged) else f"{element}[{features.shape[1]}]"
            self._run(f"CREATE TEMP TABLE {self._stage} (pos BIGINT, features {self._features_type}, "
                      f"label {label_sql})")
        if isinstance(features, Ragged):
            n = len(features)
            column = pa.LargeListArray.from_arrays(pa.array(features.offsets), pa.array(features.values))
        else:
            n, width = features.shape
            column = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), width)
        data = pa.table({"pos": np.arange(first_pos, first_pos + n, dtype=np.int64), "features": column,
                         "label": labels})
        self._insert(f"INSERT INTO {self._stage} SELECT pos, CAST(features AS {self._features_type}), label FROM "
                     "{view}", data)

    def finish(self, table, row_ids, codes, width, dtype, label_dtype, block_rows=0):
        table = quote_qualified(table)  # a name the catalog will hold: quoted like every such name
        label_sql = "BIGINT" if label_dtype == "int64" else "FLOAT"
        size = "" if width is None else str(int(width))  # None: variable-length rows (a LIST column)
        self._run(f"CREATE TABLE {table} (row_id BIGINT PRIMARY KEY, features {_DUCKDB_TYPES[dtype]}[{size}] "
                  f"NOT NULL, label {label_sql} NOT NULL, split VARCHAR NOT NULL)")
        split_names = np.array(datasets.SPLITS, dtype=object)[codes]
        assignment = pa.table({"pos": np.arange(len(row_ids), dtype=np.int64), "row_id": row_ids,
                               "split": pa.array(split_names, pa.string())})
        self._insert(f"INSERT INTO {table} SELECT a.row_id, s.features, s.label, a.split FROM {self._stage} s "
                     "JOIN {view} a ON a.pos = s.pos ORDER BY a.row_id", assignment)
        self._run(f"DROP TABLE {self._stage}")
        self._stage = None

    def _insert(self, sql: str, data: pa.Table) -> None:
        view = f"dbdl_arrow_{id(data):x}"
        self.con.register(view, data)
        try:
            self._run(sql.replace("{view}", view))
        finally:
            self.con.unregister(view)

    def ddl(self, sql: str) -> None:
        self._run(sql)

    def share(self, relation: str) -> None:
        pass

    def close(self) -> None:
        self._relation = None
        reader, self._reader = getattr(self, "_reader", None), None
        if reader is not None:
            reader.close()


def _fixed_dims(type_: pa.DataType) -> tuple[int, ...] | None:
    """The dimensions of a nested fixed-size array type, outermost first (DuckDB writes them
    innermost first: FLOAT[32][32][3] is (3, 32, 32)); None for a flat or variable-size one."""
    dims = []
    while pa.types.is_fixed_size_list(type_):
        dims.append(type_.list_size)
        type_ = type_.value_type
    nested = pa.types.is_list(type_) or pa.types.is_large_list(type_)
    return tuple(dims) if len(dims) > 1 and not nested else None
