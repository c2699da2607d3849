"""Slice with constant starts, ends, axes and steps: in SQL, the positions kept (a WHERE on the
index along each axis) and renumbered."""

from __future__ import annotations

from .axes import row_axis, select_ranges
from .base import Op, Shape, per_row_size


class Slice(Op):
    op_types = ("Slice",)

    def _spec(self, rank_full: int):
        """[(full axis, start, end, step)] from the attributes (opset < 10) or the constant inputs."""
        if "starts" in self.attrs:
            starts, ends = self.attrs["starts"], self.attrs["ends"]
            axes = self.attrs.get("axes", range(len(starts)))
            steps = [1] * len(starts)
        else:
            if any(k not in self.params for k in (1, 2)):
                raise NotImplementedError("Slice with starts or ends computed at run time")
            starts, ends = self.params[1].reshape(-1), self.params[2].reshape(-1)
            axes = self.params[3].reshape(-1) if 3 in self.params else range(len(starts))
            steps = self.params[4].reshape(-1) if 4 in self.params else [1] * len(starts)
        return [(int(a) + rank_full if int(a) < 0 else int(a), int(s), int(e), int(t))
                for a, s, e, t in zip(axes, starts, ends, steps)]

    def ranges(self, shape: Shape) -> dict[int, tuple[int, int, int]]:
        """per-row axis -> (start, step, count)."""
        out = {}
        for axis, start, end, step in self._spec(len(shape) + 1):
            if axis == 0:
                if (start, step) == (0, 1) and end >= 2**31 - 1:
                    continue  # all rows
                raise NotImplementedError("Slice of the batch axis (each row is computed alone)")
            k = row_axis(axis, len(shape), "Slice")
            kept = range(*slice(start, end, step).indices(shape[k]))
            if not len(kept):
                raise NotImplementedError(f"Slice that keeps nothing of axis {axis}")
            out[k] = (kept.start, kept.step, len(kept))
        return out

    def infer(self, shapes: list[Shape | None]) -> Shape:
        if any(s is not None for s in shapes[1:]):
            raise NotImplementedError("Slice with starts, ends, axes or steps computed at run time")
        shape = self._in_shape = shapes[0]
        ranges = self.ranges(shape)
        return tuple(ranges[k][2] if k in ranges else d for k, d in enumerate(shape))

    def run(self, x, *rest):
        index = [slice(None)] * x.ndim
        for axis, start, end, step in self._spec(x.ndim):
            index[axis] = slice(start, end, step)
        return x[tuple(index)]

    def to_sql(self, sql, inputs, out_shape):
        shape = self._in_shape
        return select_ranges(sql, inputs[0], shape, self.ranges(shape), per_row_size(out_shape))

    _in_shape: Shape = ()
