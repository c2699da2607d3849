"""Cast to a floating type (values in SQL are already floating point), or to an integer type
(truncated toward zero, as onnxruntime does: a classifier's int64 label)."""

from __future__ import annotations

import numpy as np

from .base import Op


class Cast(Op):
    op_types = ("Cast",)
    _FLOATS = {1: np.float32, 10: np.float16, 11: np.float64}
    _INTS = {6: np.int32, 7: np.int64}

    def run(self, x):
        to = int(self.attrs.get("to", 1))
        if to in self._INTS and x.dtype != object:
            return x.astype(self._INTS[to])
        if to not in self._FLOATS:
            raise NotImplementedError(f"Cast to ONNX type {to}")
        return x.astype(self._FLOATS[to])

    def to_sql(self, sql, inputs, out_shape):
        if int(self.attrs.get("to", 1)) in self._INTS:
            return sql.scalar(inputs[0], "CASE WHEN {v} < 0 THEN CEIL({v}) ELSE FLOOR({v}) END")
        if int(self.attrs.get("to", 1)) not in self._FLOATS:
            raise NotImplementedError(f"Cast to ONNX type {self.attrs.get('to')}")
        return inputs[0]
