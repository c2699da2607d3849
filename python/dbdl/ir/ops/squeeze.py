"""Squeeze and Unsqueeze: axes of size 1 taken away or added; the values and their order stay."""

from __future__ import annotations

import numpy as np

from .base import Op, Shape


class _AxesOfOne(Op):
    def axes(self) -> list[int] | None:
        axes = self.params.get(1, self.attrs.get("axes"))
        return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]

    def to_sql(self, sql, inputs, out_shape):
        return inputs[0]


class Squeeze(_AxesOfOne):
    op_types = ("Squeeze",)

    def _full_axes(self, rank_full: int, shape_full) -> tuple[int, ...]:
        axes = self.axes()
        if axes is None:  # every per-row axis of size 1
            return tuple(k for k in range(1, rank_full) if shape_full[k] == 1)
        return tuple(sorted(a + rank_full if a < 0 else a for a in axes))

    def infer(self, shapes: list[Shape | None]) -> Shape:
        shape = shapes[0]
        full = (None, *shape)
        axes = self._full_axes(len(full), full)
        if 0 in axes:
            raise NotImplementedError("Squeeze of the batch axis (each row is computed alone)")
        if any(full[a] != 1 for a in axes):
            raise NotImplementedError(f"Squeeze of axes {list(axes)} of a row of shape {shape}: not all of size 1")
        return tuple(d for k, d in enumerate(shape) if k + 1 not in axes)

    def run(self, x, axes=None):
        return np.squeeze(x, axis=self._full_axes(x.ndim, x.shape))


class Unsqueeze(_AxesOfOne):
    op_types = ("Unsqueeze",)

    def _full_axes(self, rank_out: int) -> list[int]:
        axes = self.axes()
        if axes is None:
            raise NotImplementedError("Unsqueeze without axes")
        return sorted(a + rank_out if a < 0 else a for a in axes)

    def infer(self, shapes: list[Shape | None]) -> Shape:
        shape = shapes[0]
        axes = self._full_axes(len(shape) + 1 + len(self.axes() or ()))
        if 0 in axes:
            raise NotImplementedError("Unsqueeze before the batch axis (each row is computed alone)")
        out = list(shape)
        for a in axes:
            out.insert(a - 1, 1)
        return tuple(out)

    def run(self, x, axes=None):
        out = x
        for a in self._full_axes(x.ndim + len(self.axes() or ())):
            out = np.expand_dims(out, a)
        return out
