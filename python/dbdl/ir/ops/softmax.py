"""Softmax: in SQL, a window over the row (or over the positions of a row that differ only along the
normalized axes: a PARTITION BY on their group, computed from i)."""

from __future__ import annotations

import numpy as np

from .axes import group_key, row_axis
from .base import Op, Shape


class Softmax(Op):
    op_types = ("Softmax",)

    def row_axes(self, rank: int) -> list[int]:
        """The per-row axes normalized together: before opset 13 every axis from ``axis`` (default 1)
        on, the input read as 2-D; from 13 the one ``axis`` (default -1)."""
        if getattr(self, "opset", 13) < 13:
            first = row_axis(int(self.attrs.get("axis", 1)), rank, self.op_type)
            return list(range(first, rank))
        return [row_axis(int(self.attrs.get("axis", -1)), rank, self.op_type)]

    def infer(self, shapes: list[Shape | None]) -> Shape:
        self.row_axes(len(shapes[0]))
        return shapes[0]

    def _normalized(self, x) -> tuple[int, ...]:
        return tuple(a + 1 for a in self.row_axes(x.ndim - 1))

    def run(self, x):
        axes = self._normalized(x)
        e = np.exp(x - x.max(axis=axes, keepdims=True))
        return e / e.sum(axis=axes, keepdims=True)

    def group(self, sql, out_shape: Shape) -> str | None:
        """The PARTITION BY expression (besides rid) of the normalized groups; None for the whole row."""
        axes = self.row_axes(len(out_shape))
        kept = [k for k in range(len(out_shape)) if k not in axes and out_shape[k] != 1]
        normalized = [k for k in axes if out_shape[k] != 1]
        if not normalized:  # over axes of size 1: every position alone
            return "i"
        return group_key(sql, out_shape, kept) if kept else None

    def to_sql(self, sql, inputs, out_shape):
        return sql.softmax(inputs[0], self.group(sql, out_shape))
