"""LogSoftmax: v - max - ln Σ exp(v - max) over the normalized axes (as Softmax chooses them)."""

from __future__ import annotations

import numpy as np

from .softmax import Softmax


class LogSoftmax(Softmax):
    op_types = ("LogSoftmax",)

    def run(self, x):
        axes = self._normalized(x)
        shifted = x - x.max(axis=axes, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=axes, keepdims=True))

    def to_sql(self, sql, inputs, out_shape):
        return sql.log_softmax(inputs[0], self.group(sql, out_shape))
