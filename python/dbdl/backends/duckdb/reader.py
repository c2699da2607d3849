"""The training readers' range reads on DuckDB: ``SELECT … WHERE row_id >= ? AND row_id < ?`` as
Arrow, from the training process's own connection or, in a DataLoader worker, the file opened
read-only (DuckDB lets many processes read a file, or one process write it)."""

from __future__ import annotations

import math
from typing import Any

import duckdb
import numpy as np
import sqlglot.expressions as exp

from dbdl_udf.datasets import DatasetInfo, Ragged

from ...errors import ConfigurationError
from ..base import RangeReader
from .files import path_from_url


class DuckDBRangeReader(RangeReader):
    def __init__(self, url: str, owner: Any = None) -> None:
        self.path = path_from_url(url)
        self._owner = owner
        self._con: Any = None

    def _connection(self):
        if self._con is not None:
            return self._con
        if self._owner is not None:
            try:
                self._con = self._owner.con.cursor()  # the training process's own database
                return self._con
            except duckdb.Error:  # closed since: read the file like a worker does
                self._owner = None
        if self.path == ":memory:":
            raise ConfigurationError(
                "an in-memory DuckDB database cannot be read from DataLoader workers; use num_workers=0, "
                "fill the cache first (ds.fill_cache()), or export into a database file")
        try:
            self._con = duckdb.connect(self.path, read_only=True)
        except duckdb.Error as exc:
            raise ConfigurationError(
                f"a DataLoader worker cannot open {self.path!r} read-only ({str(exc).splitlines()[0]}): DuckDB "
                "allows one writing process or many readers. Close the writable connection before "
                "iterating (db.close()), open it with dbdl.connect(url, read_only=True), fill the cache "
                "in this process first (ds.fill_cache()), or use num_workers=0") from exc
        return self._con

    def read(self, info: DatasetInfo, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        con = self._connection()
        table = exp.to_table(info.table).sql(dialect="duckdb", identify=True)
        try:
            # row ids are ints of ours (formatted as numbers): con.sql streams Arrow without a copy
            result = con.sql(f"SELECT row_id, features, label FROM {table} "
                             f"WHERE row_id >= {int(start):d} AND row_id < {int(stop):d}").to_arrow_table()
        except duckdb.CatalogException as exc:
            raise self.gone(info) from exc
        return _rows(result, info)

    def close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            con.close()


def _rows(table: Any, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    ids = table.column(0).to_numpy()
    features = table.column(1).combine_chunks()
    if info.ragged:
        import pyarrow.compute as pc

        lengths = pc.list_value_length(features).to_numpy(zero_copy_only=False).astype(np.int64)
        values = pc.list_flatten(features).to_numpy(zero_copy_only=False)
        rows = Ragged.from_lengths(values.astype(info.dtype, copy=False), lengths)
        labels = table.column(2).to_numpy()
        if len(ids) > 1 and not bool((np.diff(ids) > 0).all()):
            order = np.argsort(ids, kind="stable")
            rows, labels = rows.take(order), labels[order]
        return rows, labels.astype(info.label_dtype, copy=False)
    values = features.flatten().to_numpy(zero_copy_only=False)
    elements = math.prod(info.shape)
    matrix = values.reshape(len(ids), elements)
    labels = table.column(2).to_numpy()
    if len(ids) > 1 and not bool((np.diff(ids) > 0).all()):
        order = np.argsort(ids, kind="stable")
        matrix, labels = matrix[order], labels[order]
    return matrix, labels.astype(info.label_dtype, copy=False)
