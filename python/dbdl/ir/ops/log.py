"""Log: the natural logarithm. SQL's LN raises for 0 and negative values (PostgreSQL) where
onnxruntime gives -inf and NaN: the SQL form gives those too."""

from __future__ import annotations

import numpy as np

from .base import Op


class Log(Op):
    op_types = ("Log",)

    def run(self, x):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(x)

    def to_sql(self, sql, inputs, out_shape):
        return sql.scalar(inputs[0], "CASE WHEN {v} > 0 THEN LN({v}) WHEN {v} = 0 THEN CAST('-Infinity' AS DOUBLE) "
                                     "ELSE CAST('NaN' AS DOUBLE) END")
