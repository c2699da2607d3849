"""MaxPool (1-D, 2-D, …: strides, pads, ``auto_pad``, dilations, ``ceil_mode``): in SQL ``MAX(v)
GROUP BY`` the output position over a patch map (``_window.py``); padding reads nothing."""

from __future__ import annotations

import numpy as np

from ._window import gather, window
from .base import Op, Shape


def pool_patch(win, channels: int, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The patch map of a pooling window over every channel: (i, o[, w]) for each tap inside the input."""
    taps = win.taps()
    if not (taps >= 0).any(axis=1).all():
        raise NotImplementedError("a pooling window that lies wholly in the padding")
    o, k = np.nonzero(taps >= 0)
    c = np.arange(channels)[:, None]
    patch = {"i": (c * win.n_in + taps[o, k]).ravel(), "o": (c * win.n_out + o).ravel()}
    if weights is not None:
        patch["w"] = np.broadcast_to(weights[o], (channels, len(o))).ravel().astype(np.float64)
    return patch


class MaxPool(Op):
    op_types = ("MaxPool",)

    def infer(self, shapes: list[Shape | None]) -> Shape:
        self._in_shape = tuple(shapes[0])
        return (self._in_shape[0], *window(self, self._in_shape, pool=True).out)

    def run(self, x):
        win = window(self, tuple(x.shape[1:]), pool=True)
        cols = gather(x, win.taps(), -np.inf)
        return cols.max(axis=3).reshape(*x.shape[:2], *win.out)

    def to_sql(self, sql, inputs, out_shape):
        win = window(self, self._in_shape, pool=True)
        return sql.pool(inputs[0], pool_patch(win, self._in_shape[0]), "MAX", self._in_shape[0] * win.n_out)

    def join_rows(self, layout: str) -> int:
        """Joined rows per row of input: one per window tap inside the input, each channel."""
        return int(self._in_shape[0]) * int((window(self, self._in_shape, pool=True).taps() >= 0).sum())

    _in_shape: Shape = ()
