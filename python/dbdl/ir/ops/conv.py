"""Conv (1-D, 2-D, any number of spatial axes) with a constant weight and bias: strides, pads,
``auto_pad``, dilations, groups (depthwise too). In SQL an im2col over relations: the activations
join a static patch map (input position → output position, channel × kernel offset) and the
kernel table (channel × kernel offset → output channel, weight), ``SUM … GROUP BY`` the output
position, then the bias. Padding is the positions that map outside the input: they have no patch
row, so they add nothing. A BatchNormalization right after it is folded into its weight and bias
(``ir/graph.py``)."""

from __future__ import annotations

import numpy as np

from ._window import Window, gather, window
from .base import Op, Shape


class Conv(Op):
    op_types = ("Conv",)

    def weight(self) -> np.ndarray:
        if 1 not in self.params:
            raise NotImplementedError("Conv with a weight computed at run time")
        return self.params[1]

    def bias(self) -> np.ndarray | None:
        return self.params.get(2)

    @property
    def group(self) -> int:
        return int(self.attrs.get("group", 1))

    def geometry(self, shape: Shape) -> Window:
        w = self.weight()
        if w.ndim != len(shape) + 1:
            raise NotImplementedError(f"Conv with a weight of shape {w.shape} over rows of shape {shape}")
        if shape[0] != w.shape[1] * self.group or w.shape[0] % self.group:
            raise NotImplementedError(f"Conv with a weight of shape {w.shape} and group {self.group} over "
                                      f"{shape[0]} input channels")
        return window(self, shape, tuple(w.shape[2:]))

    def infer(self, shapes: list[Shape | None]) -> Shape:
        if any(s is not None for s in shapes[1:]):
            raise NotImplementedError("Conv with a weight or bias computed at run time")
        self._in_shape = tuple(shapes[0])
        return (int(self.weight().shape[0]), *self.geometry(self._in_shape).out)

    def run(self, x, *rest):
        win = self.geometry(tuple(x.shape[1:]))
        w = self.weight()
        g, (co, cg) = self.group, w.shape[:2]
        cols = gather(x, win.taps(), 0.0)  # (N, C, out, kernel)
        cols = cols.reshape(len(x), g, cg, win.n_out, win.n_kernel)
        y = np.einsum("ngcok,gdck->ngdo", cols, w.reshape(g, co // g, cg, win.n_kernel).astype(cols.dtype))
        y = y.reshape(len(x), co, *win.out)
        b = self.bias()
        return (y + b.reshape(co, *([1] * len(win.out)))).astype(x.dtype) if b is not None else y.astype(x.dtype)

    def tables(self):
        """The patch map (i, o, ck), the kernel (ck, co, w) of its nonzero weights, and whether
        every output position meets at least one weight (else the bias fills the missing ones)."""
        if getattr(self, "_tables", None) is None or self._tables[0] != (self._in_shape, id(self.params)):
            self._tables = ((self._in_shape, id(self.params)), self._make_tables())
        return self._tables[1]

    def _make_tables(self):
        win = self.geometry(self._in_shape)
        w = self.weight().astype(np.float64)
        co, cg = w.shape[:2]
        c_in = self._in_shape[0]
        taps = win.taps()
        o, k = np.nonzero(taps >= 0)
        pos = taps[o, k]
        channels = np.arange(c_in)[:, None]
        patch = {"i": (channels * win.n_in + pos).ravel(), "o": np.broadcast_to(o, (c_in, len(o))).ravel(),
                 "ck": (channels * win.n_kernel + k).ravel()}
        per_group = co // self.group
        out_c = np.arange(co)
        # output channel c reads input channels (c // per_group) * cg + 0 … cg - 1
        in_c = (out_c // per_group)[:, None] * cg + np.arange(cg)[None, :]  # (co, cg)
        flat = w.reshape(co, cg, win.n_kernel)
        keep = flat != 0
        cc, gg, kk = np.nonzero(keep)
        kernel = {"ck": in_c[cc, gg] * win.n_kernel + kk, "co": cc, "w": flat[keep]}
        # an output position is complete when some tap inside the input meets a nonzero weight
        hit = (keep.any(axis=1)[:, None, :] & (taps >= 0)[None, :, :]).any(axis=2)  # (co, out)
        return patch, kernel, bool(hit.all()), win.n_out

    def blocked_tables(self):
        """The blocked layout's patch map (i, o, g, ck: every tap, -1 in the padding; ck the
        position within the group's patch) and kernel (co, g, wcol: its cg × kernel weights, b)."""
        import pyarrow as pa

        win = self.geometry(self._in_shape)
        w = self.weight().astype(np.float64)
        co, cg = w.shape[:2]
        taps = win.taps()
        o, k = np.nonzero(np.ones_like(taps, dtype=bool))
        pos = taps[o, k]
        c = np.arange(self._in_shape[0])[:, None]
        patch = {"i": np.where(pos >= 0, c * win.n_in + pos, -1).ravel(),
                 "o": np.broadcast_to(o, (len(c), len(o))).ravel(), "g": np.broadcast_to(c // cg, (len(c), len(o))).ravel(),
                 "ck": ((c % cg) * win.n_kernel + k).ravel()}
        size = cg * win.n_kernel
        offsets = pa.array(np.arange(0, (co + 1) * size, size, dtype=np.int32))
        b = self.bias()
        kernel = {"co": np.arange(co), "g": np.arange(co) // (co // self.group),
                  "wcol": pa.ListArray.from_arrays(offsets, pa.array(w.reshape(-1))),
                  "b": (np.zeros(co) if b is None else np.asarray(b, dtype=np.float64).reshape(-1))}
        return patch, kernel, win.n_out

    def to_sql(self, sql, inputs, out_shape):
        if sql.layout == "blocked" and sql.spell.dot:
            patch, kernel, n_out = self.blocked_tables()
            return sql.conv_blocked(inputs[0], patch, kernel, n_out, int(self.weight().shape[0]) * n_out)
        patch, kernel, complete, n_out = self.tables()
        b = self.bias()
        co = int(self.weight().shape[0])
        bias = None if b is None else np.repeat(np.asarray(b, dtype=np.float64).reshape(-1), n_out)
        return sql.conv(inputs[0], patch, kernel, n_out, bias, co * n_out, complete)

    @property
    def macs(self) -> int:
        """Multiply-adds per row (the rows of the patch map ⋈ kernel join)."""
        patch, kernel, _, _ = self.tables()
        counts = np.bincount(kernel["ck"], minlength=int(patch["ck"].max(initial=0)) + 1)
        return int(counts[patch["ck"]].sum())

    def join_rows(self, layout: str) -> int:
        """Joined rows per row of input that the SQL form aggregates: one per multiply-add in the
        element layout; one per im2col value (padding included) in the blocked one."""
        if layout == "blocked":
            win = self.geometry(self._in_shape)
            return int(self._in_shape[0]) * win.n_out * win.n_kernel
        return self.macs

    _in_shape: Shape = ()
