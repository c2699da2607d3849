"""Transpose: a permutation of the per-row axes, in SQL a renumbering of positions by arithmetic on i."""

from __future__ import annotations

import numpy as np

from .axes import strides
from .base import Op, Shape, per_row_size


class Transpose(Op):
    op_types = ("Transpose",)

    def row_perm(self, rank: int) -> list[int]:
        perm = [int(p) for p in self.attrs.get("perm", range(rank, -1, -1))]
        if perm[0] != 0:
            raise NotImplementedError("Transpose that moves the batch axis (each row is computed alone)")
        return [p - 1 for p in perm[1:]]

    def infer(self, shapes: list[Shape | None]) -> Shape:
        shape = shapes[0]
        return tuple(shape[p] for p in self.row_perm(len(shape)))

    def run(self, x):
        perm = self.attrs.get("perm")
        return np.transpose(x, [int(p) for p in perm] if perm is not None else None)

    def to_sql(self, sql, inputs, out_shape):
        perm = self.row_perm(len(out_shape))
        if perm == sorted(perm):
            return inputs[0]
        in_shape = [0] * len(out_shape)
        for k, p in enumerate(perm):
            in_shape[p] = out_shape[k]
        # output axis k is input axis perm[k]: its index there, times output axis k's stride
        terms = [(sql.axis_index(in_shape, p), s) for p, s in zip(perm, strides(out_shape))]
        return sql.positions(inputs[0], sql.flat_index(terms), per_row_size(out_shape))
