"""Gather along one axis. Two forms compile to SQL:

- an **embedding lookup**: the data is a constant table (an initializer, ``nn.Embedding``'s weight)
  and the indices come from the row. In SQL a join of the index relation with the embedding table
  ``(token, d, w)``: the value at index position p and embedding component d lands at position
  ``p × dim + d``. An index outside ``[-rows, rows)`` raises ModelRuntimeError, as onnxruntime
  refuses it (the UDF path raises the same class); a negative index counts from the end.
- **picking positions** of an activation with constant indices (any per-row axis): each output
  position's source position is known at compile time, a join with a ``(i, o)`` table.
"""

from __future__ import annotations

import numpy as np

from .axes import row_axis
from .base import Op, Shape, per_row_size


class Gather(Op):
    op_types = ("Gather",)

    @property
    def axis(self) -> int:
        return int(self.attrs.get("axis", 0))

    def infer(self, shapes: list[Shape | None]) -> Shape:
        data, indices = (shapes + [None, None])[:2]
        if data is None and indices is not None:  # an embedding lookup: a constant table, indices per row
            table = self.params[0]
            if self.axis not in (0, -table.ndim):
                raise NotImplementedError(f"Gather of a constant along axis {self.axis} with indices from the row "
                                          "(an embedding lookup takes whole rows of its table: axis 0)")
            if table.ndim < 1:
                raise NotImplementedError("Gather from a scalar constant")
            self._lookup = True
            return tuple(indices) + tuple(table.shape[1:])
        if data is not None and indices is None:  # constant positions picked out of an activation
            k = row_axis(self.axis, len(data), "Gather")
            index = np.asarray(self.params[1])
            if not np.issubdtype(index.dtype, np.integer):
                raise NotImplementedError(f"Gather with indices of type {index.dtype}")
            if index.size and (index.min() < -data[k] or index.max() >= data[k]):
                raise NotImplementedError(f"Gather index out of range for axis {self.axis} of size {data[k]}")
            self._lookup, self._in_shape = False, data
            return tuple(data[:k]) + tuple(index.shape) + tuple(data[k + 1:])
        raise NotImplementedError("Gather of an activation by indices computed from the row")

    def run(self, data, indices=None):
        data, indices = self.arg((data, indices), 0), self.arg((data, indices), 1)
        if self.params.get(0) is not None:  # the table: rows picked by each row's indices (axis 0)
            rows = data.shape[0]
            index = np.asarray(indices)
            if index.size and (index.min() < -rows or index.max() >= rows):
                raise IndexError(f"Gather index out of range: the table has {rows} rows")
            return np.take(data, index.astype(np.int64), axis=0)
        return np.take(data, np.asarray(indices).astype(np.int64), axis=self.axis if self.axis >= 0 else
                       self.axis + data.ndim)

    def to_sql(self, sql, inputs, out_shape):
        if self._lookup:
            table = np.asarray(self.params[0], dtype=np.float64)
            return sql.lookup(inputs[1], table.reshape(table.shape[0], -1), per_row_size(out_shape))
        shape = self._in_shape
        k = row_axis(self.axis, len(shape), "Gather")
        source = np.take(np.arange(per_row_size(shape)).reshape(shape), np.asarray(self.params[1], dtype=np.int64),
                         axis=k).reshape(-1)
        return sql.pick(inputs[0], source, per_row_size(out_shape))

    _lookup: bool = False
    _in_shape: Shape = ()
