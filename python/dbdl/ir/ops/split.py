"""Split along a per-row axis into constant sizes: one IR node per output (``per_output``), each a
range of positions along the axis, as Slice computes it."""

from __future__ import annotations

import numpy as np

from .axes import row_axis, select_ranges
from .base import Op, Shape, per_row_size


class Split(Op):
    op_types = ("Split",)
    per_output = True
    #: set by the graph builder: which output this node computes, of how many
    output_index = 0
    split_count = 1

    def sizes(self, extent: int) -> list[int]:
        split = self.params.get(1, self.attrs.get("split"))
        if split is not None:
            return [int(s) for s in np.asarray(split).reshape(-1)]
        n = int(self.attrs.get("num_outputs", self.split_count))
        each = -(-extent // n)  # opset 18: all of ceil(extent / n), the last smaller
        return [min(each, extent - k * each) for k in range(n)]

    def piece(self, shape: Shape) -> tuple[int, int, int]:
        """(per-row axis, start, size) of this node's output."""
        axis = row_axis(int(self.attrs.get("axis", 0)), len(shape), "Split")
        sizes = self.sizes(shape[axis])
        if sum(sizes) != shape[axis] or len(sizes) != self.split_count:
            raise NotImplementedError(f"Split of {shape[axis]} values into {sizes} for {self.split_count} outputs")
        return axis, sum(sizes[:self.output_index]), sizes[self.output_index]

    def infer(self, shapes: list[Shape | None]) -> Shape:
        if any(s is not None for s in shapes[1:]):
            raise NotImplementedError("Split with sizes computed at run time")
        shape = self._in_shape = shapes[0]
        axis, _, size = self.piece(shape)
        return (*shape[:axis], size, *shape[axis + 1:])

    def run(self, x, *rest):
        axis = int(self.attrs.get("axis", 0))
        axis = axis + x.ndim if axis < 0 else axis
        sizes = self.sizes(x.shape[axis])
        start = sum(sizes[:self.output_index])
        return np.take(x, np.arange(start, start + sizes[self.output_index]), axis=axis)

    def to_sql(self, sql, inputs, out_shape):
        axis, start, size = self.piece(self._in_shape)
        return select_ranges(sql, inputs[0], self._in_shape, {axis: (start, 1, size)}, per_row_size(out_shape))

    _in_shape: Shape = ()
