"""Normalizer (ai.onnx.ml): each row divided by its MAX, L1 (sum of |x|) or L2 (root of the sum of
squares) norm; in SQL, a window over the row."""

from __future__ import annotations

import numpy as np

from . import _ml
from .base import Op

_NORMS = {"MAX": "MAX({v}) OVER (PARTITION BY rid)",
          "L1": "SUM(ABS({v})) OVER (PARTITION BY rid)",
          "L2": "SQRT(SUM({v} * {v}) OVER (PARTITION BY rid))"}


class Normalizer(Op):
    op_types = ("Normalizer",)

    def _norm(self) -> str:
        return _ml.text(self.attrs.get("norm"), "MAX")

    def infer(self, shapes):
        if self._norm() not in _NORMS:
            raise NotImplementedError(f"Normalizer with norm {self._norm()}")
        if len(shapes[0]) != 1:
            raise NotImplementedError("Normalizer over more than one per-row axis")
        return shapes[0]

    def run(self, x):
        x = x.astype(np.float32)
        norm = self._norm()
        if norm == "MAX":
            d = x.max(axis=1, keepdims=True)
        elif norm == "L1":
            d = np.abs(x).sum(axis=1, keepdims=True)
        else:
            d = np.sqrt((x * x).sum(axis=1, keepdims=True))
        return (x / d).astype(np.float32)

    def to_sql(self, sql, inputs, out_shape):
        return sql.scalar(inputs[0], "{v} / " + _NORMS[self._norm()])
