"""ArgMax over the last per-row axis (the first largest, or the last with select_last_index)."""

from __future__ import annotations

import numpy as np

from .base import Op


class ArgMax(Op):
    op_types = ("ArgMax",)

    def infer(self, shapes):
        (shape,) = [s for s in shapes if s is not None]
        axis = int(self.attrs.get("axis", 0))
        if len(shape) != 1 or axis not in (1, -1):
            raise NotImplementedError("ArgMax over an axis other than the one per-row axis")
        if int(self.attrs.get("select_last_index", 0)):
            raise NotImplementedError("ArgMax with select_last_index")
        return (1,) if int(self.attrs.get("keepdims", 1)) else ()

    def run(self, x):
        axis = int(self.attrs.get("axis", 0))
        return np.argmax(x, axis=axis, keepdims=bool(int(self.attrs.get("keepdims", 1)))).astype(np.int64)

    def to_sql(self, sql, inputs, out_shape):
        return sql.argmax(inputs[0])
