"""LinearRegressor (ai.onnx.ml): y = x · coefficientsᵀ + intercepts, one value per target: a dense layer."""

from __future__ import annotations

import numpy as np

from . import _ml
from .base import Op, Shape


class LinearRegressor(Op):
    op_types = ("LinearRegressor",)

    def _targets(self) -> int:
        return int(self.attrs.get("targets", 1))

    def weight(self, n_in: int | None = None) -> np.ndarray:
        coef = _ml.floats(self.attrs, "coefficients")
        return coef.reshape(self._targets(), -1).T  # (in x targets)

    def bias(self) -> np.ndarray:
        b = _ml.floats(self.attrs, "intercepts")
        return np.zeros(self._targets()) if b is None else np.broadcast_to(b, (self._targets(),)).astype(np.float64)

    def infer(self, shapes: list[Shape | None]) -> Shape:
        transform = _ml.text(self.attrs.get("post_transform"), "NONE")
        if transform != "NONE":
            raise NotImplementedError(f"LinearRegressor with post_transform {transform}")
        (width,) = shapes[0]
        if self.weight().shape[0] != width:
            raise NotImplementedError("LinearRegressor whose coefficients do not match its input's width")
        return (self._targets(),)

    def param_bytes(self) -> int:
        return int(self.weight().nbytes // 2)  # float32 values

    def run(self, x):
        return (x.astype(np.float64) @ self.weight() + self.bias()).astype(np.float32)

    def to_sql(self, sql, inputs, out_shape):
        return sql.dense(inputs[0], self.weight(), self.bias())
