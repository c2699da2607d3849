"""What ``db.sql`` returns: a materialized result that converts to Arrow, pandas, numpy and rows."""

from __future__ import annotations

from typing import Any, Iterator

import pyarrow as pa


class Result:
    """Rows of one statement. DDL gives an empty result; DuckDB reports INSERT/CREATE TABLE AS
    with a one-row ``Count`` column, PostgreSQL with no rows."""

    def __init__(self, table: pa.Table | None) -> None:
        self._table = table if table is not None else pa.table({})

    @property
    def columns(self) -> list[str]:
        return list(self._table.column_names)

    def arrow(self) -> pa.Table:
        return self._table

    def df(self):
        """A pandas DataFrame (needs pandas)."""
        return self._table.to_pandas()

    to_pandas = df

    def numpy(self) -> dict[str, Any]:
        """Column name -> numpy array; list columns of equal length become 2-D arrays."""
        import numpy as np

        out: dict[str, Any] = {}
        for name, col in zip(self._table.column_names, self._table.columns):
            if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
                rows = col.to_pylist()
                out[name] = np.array(rows, dtype=object if any(r is None for r in rows) else None)
            else:
                out[name] = col.to_numpy()
        return out

    def fetchall(self) -> list[tuple]:
        cols = [c.to_pylist() for c in self._table.columns]
        return list(zip(*cols)) if cols else []

    rows = fetchall

    def scalar(self) -> Any:
        """The first column of the first row (None for no rows)."""
        if self._table.num_rows == 0 or self._table.num_columns == 0:
            return None
        return self._table.column(0)[0].as_py()

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.fetchall())

    def __len__(self) -> int:
        return self._table.num_rows

    def __repr__(self) -> str:
        return f"<dbdl.Result {self._table.num_rows} rows × {self._table.num_columns} columns {self.columns}>"
