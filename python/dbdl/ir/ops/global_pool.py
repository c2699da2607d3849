"""GlobalAveragePool and GlobalMaxPool: one value per channel, (C, 1, …); in SQL ``AVG(v)`` /
``MAX(v) GROUP BY rid, i / (spatial size)``."""

from __future__ import annotations

from math import prod

import numpy as np

from .base import Op, Shape


class GlobalPool(Op):
    op_types = ("GlobalAveragePool", "GlobalMaxPool")

    def infer(self, shapes: list[Shape | None]) -> Shape:
        shape = shapes[0]
        if len(shape) < 2:
            raise NotImplementedError(f"{self.op_type} of a per-row tensor of shape {shape} (it takes (C, *spatial))")
        self._in_shape = tuple(shape)
        return (shape[0], *([1] * (len(shape) - 1)))

    def run(self, x):
        axes = tuple(range(2, x.ndim))
        return (np.mean if self.op_type == "GlobalAveragePool" else np.max)(x, axis=axes, keepdims=True)

    def to_sql(self, sql, inputs, out_shape):
        spatial = int(prod(self._in_shape[1:]))
        aggregate = "AVG(v)" if self.op_type == "GlobalAveragePool" else "MAX(v)"
        return sql.reduce(inputs[0], sql.idiv("i", spatial), aggregate, self._in_shape[0])

    _in_shape: Shape = ()
