"""Sliding windows shared by Conv, MaxPool and AveragePool: the geometry from ONNX's attributes
(``kernel_shape``, ``strides``, ``pads``, ``auto_pad``, ``dilations``, ``ceil_mode``) and the
**patch map**, computed once in numpy: for each output position and kernel offset, the input
position it reads (-1 where it falls in the padding). numpy's evaluation gathers with it (im2col)
and the SQL form stores it as a table, so both read the same indices.

Per-row tensors are (C, *spatial); a position is flattened row-major over the spatial axes."""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, prod

import numpy as np

from .base import Shape


@dataclass(frozen=True)
class Window:
    spatial: tuple[int, ...]  # input spatial shape
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    begin: tuple[int, ...]  # padding before each spatial axis
    end: tuple[int, ...]  # and after
    out: tuple[int, ...]  # output spatial shape

    @property
    def n_in(self) -> int:
        return int(prod(self.spatial))

    @property
    def n_out(self) -> int:
        return int(prod(self.out))

    @property
    def n_kernel(self) -> int:
        return int(prod(self.kernel))

    def taps(self) -> np.ndarray:
        """(output positions, kernel offsets): the flat input position each reads, -1 in the padding."""
        d = len(self.spatial)
        grids = np.meshgrid(*[np.arange(n) for n in self.out], *[np.arange(k) for k in self.kernel], indexing="ij")
        flat = np.zeros(grids[0].shape, dtype=np.int64)
        valid = np.ones(grids[0].shape, dtype=bool)
        for a in range(d):
            pos = grids[a] * self.strides[a] - self.begin[a] + grids[d + a] * self.dilations[a]
            valid &= (pos >= 0) & (pos < self.spatial[a])
            flat = flat * self.spatial[a] + np.clip(pos, 0, self.spatial[a] - 1)
        flat[~valid] = -1
        return flat.reshape(self.n_out, self.n_kernel)

    def padded_counts(self) -> np.ndarray:
        """Per output position: how many kernel offsets fall inside the input plus its explicit
        padding (AveragePool's divisor with ``count_include_pad``; ceil_mode's extra edge excluded)."""
        d = len(self.spatial)
        grids = np.meshgrid(*[np.arange(n) for n in self.out], *[np.arange(k) for k in self.kernel], indexing="ij")
        inside = np.ones(grids[0].shape, dtype=bool)
        for a in range(d):
            pos = grids[a] * self.strides[a] - self.begin[a] + grids[d + a] * self.dilations[a]
            inside &= (pos >= -self.begin[a]) & (pos < self.spatial[a] + self.end[a])
        return inside.reshape(self.n_out, self.n_kernel).sum(axis=1)


def _ints(value, n: int, default: int) -> tuple[int, ...]:
    if value is None or not len(value):
        return (default,) * n
    return tuple(int(v) for v in value)


def window(op, shape: Shape, kernel: tuple[int, ...] | None = None, pool: bool = False) -> Window:
    """The window of ``op`` over a per-row input of ``shape`` (C, *spatial); ``kernel`` from the
    weight for a Conv without ``kernel_shape``."""
    if len(shape) < 2:
        raise NotImplementedError(f"{op.op_type} of a per-row tensor of shape {shape} (it takes (C, *spatial))")
    spatial = tuple(int(s) for s in shape[1:])
    d = len(spatial)
    a = op.attrs
    kernel = tuple(int(k) for k in a.get("kernel_shape", kernel or ()))
    if len(kernel) != d:
        raise NotImplementedError(f"{op.op_type} with kernel {kernel} over {d} spatial axes")
    strides = _ints(a.get("strides"), d, 1)
    dilations = _ints(a.get("dilations"), d, 1)
    pads = _ints(a.get("pads"), 2 * d, 0)
    if a.get("storage_order", 0):
        raise NotImplementedError(f"{op.op_type} with storage_order 1")
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    ceil_mode = bool(a.get("ceil_mode", 0)) if pool else False
    span = [(k - 1) * dl + 1 for k, dl in zip(kernel, dilations)]
    if auto in ("SAME_UPPER", "SAME_LOWER") and any(dl != 1 for dl in dilations):
        # onnxruntime refuses it for Conv, and for pools leaves the dilation out of the padding it computes
        raise NotImplementedError(f"{op.op_type} with dilations and auto_pad {auto}")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = tuple(ceil(s / st) for s, st in zip(spatial, strides))
        total = [max(0, (o - 1) * st + sp - s) for o, st, sp, s in zip(out, strides, span, spatial)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        begin, end = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        begin, end = [0] * d, [0] * d
        out = tuple((s - sp) // st + 1 for s, sp, st in zip(spatial, span, strides))
    elif auto == "NOTSET":
        begin, end = list(pads[:d]), list(pads[d:])
        out = []
        for s, b, e, sp, st in zip(spatial, begin, end, span, strides):
            n = (s + b + e - sp) / st
            o = int(np.ceil(n) if ceil_mode else np.floor(n)) + 1
            if ceil_mode and (o - 1) * st >= s + b:  # the last window would start in the end padding
                o -= 1
            out.append(o)
        out = tuple(out)
    else:
        raise NotImplementedError(f"{op.op_type} with auto_pad {auto}")
    if any(o < 1 for o in out):
        raise NotImplementedError(f"{op.op_type}: the window {kernel} does not fit the input {spatial}")
    return Window(spatial, kernel, strides, dilations, tuple(begin), tuple(end), tuple(out))


def gather(x: np.ndarray, taps: np.ndarray, fill: float) -> np.ndarray:
    """im2col of batched ``x`` (N, C, *spatial): (N, C, output positions, kernel offsets), ``fill``
    in the padding."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    flat = np.concatenate([flat, np.full((n, c, 1), fill, dtype=flat.dtype)], axis=2)
    return flat[:, :, np.where(taps >= 0, taps, flat.shape[2] - 1)]
