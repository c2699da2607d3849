"""``train_export`` on Spark, which has no procedures: the client (the driver) runs the rules of
``dbdl_udf.datasets.export`` with the sink below and Spark writes the dataset table as parquet.

The source query runs in Spark and its rows come to the driver as Arrow (so every rule — NULLs,
ragged rows, dtypes, the seeded split, row ids — is the one DuckDB and PostgreSQL apply); the
checked rows, in row-id order, go back to Spark, which writes the managed table
``<data_database>.ds_<name>_v<version>``: range-partitioned by ``row_id`` into files of at most
:data:`FILE_BYTES`, each file one contiguous run of row ids, sorted, with row groups of about
:data:`ROW_GROUP_BYTES` whose ``row_id`` statistics let a reader skip to a range. Beside the files
the driver writes :data:`MANIFEST` (the export's uid, every file's and row group's row-id range),
which readers use instead of listing the folder and by which they tell an old version from a new one
of the same name. The view ``<data_database>.ds_<name>`` points at the current table.

Spark SQL has no transactions, so all-or-nothing is done by hand: the new table is written under its
own new name, the catalog row goes into the catalog database in one transaction, and only after that
commits is the old version's table dropped; a failure anywhere before drops the new table (and its
folder) and puts the view back, so nothing is left behind and the previous version stays current.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
import sqlglot.expressions as exp

from dbdl_udf import datasets
from dbdl_udf.arrowio import array_matrix, binary_rows, column_numbers, is_list_type, list_ragged
from dbdl_udf.datasets import DatasetInfo, ExportSpec, Ragged, dense_rows

from ...errors import QueryError
from ..base import export_query
from . import reader as files

#: the most bytes of one parquet file of a dataset table (Spark's range partitions)
FILE_BYTES = 128 << 20
#: about the bytes of one row group (parquet.block.size): what a range read of a few rows costs at most
ROW_GROUP_BYTES = 1 << 20
#: the file beside the parquet files that names them and their row-id ranges (Spark skips names
#: starting with "_" when it reads the table)
MANIFEST = files.MANIFEST
#: rows per Arrow batch handed to the export's checks
_EXPORT_ROWS = 4096

#: Spark's element type of each stored dtype; uint8 (images) is BINARY, one byte a value, since Spark
#: has no unsigned byte type (as PostgreSQL's bytea)
_SPARK_ELEMENTS = {"float32": pa.float32(), "float64": pa.float64(), "int8": pa.int8(), "int16": pa.int16(),
                   "int32": pa.int32(), "int64": pa.int64()}


def train_export(backend: Any, spec: ExportSpec, progress: Callable[[int], None] | None = None) -> DatasetInfo:
    export_query(spec, backend.dialect)
    sink = SparkSink(backend)
    catalog = backend.catalog
    try:
        with catalog.transaction():
            info = datasets.export(sink, spec, progress=progress)
    except BaseException:
        sink.undo()
        raise
    sink.committed()
    return info


def drop_dataset(backend: Any, name: str) -> DatasetInfo:
    """Drop a dataset's view and table (and the table's folder) and delete its catalog row, the
    latter inside the caller's transaction on ``backend.catalog``."""
    info = datasets.get(backend.catalog, name)
    datasets.forget(backend.catalog, info.name)
    backend.execute(f"DROP VIEW IF EXISTS {_spark_name(info.view)}")
    _drop_table(backend, info.table)
    return info


