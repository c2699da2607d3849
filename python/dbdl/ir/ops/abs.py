"""Abs: |v|."""

from __future__ import annotations

import numpy as np

from .base import Op


class Abs(Op):
    op_types = ("Abs",)

    def run(self, x):
        return np.abs(x)

    def to_sql(self, sql, inputs, out_shape):
        return sql.scalar(inputs[0], "ABS({v})")
