"""Scaler (ai.onnx.ml): y = (x - offset) · scale, per position (or one offset/scale for all)."""

from __future__ import annotations

import numpy as np

from . import _ml
from .base import Op


class Scaler(Op):
    op_types = ("Scaler",)

    def _constants(self):
        offset = _ml.floats(self.attrs, "offset")
        scale = _ml.floats(self.attrs, "scale")
        return (np.zeros(1) if offset is None else offset), (np.ones(1) if scale is None else scale)

    def infer(self, shapes):
        (width,) = shapes[0]
        if any(len(c) not in (1, width) for c in self._constants()):
            raise NotImplementedError("Scaler whose offset or scale does not match its input's width")
        return shapes[0]

    def run(self, x):
        offset, scale = self._constants()
        return ((x.astype(np.float32) - offset.astype(np.float32)) * scale.astype(np.float32)).astype(np.float32)

    def to_sql(self, sql, inputs, out_shape):
        offset, scale = self._constants()
        return sql.positional(inputs[0], {"o": offset, "s": scale}, "({v} - {o}) * {s}")
