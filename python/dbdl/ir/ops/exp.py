"""Exp: e ** v. In SQL a value whose float32 result overflows is +Infinity and one whose float32
result is below the smallest subnormal is 0, as onnxruntime gives (PostgreSQL raises on EXP's
underflow, and on a non-zero double too small for REAL when the result is cast)."""

from __future__ import annotations

import numpy as np

from .base import Op

#: ln(FLT_MAX): above it the float32 result is +inf
_FLOAT32_OVERFLOW = 88.72283935546875
#: ln of float32's smallest subnormal (2 ** -149): below it the result is (within it of) 0
_FLOAT32_UNDERFLOW = -103.27892990343184


class Exp(Op):
    op_types = ("Exp",)

    def run(self, x):
        return np.exp(x)

    def to_sql(self, sql, inputs, out_shape):
        # NaN first: both databases order NaN above +Infinity
        return sql.scalar(inputs[0], "CASE WHEN {v} > CAST('Infinity' AS DOUBLE) THEN CAST('NaN' AS DOUBLE) "
                                     f"WHEN {{v}} > {_FLOAT32_OVERFLOW!r} THEN CAST('Infinity' AS DOUBLE) "
                                     f"WHEN {{v}} < {_FLOAT32_UNDERFLOW!r} THEN 0.0 ELSE EXP({{v}}) END")
