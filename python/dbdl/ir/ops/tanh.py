"""Tanh, written with EXP in SQL (not every dialect has TANH)."""

from __future__ import annotations

import numpy as np

from .base import Op


class Tanh(Op):
    op_types = ("Tanh",)

    def run(self, x):
        return np.tanh(x)

    def to_sql(self, sql, inputs, out_shape):
        return sql.scalar(inputs[0], "(1.0 - 2.0 / (EXP(2.0 * LEAST(GREATEST({v}, -40.0), 40.0)) + 1.0))")
