"""Softmax over the last axis: in SQL, a window over the row."""

from __future__ import annotations

import numpy as np

from .base import Op


class Softmax(Op):
    op_types = ("Softmax",)

    def run(self, x):
        axis = int(self.attrs.get("axis", -1))
        if axis not in (-1, x.ndim - 1):
            raise NotImplementedError("Softmax over an axis other than the last")
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def to_sql(self, sql, inputs, out_shape):
        return sql.softmax(inputs[0])
