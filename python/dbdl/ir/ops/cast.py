"""Cast to a floating type (values in SQL are already floating point)."""

from __future__ import annotations

import numpy as np

from .base import Op


class Cast(Op):
    op_types = ("Cast",)
    _FLOATS = {1: np.float32, 10: np.float16, 11: np.float64}

    def run(self, x):
        to = int(self.attrs.get("to", 1))
        if to not in self._FLOATS:
            raise NotImplementedError(f"Cast to ONNX type {to}")
        return x.astype(self._FLOATS[to])

    def to_sql(self, sql, inputs, out_shape):
        if int(self.attrs.get("to", 1)) not in self._FLOATS:
            raise NotImplementedError(f"Cast to ONNX type {self.attrs.get('to')}")
        return inputs[0]