class SparkSink:
    """dbdl_udf.datasets.export's Spark backend: the query read as Arrow batches in the driver, the
    checked rows kept there, then written by Spark in row-id order (see the module's docstring)."""

    #: one row per sample: parquet's row groups already hold many samples each
    blocked = False

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.spark = backend.spark
        self.catalog = backend.catalog
        self.schema = backend.data_schema.lower()
        self.dims: tuple[int, ...] | None = None
        self._features: list[np.ndarray | Ragged] = []
        self._labels: list[np.ndarray] = []
        self._frame: Any = None
        self._written: str | None = None  # the table this export created
        self._old_view: str | None = None  # the view's former definition (its table), to put back
        self._view_replaced = False
        self._drop_after: list[str] = []
        self.database_location = files.database_location(self.spark, self.schema)

    # -- the catalog ------------------------------------------------------------------------------

    def dataset(self, name: str) -> DatasetInfo | None:
        found = self.catalog.fetchall("SELECT name FROM dbdl.datasets WHERE name = ?", (name,))
        return datasets.get(self.catalog, name) if found else None

    def record(self, row: dict) -> None:
        # the manifest names the export's uid: readers of another export of this table name refuse it
        files.write_manifest(self._location(row["table_name"]), row, self._layout)
        datasets.record(self.catalog, row, schemas=(self.schema,))

    # -- reading the query ----------------------------------------------------------------------------

    def describe(self, query: str) -> list[tuple[str, str, str]]:
        self._frame = self.backend._sql(query)
        out = []
        for field in self._frame.schema.fields:
            out.append((field.name, _kind(field.dataType), field.dataType.simpleString()))
        return out

    def batches(self, query, features, label, kinds, ragged=False):
        from pyspark.sql import functions as F

        frame = self._frame.select(*[F.col("`" + c.replace("`", "``") + "`") for c in [*features, label]])
        try:
            table = frame.toArrow()
        except Exception as exc:
            raise self.backend._translate(exc) from exc
        finally:
            self._frame = None
        pos = 0
        for batch in table.to_batches(max_chunksize=_EXPORT_ROWS):
            n = batch.num_rows
            kind = kinds[features[0]]
            if kind == "bytes":
                rows, valid = binary_rows(batch.column(0))
                matrix = rows if ragged else dense_rows(rows, valid, pos)
            elif kind == "array" and ragged:
                matrix, valid = list_ragged(batch.column(0), pos, "array<int>")
            elif kind == "array":
                matrix, valid = array_matrix(batch.column(0), pos)
                dims = _nested_dims(batch.column(0), valid)
                self.dims = dims if pos == 0 or self.dims == dims else None
            else:
                cols = [column_numbers(batch.column(i)) for i in range(len(features))]
                matrix = np.column_stack([c for c, _ in cols]) if cols else np.zeros((n, 0))
                valid = np.logical_and.reduce([v for _, v in cols])
            labels, labels_valid = column_numbers(batch.column(len(features)))
            pos += n
            yield matrix, valid, labels, labels_valid

    def stage(self, first_pos, features, labels, label_dtype):
        self._features.append(features)
        self._labels.append(labels)

    # -- writing ----------------------------------------------------------------------------------------

    def finish(self, table, row_ids, codes, width, dtype, label_dtype, block_rows=0):
        n = len(row_ids)
        position = np.empty(n, dtype=np.int64)  # the source position of each row id
        position[row_ids] = np.arange(n, dtype=np.int64)
        element = _SPARK_ELEMENTS.get(dtype)
        if element is None:  # uint8: BINARY
            if width is None:
                rows = Ragged.concat(self._features).take(position)
            else:
                matrix = np.concatenate(self._features) if len(self._features) > 1 else self._features[0]
                rows = Ragged(np.ascontiguousarray(matrix[position]).reshape(-1),
                              np.arange(0, (n + 1) * width, width, dtype=np.int64))
            column = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [
                None, pa.py_buffer(rows.offsets - rows.offsets[0]),
                pa.py_buffer(np.ascontiguousarray(rows.values, dtype=np.uint8))]).cast(pa.binary())
        elif width is None:  # variable-length rows
            rows = Ragged.concat(self._features).take(position)
            values = pa.array(rows.values.astype(element.to_pandas_dtype(), copy=False))
            column = pa.LargeListArray.from_arrays(pa.array(rows.offsets), values).cast(pa.list_(element))
        else:
            matrix = np.concatenate(self._features) if len(self._features) > 1 else self._features[0]
            flat = np.ascontiguousarray(matrix[position]).reshape(-1).astype(element.to_pandas_dtype(), copy=False)
            offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32) if n * width < 2**31 else None
            column = (pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)) if offsets is not None else
                      pa.LargeListArray.from_arrays(pa.array(np.arange(0, (n + 1) * width, width)), pa.array(flat))
                      .cast(pa.list_(element)))
        self._features.clear()
        labels = np.concatenate(self._labels)[position]
        self._labels.clear()
        split_names = np.array(datasets.SPLITS, dtype=object)[codes[position]]
        data = pa.table({"row_id": pa.array(np.arange(n, dtype=np.int64)), "features": column,
                         "label": pa.array(labels.astype(np.int64 if label_dtype == "int64" else np.float32)),
                         "split": pa.array(split_names, pa.string())})
        row_bytes = (width or datasets.RAGGED_ROW_VALUES) * np.dtype(dtype).itemsize + 16
        parts = max(1, min(n, math.ceil(n * row_bytes / FILE_BYTES)))
        location = self._location(table)
        schema, _, name = table.partition(".")
        if self.spark.catalog.tableExists(name, schema):
            raise QueryError(f"table {table} already exists: another export of dataset {name[3:].rsplit('_v', 1)[0]!r} "
                             "is under way (or it was made outside dbdl); try again once it is done")
        files.remove_folder(self.spark, location)  # a folder left by a table Spark forgot (its catalog restarted)
        self._written = table
        try:
            frame = self.spark.createDataFrame(data)
            (frame.repartitionByRange(parts, "row_id").sortWithinPartitions("row_id").write.format("parquet")
             .option("parquet.block.size", str(int(ROW_GROUP_BYTES))).mode("errorifexists")
             .saveAsTable(_spark_name(table)))
        except Exception as exc:
            raise self.backend._translate(exc) from exc
        actual = self.spark.sql(f"DESCRIBE TABLE EXTENDED {_spark_name(table)}").collect()
        where = next((r[1] for r in actual if r[0] == "Location"), None)
        if where is not None and files.filesystem(where)[1] != files.filesystem(location)[1]:
            raise QueryError(f"Spark wrote dataset table {table} to {where}, not into its database's folder "
                             f"{location}; dbdl's readers look there — give the data database its default location")
        self._layout = files.layout(location, n)

    def blocked_view(self, table, block_rows, row_bytes, counts):  # pragma: no cover - blocked is False
        raise NotImplementedError

    def ddl(self, sql: str) -> None:
        statement = sqlglot.parse_one(sql, read="duckdb")  # export() quotes names with double quotes
        if isinstance(statement, exp.Drop) and statement.kind == "TABLE":
            # the old version's table goes only once the new catalog row is committed
            for target in statement.args.get("tables") or [statement.this]:
                self._drop_after.append(".".join(p.name for p in target.parts))
            return
        if isinstance(statement, exp.Create) and statement.kind == "VIEW":
            view = ".".join(p.name for p in statement.this.parts)
            old = self.dataset(view.partition(".")[2][len("ds_"):])  # still the previous catalog row
            self._old_view = old.table if old is not None else None
            self._view_name = view
            self._view_replaced = True
        self.backend.execute(statement.sql(dialect="spark"))

    def share(self, relation: str) -> None:
        pass

    # -- all or nothing ---------------------------------------------------------------------------

    def undo(self) -> None:
        """After a failure: the view back where it pointed, the new table and its folder gone."""
        self._features.clear()
        self._labels.clear()
        if self._view_replaced:
            try:
                if self._old_view:
                    self.backend.execute(f"CREATE OR REPLACE VIEW {_spark_name(self._view_name)} AS SELECT row_id, "
                                         f"features, label, split FROM {_spark_name(self._old_view)}")
                else:
                    self.backend.execute(f"DROP VIEW IF EXISTS {_spark_name(self._view_name)}")
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
        if self._written is not None:
            try:
                _drop_table(self.backend, self._written)
            except Exception:  # noqa: BLE001
                pass

    def committed(self) -> None:
        """After the catalog row committed: the previous version's table goes (a failure here leaves
        only that table behind, which the next export or drop removes; the export stands)."""
        import warnings

        for table in self._drop_after:
            try:
                _drop_table(self.backend, table)
            except Exception as exc:  # noqa: BLE001
                warnings.warn(f"dbdl: the previous version's table {table} could not be dropped: {exc}", stacklevel=3)

    def _location(self, table: str) -> str:
        return files.table_location(self.database_location, table.partition(".")[2])


