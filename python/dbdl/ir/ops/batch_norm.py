"""BatchNormalization (inference form, constant scale, bias, mean and variance) that could not be
folded into the Conv or Gemm before it (``ir/graph.py``): a per-channel scale and shift,
``v × s[c] + t[c]``, in SQL a join with a per-position constant table."""

from __future__ import annotations

import numpy as np

from .base import Op, Shape


class BatchNormalization(Op):
    op_types = ("BatchNormalization",)

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """(s, t) per channel: y = x · s + t."""
        if not all(k in self.params for k in (1, 2, 3, 4)):
            raise NotImplementedError("BatchNormalization with a scale, bias, mean or variance computed at run time")
        scale, bias, mean, var = (self.params[k].astype(np.float64).reshape(-1) for k in (1, 2, 3, 4))
        s = scale / np.sqrt(var + float(self.attrs.get("epsilon", 1e-5)))
        return s, bias - mean * s

    def infer(self, shapes: list[Shape | None]) -> Shape:
        if self.attrs.get("training_mode", 0):
            raise NotImplementedError("BatchNormalization in training mode")
        shape = tuple(shapes[0])
        s, _ = self.factors()
        if not shape or len(s) != shape[0]:
            raise NotImplementedError(f"BatchNormalization of {len(s)} channels over rows of shape {shape}")
        return shape

    def run(self, x, *rest):
        s, t = self.factors()
        at = (len(s), *([1] * (x.ndim - 2)))
        return (x * s.reshape(at) + t.reshape(at)).astype(x.dtype)

    def to_sql(self, sql, inputs, out_shape):
        s, t = self.factors()
        inner = int(np.prod(out_shape[1:])) if len(out_shape) > 1 else 1
        return sql.positional(inputs[0], {"s": np.repeat(s, inner), "t": np.repeat(t, inner)}, "{v} * {s} + {t}")
