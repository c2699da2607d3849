"""Gelu (opset 20): v Φ(v) = 0.5 v (1 + erf(v / √2)), or with approximate="tanh"
0.5 v (1 + tanh(√(2/π) (v + 0.044715 v³))). (Torch's exports before opset 20 spell it as
Div/Erf/Add/Mul, which those operators compile.)"""

from __future__ import annotations

import math

import numpy as np

from .base import Op
from .erf import erf, erf_sql

_K = math.sqrt(2.0 / math.pi)


class Gelu(Op):
    op_types = ("Gelu",)

    @property
    def approximate(self) -> str:
        value = self.attrs.get("approximate", "none")
        return value.decode() if isinstance(value, bytes) else str(value)

    def infer(self, shapes):
        if self.approximate not in ("none", "tanh"):
            raise NotImplementedError(f"Gelu with approximate={self.approximate!r} (ONNX defines 'none' and 'tanh')")
        return super().infer(shapes)

    def run(self, x):
        if self.approximate == "tanh":
            return 0.5 * x * (1.0 + np.tanh(_K * (x + 0.044715 * x ** 3)))
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))

    def to_sql(self, sql, inputs, out_shape):
        if self.approximate == "tanh":
            u = f"({_K!r} * ({{v}} + 0.044715 * {{v}} * {{v}} * {{v}}))"
            tanh = f"(1.0 - 2.0 / (EXP(2.0 * LEAST(GREATEST({u}, -40.0), 40.0)) + 1.0))"
            return sql.scalar(inputs[0], f"(0.5 * {{v}} * (1.0 + {tanh}))")
        return sql.scalar(inputs[0], f"(0.5 * {{v}} * (1.0 + {erf_sql(f'({{v}} * {1 / math.sqrt(2.0)!r})')}))")
