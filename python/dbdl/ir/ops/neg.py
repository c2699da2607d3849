"""Neg: -v."""

from __future__ import annotations

import numpy as np

from .base import Op


class Neg(Op):
    op_types = ("Neg",)

    def run(self, x):
        return np.negative(x)

    def to_sql(self, sql, inputs, out_shape):
        return sql.scalar(inputs[0], "(-({v}))")
