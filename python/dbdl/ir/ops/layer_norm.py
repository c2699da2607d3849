"""LayerNormalization (opset 17, what torch.nn.LayerNorm exports): mean and variance over the axes
from ``axis`` on, then × Scale + B (constants of the normalized shape)."""

from __future__ import annotations

from math import prod

import numpy as np

from .axes import group_key, row_axis
from .base import Op, Shape


class LayerNormalization(Op):
    op_types = ("LayerNormalization",)

    def first(self, rank: int) -> int:
        return row_axis(int(self.attrs.get("axis", -1)), rank, "LayerNormalization")

    @property
    def epsilon(self) -> float:
        return float(self.attrs.get("epsilon", 1e-5))

    def infer(self, shapes: list[Shape | None]) -> Shape:
        if any(s is not None for s in shapes[1:]):
            raise NotImplementedError("LayerNormalization with a scale or bias computed at run time")
        self.first(len(shapes[0]))
        return shapes[0]

    def run(self, x, *rest):
        axes = tuple(range(self.first(x.ndim - 1) + 1, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        y = (x - mean) / np.sqrt(var + self.epsilon)
        scale, bias = self.params.get(1), self.params.get(2)
        y = y * scale if scale is not None else y
        return y + bias if bias is not None else y

    def to_sql(self, sql, inputs, out_shape):
        first = self.first(len(out_shape))
        size = int(prod(out_shape[first:]))
        group = group_key(sql, out_shape, list(range(first))) if first > 0 else None
        scale, bias = self.params.get(1), self.params.get(2)
        flat = [None if p is None else np.broadcast_to(p, out_shape[first:]).reshape(-1) for p in (scale, bias)]
        if flat[0] is not None and bias is None and np.all(flat[0] == 1):
            flat[0] = None
        return sql.layer_norm(inputs[0], group, size, self.epsilon, *flat)
