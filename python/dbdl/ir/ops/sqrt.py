"""Sqrt: the square root; NaN for a negative value (as onnxruntime), where SQL's SQRT would raise."""

from __future__ import annotations

import numpy as np

from .base import Op


class Sqrt(Op):
    op_types = ("Sqrt",)

    def run(self, x):
        with np.errstate(invalid="ignore"):
            return np.sqrt(x)

    def to_sql(self, sql, inputs, out_shape):
        return sql.scalar(inputs[0], "CASE WHEN {v} >= 0 THEN SQRT({v}) ELSE CAST('NaN' AS DOUBLE) END")
