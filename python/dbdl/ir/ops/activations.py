"""Scalar activations: Relu, LeakyRelu, Sigmoid, Tanh (one SQL expression per value)."""

from __future__ import annotations

import numpy as np

from .base import Op


class Relu(Op):
    op_types = ("Relu",)

    def run(self, x):
        return np.maximum(x, 0)

    def to_sql(self, sql, inputs, out_shape):
        return sql.scalar(inputs[0], "GREATEST({v}, 0)")


class LeakyRelu(Op):
    op_types = ("LeakyRelu",)

    @property
    def alpha(self) -> float:
        return float(self.attrs.get("alpha", 0.01))

    def run(self, x):
        return np.where(x >= 0, x, x * self.alpha)

    def to_sql(self, sql, inputs, out_shape):
        return sql.scalar(inputs[0], f"CASE WHEN {{v}} >= 0 THEN {{v}} ELSE {{v}} * {self.alpha!r} END")


class Sigmoid(Op):
    op_types = ("Sigmoid",)

    def flops(self, in_shapes, out_shape):
        return 4 * super().flops(in_shapes, out_shape)

    def run(self, x):
        return 1.0 / (1.0 + np.exp(-x))

    def to_sql(self, sql, inputs, out_shape):
        # clamp so that EXP never overflows a double
        return sql.scalar(inputs[0], "1.0 / (1.0 + EXP(-LEAST(GREATEST({v}, -80.0), 80.0)))")


class Tanh(Op):
    op_types = ("Tanh",)

    def flops(self, in_shapes, out_shape):
        return 4 * super().flops(in_shapes, out_shape)

    def run(self, x):
        return np.tanh(x)

    def to_sql(self, sql, inputs, out_shape):
        return sql.scalar(inputs[0], "(1.0 - 2.0 / (EXP(2.0 * LEAST(GREATEST({v}, -40.0), 40.0)) + 1.0))")
