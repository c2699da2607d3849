"""``train_export`` on DM8, which runs no Python: the client runs the rules of
``dbdl_udf.datasets.export`` with the sink below, reading the source query by array fetch and
writing the dataset table with executemany over lists.

The dataset table, one row per sample (``block_rows`` 0): ``row_id BIGINT PRIMARY KEY``,
``features`` — the sample's little-endian values, packed — ``label`` (BIGINT or REAL) and
``split``. ``features`` is ``VARBINARY(n)`` where a sample's bytes fit in a row on any page size
(≤ 1,900 bytes: an 8×8 image of float32, 784 uint8 pixels), else ``BLOB``. Why bytes and not one
column per element: dmPython returns a row as a tuple of Python objects, so 784 REAL columns are 784
float objects a sample against one bytes object that numpy views without a copy, and DM8 limits a
table to 2,048 columns and a row to about half a page. Why VARBINARY before BLOB: a VARBINARY value
arrives in the array fetch's own buffers, while dmPython reads each BLOB through its locator
(``dpi_lob_read``, one more round trip a row; dmPython ``vLob.c``).

All or nothing, by hand: DM8 commits DDL implicitly, so the new table's CREATE commits at once.
Its rows and the catalog row are one transaction; the view's CREATE OR REPLACE, its GRANT and the
DROP of the previous version's table (DDL, each committing) run only after that transaction
committed. A failure before drops the new table: the previous version stays current, untouched.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import sqlglot.expressions as exp

from dbdl_udf import datasets
from dbdl_udf.datasets import DatasetInfo, ExportSpec, Ragged, decode_bytes, dense_rows

from ...errors import Error
from ..base import export_query
from . import driver

#: rows per array fetch of the source query, and per executemany chunk of the table
EXPORT_ROWS = 4096
#: the most bytes of a sample stored as VARBINARY (inline); larger ones as BLOB
INLINE_BYTES = 1900

CREATE = ("CREATE TABLE {table} (row_id BIGINT PRIMARY KEY, features {features}, label {label} NOT NULL, "
          "split VARCHAR(10) NOT NULL)")
INSERT = "INSERT INTO {table} (row_id, features, label, split) VALUES (?, ?, ?, ?)"
DROP = "DROP TABLE IF EXISTS {table}"


def train_export(backend: Any, spec: ExportSpec, progress: Callable[[int], None] | None = None) -> DatasetInfo:
    export_query(spec, backend.dialect)
    sink = DM8Sink(backend)
    try:
        with backend.transaction():
            datasets.export(sink, spec, progress=progress)
    except BaseException:
        sink.undo()
        raise
    finally:
        sink.close()
    sink.after_commit()
    return datasets.get(backend, spec.name)


def table_sql(name: str) -> str:
    """A catalog name (schema.table, dbdl's own, lower case) as DM8 SQL: unquoted, folded as every
    other reference to it is."""
    return exp.to_table(name).sql(dialect="oracle")


def feature_type(row_bytes: int) -> str:
    return f"VARBINARY({max(1, int(row_bytes))})" if row_bytes <= INLINE_BYTES else "BLOB"


class DM8Sink:
    """dbdl_udf.datasets.export's DM8 sink: the query by array fetch, the samples staged in the
    client, the table written in row-id order with executemany."""

    blocked = False  # one row per sample (see the module's docstring)

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.schema = backend.data_schema
        self._cursor: Any = None
        self._description: Any = None
        self._features: list = []
        self._labels: list = []
        self._created: str | None = None
        self._deferred: list[str] = []
        self.dims = None  # DM8 has no array columns: no nested dimensions to keep

    # -- the catalog ---------------------------------------------------------------------------

    def dataset(self, name: str) -> DatasetInfo | None:
        found = self.backend.fetchall("SELECT name FROM dbdl.datasets WHERE name = ?", (name,))
        return datasets.get(self.backend, name) if found else None

    def record(self, row: dict) -> None:
        datasets.record(self.backend, row)

    # -- the source ----------------------------------------------------------------------------

    def describe(self, query: str) -> list[tuple[str, str, str]]:
        from .dialect import render

        self._cursor = self.backend._run(render(query), rows=EXPORT_ROWS)
        self._description = self._cursor.description or []
        names = driver.column_names(self._description)
        return [(n, driver.kind(d), driver.type_name(d)) for n, d in zip(names, self._description)]

    def batches(self, query, features, label, kinds, ragged=False):
        names = driver.column_names(self._description)
        index = {n: i for i, n in enumerate(names)}
        cols = [index[f] for f in features]
        at = index[label]
        pos = 0
        try:
            while True:
                rows = self._cursor.fetchmany(EXPORT_ROWS)
                if not rows:
                    break
                rows = [tuple(driver.plain(v) for v in r) for r in rows]  # LOBs read before the next fetch
                if kinds[features[0]] == "bytes":
                    data, valid = decode_bytes([r[cols[0]] for r in rows])
                    matrix = data if ragged else dense_rows(data, valid, pos)
                else:
                    parts = [numbers([r[c] for r in rows], kinds[features[j]]) for j, c in enumerate(cols)]
                    matrix = np.column_stack([p for p, _ in parts])
                    valid = np.logical_and.reduce([v for _, v in parts])
                labels, labels_valid = numbers([r[at] for r in rows], kinds[label])
                pos += len(rows)
                yield matrix, valid, labels, labels_valid
        except driver.dmPython.Error as exc:
            raise driver.translate(exc) from exc
        finally:
            self.close()

    def stage(self, first_pos, features, labels, label_dtype):
        self._features.append(features)
        self._labels.append(labels)

    # -- the table -----------------------------------------------------------------------------

    def finish(self, table, row_ids, codes, width, dtype, label_dtype, block_rows=0):
        n = len(row_ids)
        order = np.empty(n, dtype=np.int64)
        order[row_ids] = np.arange(n, dtype=np.int64)  # row id -> source position
        item = np.dtype(dtype).itemsize
        if width is None:  # variable-length rows (token lists, bytes)
            rows = Ragged.concat(self._features).take(order)
            values = np.ascontiguousarray(rows.values, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
            bounds = rows.offsets * item
            blobs = [values[bounds[i]:bounds[i + 1]] for i in range(n)]
            longest = int((rows.lengths.max() if n else 0) * item)
        else:
            matrix = np.concatenate(self._features)[order]
            values = np.ascontiguousarray(matrix, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
            size = int(width) * item
            blobs = [values[i * size:(i + 1) * size] for i in range(n)]
            longest = size
        labels = np.concatenate(self._labels)[order]
        labels = [int(v) for v in labels] if label_dtype == "int64" else [float(v) for v in labels]
        splits = np.array(datasets.SPLITS, dtype=object)[codes[order]]
        self._features, self._labels = [], []
        target = table_sql(table)
        self.backend.execute(CREATE.format(table=target, features=feature_type(longest),
                                           label="BIGINT" if label_dtype == "int64" else "REAL"))
        self._created = table
        self.backend.executemany(INSERT.format(table=target),
                                 [(r, blobs[r], labels[r], str(splits[r])) for r in range(n)])

    def blocked_view(self, table, block_rows, row_bytes, counts):  # pragma: no cover - blocked is False
        raise NotImplementedError("DM8 dataset tables hold one row per sample")

    def ddl(self, sql: str) -> None:
        # the view's CREATE OR REPLACE and the previous table's DROP commit in DM8: they run once
        # the rows and the catalog row have committed (after_commit)
        self._deferred.append(sql)

    def share(self, relation: str) -> None:
        self._deferred.append(f"GRANT SELECT ON {table_sql(relation)} TO DBDL_USER")

    def after_commit(self) -> None:
        """The deferred DDL, in order; a GRANT this user may not give is skipped (the dataset's
        readers then need SELECT on the view from an administrator)."""
        from ...errors import PermissionDenied

        for sql in self._deferred:
            try:
                self.backend.execute(sql)
            except PermissionDenied:
                if not sql.startswith("GRANT"):
                    raise
        self._deferred = []

    def undo(self) -> None:
        """Drop the table this export created (its CREATE committed)."""
        created, self._created = self._created, None
        if created is not None:
            try:
                self.backend.execute(DROP.format(table=table_sql(created)))
            except Error:
                pass

    def close(self) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            try:
                cursor.close()
            except Exception:  # noqa: BLE001 - already closed
                pass


def numbers(values: list, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """One column's numbers (int64 or float64; DECIMAL values as dmPython returns them — Decimal or
    text — converted) and the mask of those not NULL."""
    valid = np.array([v is not None for v in values], dtype=bool)
    if kind == "int":
        return np.array([int(v) if v is not None else 0 for v in values], dtype=np.int64), valid
    return np.array([float(v) if v is not None else 0.0 for v in values], dtype=np.float64), valid
