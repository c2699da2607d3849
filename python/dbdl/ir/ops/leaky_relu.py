"""LeakyRelu: v where v >= 0, else alpha * v."""

from __future__ import annotations

import numpy as np

from .base import Op


class LeakyRelu(Op):
    op_types = ("LeakyRelu",)

    @property
    def alpha(self) -> float:
        return float(self.attrs.get("alpha", 0.01))

    def run(self, x):
        return np.where(x >= 0, x, x * self.alpha)

    def to_sql(self, sql, inputs, out_shape):
        return sql.scalar(inputs[0], f"CASE WHEN {{v}} >= 0 THEN {{v}} ELSE {{v}} * {self.alpha!r} END")
