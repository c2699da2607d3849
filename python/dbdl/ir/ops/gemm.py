"""Gemm: Y = alpha * A' B' + beta * C, with B (and C) constant weights: a dense layer."""

from __future__ import annotations

import numpy as np

from .base import Op, Shape


class Gemm(Op):
    op_types = ("Gemm",)

    def weight(self) -> np.ndarray:
        """The (in x out) weight matrix with transB and alpha applied (computed once per stored
        matrix: the planner asks for it per estimate, and a 100,000 × 256 copy costs ~25 ms)."""
        w = self.params[1]
        key = (id(w), self.attrs.get("transB", 0), self.attrs.get("alpha", 1.0))
        cached = getattr(self, "_weight", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        if self.attrs.get("transB", 0):
            w = w.T
        w = (w * self.attrs.get("alpha", 1.0)).astype(np.float32)
        self._weight = (key, w)
        return w

    def bias(self) -> np.ndarray | None:
        c = self.params.get(2)
        if c is None:
            return None
        return (np.broadcast_to(c, (self.weight().shape[1],)) * self.attrs.get("beta", 1.0)).astype(np.float32)

    def infer(self, shapes: list[Shape | None]) -> Shape:
        return (self.weight().shape[1],)

    def run(self, *inputs: np.ndarray) -> np.ndarray:
        a = inputs[0]
        if self.attrs.get("transA", 0):
            raise NotImplementedError("Gemm with transA on the batch input")
        y = a @ self.weight()
        b = self.bias()
        return y + b if b is not None else y

    def to_sql(self, sql, inputs, out_shape):
        return sql.dense(inputs[0], self.weight(), self.bias())
