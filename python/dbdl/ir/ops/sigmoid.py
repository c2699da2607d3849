"""Sigmoid: 1 / (1 + exp(-v)), clamped in SQL so EXP never overflows."""

from __future__ import annotations

import numpy as np

from .base import Op


class Sigmoid(Op):
    op_types = ("Sigmoid",)

    def run(self, x):
        return 1.0 / (1.0 + np.exp(-x))

    def to_sql(self, sql, inputs, out_shape):
        # clamp so that EXP never overflows a double
        return sql.scalar(inputs[0], "1.0 / (1.0 + EXP(-LEAST(GREATEST({v}, -80.0), 80.0)))")
