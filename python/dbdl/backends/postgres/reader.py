"""The training readers' range reads on PostgreSQL, on a connection of the reader's own (the
application's may be inside a transaction): a blocked table (format 2) with one binary-result
``SELECT block_id, features, labels … WHERE block_id >= $1 AND block_id < $2`` — a few values of
up to 1 MiB each, copied once into the block the cache stores; a table of one row per sample (ragged
datasets, datasets exported before format 2) with one binary ``COPY (SELECT … WHERE row_id >= …
AND row_id < … ORDER BY row_id) TO STDOUT`` per range."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import psycopg
import sqlglot.expressions as exp

from dbdl_udf import pgarray
from dbdl_udf.datasets import DatasetInfo, Ragged
from dbdl_udf.errors import Error as UdfError

from ...errors import ConnectionError, QueryError
from ..base import RangeReader, packed_block

_COPY_HEADER = 19  # signature (11), flags (4), header extension length (4, zero)


class PostgresRangeReader(RangeReader):
    def __init__(self, url: str, owner: Any = None) -> None:
        self.url = url
        self._con: Any = None
        self._tables: dict[str, str] = {}

    def _connection(self):
        if self._con is None:
            try:
                self._con = psycopg.connect(self.url, autocommit=True)
            except psycopg.Error as exc:
                raise ConnectionError(f"cannot connect to {self.url!r}: {str(exc).strip()}") from exc
        return self._con

    def read(self, info: DatasetInfo, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        if info.block_rows:
            _, features, labels = self.read_blocks(info, [(start, stop)])[0]
            return features, labels
        self._connection()
        table = self._table(info)
        # row ids are ints of ours, not text: formatted as numbers (COPY takes no parameters)
        sql = (f"COPY (SELECT features, label FROM {table} WHERE row_id OPERATOR(pg_catalog.>=) {int(start):d} "
               f"AND row_id OPERATOR(pg_catalog.<) {int(stop):d} ORDER BY row_id) TO STDOUT (FORMAT BINARY)")
        payload = bytearray()
        try:
            with self._con.cursor().copy(sql) as copy:
                for chunk in copy:
                    payload += chunk
        except psycopg.errors.UndefinedTable as exc:
            raise self.gone(info) from exc
        if info.ragged:
            return _ragged_copy_rows(payload, info)
        return _fixed_copy_rows(payload, info)

    def read_blocks(self, info: DatasetInfo, bounds) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if not info.block_rows:
            return super().read_blocks(info, bounds)
        R, size = info.block_rows, info.row_bytes
        start, stop = bounds[0][0], min(bounds[-1][1], info.n_rows)
        first, end = start // R, -(-stop // R)
        # a binary COPY streams one message per block (a SELECT's result would be gathered whole
        # in libpq first); block ids are ints of ours, formatted as numbers (COPY takes no parameters)
        sql = (f"COPY (SELECT b.block_id, b.features, pg_catalog.array_send(b.labels) FROM {self._table(info)} b "
               f"WHERE b.block_id OPERATOR(pg_catalog.>=) {int(first):d} AND b.block_id OPERATOR(pg_catalog.<) "
               f"{int(end):d} ORDER BY b.block_id) TO STDOUT (FORMAT BINARY)")
        out = [packed_block(info, max(0, hi - lo)) for lo, hi in bounds]
        expect, k = first, 0
        try:
            with self._connection().cursor().copy(sql) as copy:
                stream = _Stream(copy)
                stream.take(_COPY_HEADER)
                while True:
                    fields = int.from_bytes(stream.take(2), "big", signed=True)
                    if fields == -1:
                        stream.drain()  # the end of the COPY: psycopg's, after the trailer
                        break
                    if fields != 3:
                        raise self.changed(info, "returned rows of another form")
                    block_id = int.from_bytes(stream.field(), "big", signed=True)
                    data = stream.field()
                    label_bytes = stream.field()
                    if block_id != expect:
                        raise self.changed(info, "is missing blocks")
                    expect += 1
                    lo = block_id * R
                    count = min(R, info.n_rows - lo)
                    if len(data) != count * size:
                        raise self.changed(info, f"holds a block of {len(data)} bytes where {count * size} belong")
                    values = _labels(label_bytes, info.label_dtype, count)
                    if values is None:
                        raise self.changed(info, "holds a labels array that is not one label per sample")
                    raw = np.frombuffer(data, np.uint8)
                    # the stored block's rows into each range it overlaps (usually exactly one)
                    while k < len(bounds) and bounds[k][1] <= lo:
                        k += 1
                    j = k
                    while j < len(bounds) and bounds[j][0] < lo + count:
                        a, z = max(bounds[j][0], lo), min(bounds[j][1], lo + count)
                        if a < z:
                            buf, _, labels = out[j]
                            base = bounds[j][0]
                            buf[(a - base) * size:(z - base) * size] = raw[(a - lo) * size:(z - lo) * size]
                            labels[a - base:z - base] = values[a - lo:z - lo]
                        j += 1
        except psycopg.errors.UndefinedTable as exc:
            raise self.gone(info) from exc
        if expect != end:
            raise self.changed(info, "is missing blocks")
        return out

    def _table(self, info: DatasetInfo) -> str:
        table = self._tables.get(info.table)
        if table is None:
            table = self._tables[info.table] = exp.to_table(info.table).sql(dialect="postgres", identify=True)
        return table

    @staticmethod
    def changed(info: DatasetInfo, what: str) -> QueryError:
        return QueryError(f"dataset table {info.table} {what}; it was changed outside dbdl — re-export the dataset")

    def close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            con.close()


class _Stream:
    """The bytes of a COPY's messages as one stream; a field that lies within one message (each
    row is one) is a view of it, without a copy."""

    def __init__(self, messages) -> None:
        self._messages = iter(messages)
        self._buf = memoryview(b"")
        self._pos = 0

    def take(self, n: int) -> memoryview:
        if self._pos + n <= len(self._buf):
            view = self._buf[self._pos:self._pos + n]
            self._pos += n
            return view
        parts = [bytes(self._buf[self._pos:])]
        need = n - len(parts[0])
        while need > 0:
            try:
                self._buf = memoryview(next(self._messages))
            except StopIteration:
                raise QueryError("the dataset table's COPY ended in the middle of a row") from None
            self._pos = min(need, len(self._buf))
            parts.append(bytes(self._buf[:self._pos]))
            need -= self._pos
        return memoryview(b"".join(parts))

    def drain(self) -> None:
        for _ in self._messages:
            pass

    def field(self) -> memoryview:
        length = int.from_bytes(self.take(4), "big", signed=True)
        if length < 0:
            raise QueryError("the dataset table holds a NULL where a block belongs; re-export the dataset")
        return self.take(length)


def _labels(blob: bytes, label_dtype: str, count: int) -> np.ndarray | None:
    """The values of array_send() bytes of a one-dimensional ``label_dtype`` array (int8[] / real[])
    of ``count`` elements without NULLs, read by dbdl_udf.pgarray (the one array_send() codec), else
    None."""
    try:
        arrays = pgarray.decode_arrays([bytes(blob)], "the dataset's labels")
    except UdfError:
        return None
    if arrays.elem != pgarray.element_oid(label_dtype) or not arrays.valid[0] or arrays.dims != (count,):
        return None
    return arrays.values


def _fixed_copy_rows(payload: bytearray, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    row_bytes = info.row_bytes
    label_size = 8 if info.label_dtype == "int64" else 4
    width = 2 + 4 + row_bytes + 4 + label_size
    n = (len(payload) - _COPY_HEADER - 2) // width
    raw = np.frombuffer(payload, dtype=np.uint8, count=n * width, offset=_COPY_HEADER).reshape(n, width)
    if n and not (raw[:, 2:6].copy().view(">i4")[:, 0] == row_bytes).all():
        raise QueryError(f"dataset table {info.table} holds a features value that is not {row_bytes} bytes; it was "
                         "changed outside dbdl — re-export the dataset")
    features = np.ascontiguousarray(raw[:, 6:6 + row_bytes]).view(np.dtype(info.dtype).newbyteorder("<"))
    label_raw = np.ascontiguousarray(raw[:, 10 + row_bytes:])
    labels = label_raw.view(">i8" if label_size == 8 else ">f4")[:, 0].astype(info.label_dtype)
    return features.reshape(n, math.prod(info.shape)), labels


def _ragged_copy_rows(payload: bytearray, info: DatasetInfo) -> tuple[Ragged, np.ndarray]:
    """Binary COPY rows (features bytea of any length, label) of a ragged dataset."""
    item = np.dtype(info.dtype).itemsize
    label_size = 8 if info.label_dtype == "int64" else 4
    pos, end = _COPY_HEADER, len(payload) - 2
    starts, lengths, label_at = [], [], []
    view = memoryview(payload)
    while pos < end:
        length = int.from_bytes(view[pos + 2:pos + 6], "big", signed=True)
        if length < 0 or length % item:
            raise QueryError(f"dataset table {info.table} holds a features value that is not a whole number of "
                             f"{info.dtype} values; it was changed outside dbdl — re-export the dataset")
        starts.append(pos + 6)
        lengths.append(length)
        pos += 6 + length
        label_at.append(pos + 4)
        pos += 4 + label_size
    raw = np.frombuffer(payload, dtype=np.uint8)
    values = np.frombuffer(b"".join(view[a:a + n] for a, n in zip(starts, lengths)),
                           dtype=np.dtype(info.dtype).newbyteorder("<"))
    if label_at:
        label_raw = raw[np.array(label_at)[:, None] + np.arange(label_size)]
        labels = np.ascontiguousarray(label_raw).view(">i8" if label_size == 8 else ">f4")[:, 0]
    else:
        labels = np.zeros(0, ">i8")
    return Ragged.from_lengths(values, np.array(lengths, dtype=np.int64) // item), labels.astype(info.label_dtype)
