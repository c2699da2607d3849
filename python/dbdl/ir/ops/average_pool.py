"""AveragePool (strides, pads, ``auto_pad``, ``ceil_mode``, ``count_include_pad`` either way): in
SQL ``SUM(v × w) GROUP BY`` the output position over a patch map whose ``w`` is 1 / the window's
divisor (the taps inside the input, or with ``count_include_pad`` those inside the explicit padding
too: onnxruntime's rule)."""

from __future__ import annotations

import numpy as np

from ._window import gather, window
from .base import Op, Shape
from .max_pool import pool_patch


class AveragePool(Op):
    op_types = ("AveragePool",)

    def divisors(self, win) -> np.ndarray:
        if self.attrs.get("count_include_pad", 0):
            return win.padded_counts()
        return (win.taps() >= 0).sum(axis=1)

    def infer(self, shapes: list[Shape | None]) -> Shape:
        self._in_shape = tuple(shapes[0])
        return (self._in_shape[0], *window(self, self._in_shape, pool=True).out)

    def run(self, x):
        win = window(self, tuple(x.shape[1:]), pool=True)
        cols = gather(x, win.taps(), 0.0)
        y = cols.sum(axis=3) / self.divisors(win).astype(x.dtype)
        return y.astype(x.dtype).reshape(*x.shape[:2], *win.out)

    def to_sql(self, sql, inputs, out_shape):
        win = window(self, self._in_shape, pool=True)
        weights = 1.0 / self.divisors(win).astype(np.float64)
        return sql.pool(inputs[0], pool_patch(win, self._in_shape[0], weights), "SUM", self._in_shape[0] * win.n_out)

    def join_rows(self, layout: str) -> int:
        """Joined rows per row of input: one per window tap inside the input, each channel."""
        return int(self._in_shape[0]) * int((window(self, self._in_shape, pool=True).taps() >= 0).sum())

    _in_shape: Shape = ()
