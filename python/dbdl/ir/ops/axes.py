"""Axis bookkeeping shared by the shape and reduction operators: ONNX axes count the batch axis
(0), per-row shapes do not; and the SQL position arithmetic of a row-major per-row tensor."""

from __future__ import annotations

from math import prod

from .base import Shape


def row_axis(axis: int, rank: int, op: str) -> int:
    """The per-row axis of ONNX axis ``axis`` of a tensor with ``rank`` per-row axes."""
    full = int(axis) + rank + 1 if int(axis) < 0 else int(axis)
    if full == 0:
        raise NotImplementedError(f"{op} over the batch axis (each row is computed alone)")
    if not 0 < full <= rank:
        raise NotImplementedError(f"{op} axis {axis} of a tensor with {rank} per-row axes")
    return full - 1


def row_axes(axes, rank: int, op: str) -> list[int]:
    return sorted({row_axis(a, rank, op) for a in axes})


def group_key(sql, shape: Shape, kept: list[int]) -> str:
    """The position, in the tensor of the ``kept`` axes only, of position i of a tensor of ``shape``:
    positions with equal keys differ only along the other axes (a softmax's or a reduction's group).
    Runs of adjacent kept axes take one division and one remainder each."""
    kept = sorted(kept)
    if not kept:
        return "0"
    if len(kept) == len(shape):
        return "i"
    blocks: list[list[int]] = []
    for k in kept:
        if blocks and blocks[-1][-1] == k - 1:
            blocks[-1].append(k)
        else:
            blocks.append([k])
    terms = []
    for block in blocks:
        stride = int(prod(shape[block[-1] + 1:]))
        size = int(prod(shape[block[0]:block[-1] + 1]))
        index = sql.idiv("i", stride)
        if block[0] > 0:
            index = sql.imod(index, size)
        out_stride = int(prod(shape[k] for k in kept if k > block[-1]))
        terms.append((index, out_stride))
    return sql.flat_index(terms)


def strides(shape: Shape) -> list[int]:
    return [int(prod(shape[k + 1:])) for k in range(len(shape))]


def select_ranges(sql, x, shape: Shape, ranges: dict[int, tuple[int, int, int]], width: int):
    """The values of ``x`` (per-row ``shape``) at indices start, start + step, … (count of them) along
    each axis of ``ranges`` (axis -> (start, step, count)), renumbered from 0 along that axis."""
    if all(ranges[k] == (0, 1, shape[k]) for k in ranges):
        return x
    out_shape = [ranges[k][2] if k in ranges else d for k, d in enumerate(shape)]
    where, terms = [], []
    for k, out_stride in enumerate(strides(out_shape)):
        a = sql.axis_index(shape, k)
        if k not in ranges:
            terms.append((a, out_stride))
            continue
        start, step, count = ranges[k]
        last = start + step * (count - 1)
        low, high = (start, last) if step > 0 else (last, start)
        if low > 0:
            where.append(f"{a} >= {low}")
        if high < shape[k] - 1:
            where.append(f"{a} <= {high}")
        if abs(step) != 1:
            where.append(f"{sql.imod(f'({a} - {low})', abs(step))} = 0")
        offset = f"({a} - {start})" if step > 0 else f"({start} - {a})"
        if start == 0 and step > 0:
            offset = a
        terms.append((sql.idiv(offset, abs(step)), out_stride))
    return sql.positions(x, sql.flat_index(terms), width, " AND ".join(where) or None)
