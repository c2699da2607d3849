"""ReduceMean, ReduceSum, ReduceMax, ReduceMin over per-row axes (from the ``axes`` attribute or,
by opset, a constant input; ``keepdims``): in SQL one GROUP BY per output position, computed from i."""

from __future__ import annotations

import numpy as np

from .axes import group_key, row_axes
from .base import Op, Shape, per_row_size

_NUMPY = {"ReduceMean": np.mean, "ReduceSum": np.sum, "ReduceMax": np.max, "ReduceMin": np.min}
_SQL = {"ReduceMean": "AVG(v)", "ReduceSum": "SUM(v)", "ReduceMax": "MAX(v)", "ReduceMin": "MIN(v)"}


class Reduce(Op):
    op_types = tuple(_NUMPY)

    def full_axes(self, rank_full: int) -> tuple[int, ...] | None:
        """The ONNX axes reduced; None for "all of them" (no axes)."""
        axes = self.params.get(1, self.attrs.get("axes"))
        if axes is None or not len(np.asarray(axes).reshape(-1)):
            return None
        return tuple(sorted(int(a) + rank_full if int(a) < 0 else int(a) for a in np.asarray(axes).reshape(-1)))

    def row_axes(self, shape: Shape) -> list[int]:
        axes = self.full_axes(len(shape) + 1)
        if axes is None:
            if self.attrs.get("noop_with_empty_axes", 0):
                return []
            raise NotImplementedError(f"{self.op_type} over every axis, the batch axis among them")
        return row_axes(axes, len(shape), self.op_type)

    def infer(self, shapes: list[Shape | None]) -> Shape:
        if any(s is not None for s in shapes[1:]):
            raise NotImplementedError(f"{self.op_type} with axes computed at run time")
        shape = self._in_shape = shapes[0]
        axes = self.row_axes(shape)
        if self.attrs.get("keepdims", 1):
            return tuple(1 if k in axes else d for k, d in enumerate(shape))
        return tuple(d for k, d in enumerate(shape) if k not in axes)

    def run(self, x, *rest):
        axes = self.full_axes(x.ndim)
        if axes is None and self.attrs.get("noop_with_empty_axes", 0):
            return x
        return _NUMPY[self.op_type](x, axis=axes, keepdims=bool(self.attrs.get("keepdims", 1)))

    def to_sql(self, sql, inputs, out_shape):
        shape = self._in_shape
        axes = self.row_axes(shape)
        if not axes:
            return inputs[0]
        key = group_key(sql, shape, [k for k in range(len(shape)) if k not in axes])
        return sql.reduce(inputs[0], key, _SQL[self.op_type], per_row_size(out_shape))

    _in_shape: Shape = ()
