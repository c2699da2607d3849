"""Relu: max(v, 0), a scalar expression per value in SQL."""

from __future__ import annotations

import numpy as np

from .base import Op


class Relu(Op):
    op_types = ("Relu",)

    def run(self, x):
        return np.maximum(x, 0)

    def to_sql(self, sql, inputs, out_shape):
        return sql.scalar(inputs[0], "GREATEST({v}, 0)")
