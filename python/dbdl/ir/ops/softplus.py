"""Softplus: ln(1 + e ** v), computed as max(v, 0) + ln(1 + e ** -|v|) so that nothing overflows
(and EXP's argument bounded so that it never underflows to an error on PostgreSQL)."""

from __future__ import annotations

import numpy as np

from .base import Op


class Softplus(Op):
    op_types = ("Softplus",)

    def run(self, x):
        return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))

    def to_sql(self, sql, inputs, out_shape):
        return sql.scalar(inputs[0], "(GREATEST({v}, 0.0) + LN(1.0 + EXP(-LEAST(ABS({v}), 700.0))))")
