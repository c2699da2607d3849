"""The training readers' range reads on DM8: one ``SELECT row_id, features, label … WHERE row_id >= ?
AND row_id < ? ORDER BY row_id`` per range (the primary key's index), array-fetched
(``cursor.arraysize`` = the range's rows, up to :data:`FETCH_ROWS` a round trip), on a connection
of the reader's own (opened from the URL: DataLoader workers have no Backend, and dmPython's
connections are not to be shared between threads — its threadsafety is 1). A BLOB that dmPython
hands over as a LOB object is read into bytes before the next fetch; the features' bytes of the
range are joined once and viewed by numpy in the dataset's dtype."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from dbdl_udf.datasets import DatasetInfo, Ragged

from ...errors import QueryError
from ..base import RangeReader
from . import driver
from .dialect import render

FETCH_ROWS = 10_000
#: the reader's one statement ({table}: the catalog's name, unquoted; the bounds bound)
RANGE_SQL = "SELECT row_id, features, label FROM {table} WHERE row_id >= ? AND row_id < ? ORDER BY row_id"
#: DM's "invalid table or view name" (the dataset's table was dropped or re-exported meanwhile)
_GONE = re.compile(r"无效的表或视图名|invalid table or view|table or view does not exist|对象.*不存在", re.I)
GONE_CODES = (-2106,)


def range_sql(table: str) -> str:
    """The range read of a dataset table, rendered for DM8 (tests/golden/dm8/dataset_range_read.sql)."""
    from .export import table_sql

    return render(RANGE_SQL.format(table=table_sql(table)))


class DM8RangeReader(RangeReader):
    def __init__(self, url: str, owner: Any = None) -> None:
        self.url = url
        self._con: Any = None
        self._sql: dict[str, str] = {}

    def _connection(self) -> Any:
        if self._con is None:
            self._con = driver.connect(self.url)
        return self._con

    def read(self, info: DatasetInfo, start: int, stop: int) -> tuple[np.ndarray | Ragged, np.ndarray]:
        sql = self._sql.get(info.table)
        if sql is None:
            sql = self._sql[info.table] = range_sql(info.table)
        cur = self._connection().cursor()
        cur.arraysize = max(1, min(int(stop) - int(start), FETCH_ROWS))  # before execute: sizes the buffers
        try:
            cur.execute(sql, (int(start), int(stop)))
            rows: list[tuple] = []
            while True:
                block = cur.fetchmany(cur.arraysize)
                if not block:
                    break
                rows.extend((r[0], driver.plain(r[1]), r[2]) for r in block)
        except driver.dmPython.Error as exc:
            code, message = driver.code_and_message(exc)
            if code in GONE_CODES or _GONE.search(message):
                raise self.gone(info) from exc
            raise driver.translate(exc) from exc
        finally:
            cur.close()
            try:
                self._con.commit()  # ends the read's transaction (autocommit is off)
            except Exception:  # noqa: BLE001
                pass
        return decode_rows(rows, info, start, stop)

    def close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            try:
                con.close()
            except Exception:  # noqa: BLE001
                pass


def decode_rows(rows: list[tuple], info: DatasetInfo, start: int, stop: int) -> tuple[np.ndarray | Ragged, np.ndarray]:
    """(row_id, features bytes, label) rows of [start, stop) as the features (rows x elements, or
    Ragged) and the labels, checked to be exactly those rows."""
    n = len(rows)
    ids = np.fromiter((int(r[0]) for r in rows), dtype=np.int64, count=n)
    if n != stop - start or (n and (ids[0] != start or ids[-1] != stop - 1 or not (np.diff(ids) == 1).all())):
        raise QueryError(f"dataset table {info.table} returned {n} rows for row ids [{start}, {stop}); it was changed "
                         "outside dbdl — re-export the dataset")
    dtype = np.dtype(info.dtype).newbyteorder("<")
    blobs = [bytes(r[1]) if r[1] is not None else b"" for r in rows]
    labels = np.array([r[2] for r in rows], dtype=np.float64 if info.label_dtype == "float32" else np.int64)
    labels = labels.astype(info.label_dtype, copy=False)
    if info.ragged:
        lengths = np.array([len(b) for b in blobs], dtype=np.int64)
        if (lengths % dtype.itemsize).any():
            raise QueryError(f"dataset table {info.table} holds a features value that is not a whole number of "
                             f"{info.dtype} values; it was changed outside dbdl — re-export the dataset")
        values = np.frombuffer(b"".join(blobs), dtype=dtype).astype(info.dtype, copy=False)
        return Ragged.from_lengths(values, lengths // dtype.itemsize), labels
    elements = math.prod(info.shape)
    size = elements * dtype.itemsize
    if any(len(b) != size for b in blobs):
        raise QueryError(f"dataset table {info.table} holds a features value that is not {size} bytes; it was "
                         "changed outside dbdl — re-export the dataset")
    values = np.frombuffer(b"".join(blobs), dtype=dtype).astype(info.dtype, copy=False)
    return values.reshape(n, elements), labels