def _drop_table(backend: Any, table: str) -> None:
    """A dataset table and its folder (a table Spark's catalog forgot leaves only the folder)."""
    backend.execute(f"DROP TABLE IF EXISTS {_spark_name(table)}")
    schema, _, name = table.partition(".")
    files.remove_folder(backend.spark, files.table_location(files.database_location(backend.spark, schema), name))


def _spark_name(name: str) -> str:
    schema, dot, relation = name.partition(".")
    parts = [exp.to_identifier(schema, quoted=True)]
    if dot:
        parts.append(exp.to_identifier(relation, quoted=True))
    return ".".join(p.sql(dialect="spark") for p in parts)


def _kind(data_type: Any) -> str:
    name = type(data_type).__name__
    if name in ("ByteType", "ShortType", "IntegerType", "LongType", "BooleanType"):
        return "int"
    if name in ("FloatType", "DoubleType", "DecimalType"):
        return "float"
    if name == "BinaryType":
        return "bytes"
    if name == "ArrayType":
        inner = data_type.elementType
        while type(inner).__name__ == "ArrayType":
            inner = inner.elementType
        return "array" if _kind(inner) in ("int", "float") else "other"
    return "other"


# -- Arrow columns as numpy: dbdl_udf.arrowio (shared with DuckDB's sink) ------------------------


def _nested_dims(column: pa.Array | pa.ChunkedArray, valid: np.ndarray) -> tuple[int, ...] | None:
    """The dimensions of nested arrays whose every level has one length (array<array<float>> of 3
    arrays of 2: (3, 2)), outermost first; None for flat arrays or levels of different lengths (Spark's
    arrays have no fixed sizes, so the values say what DuckDB's FLOAT[2][3] says in its type)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.filter(pa.array(valid)) if not valid.all() else column
    dims = []
    while is_list_type(values.type):
        lengths = pc.list_value_length(values).fill_null(-1).to_numpy(zero_copy_only=False)
        if not len(lengths) or (lengths != lengths[0]).any() or lengths[0] < 0:
            return None
        dims.append(int(lengths[0]))
        values = pc.list_flatten(values)
    return tuple(dims) if len(dims) > 1 else None
