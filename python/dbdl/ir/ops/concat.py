"""Concat along a per-row axis: each input's positions moved past the inputs before it, UNION ALL."""

from __future__ import annotations

from math import prod

import numpy as np

from .axes import row_axis
from .base import Op, Shape, per_row_size


class Concat(Op):
    op_types = ("Concat",)

    def infer(self, shapes: list[Shape | None]) -> Shape:
        if any(s is None for s in shapes):
            raise NotImplementedError("Concat of a per-row tensor with a constant")
        rank = len(shapes[0])
        axis = row_axis(int(self.attrs.get("axis", 0)), rank, "Concat")
        if any(len(s) != rank or s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:] for s in shapes):
            raise NotImplementedError(f"Concat of per-row shapes {shapes} along axis {axis + 1}")
        return (*shapes[0][:axis], sum(s[axis] for s in shapes), *shapes[0][axis + 1:])

    def run(self, *inputs):
        return np.concatenate(inputs, axis=int(self.attrs.get("axis", 0)))

    def to_sql(self, sql, inputs, out_shape):
        rank = len(out_shape)
        axis = row_axis(int(self.attrs.get("axis", 0)), rank, "Concat")
        inner = int(prod(out_shape[axis + 1:]))
        total = out_shape[axis]
        widths = [r.width for r in inputs]
        parts, offset = [], 0
        for x, width in zip(inputs, widths):
            size = width // (inner * int(prod(out_shape[:axis])))  # this input's extent along the axis
            expr = f"i + {offset * inner}" if offset else "i"
            if axis > 0 and size != total:  # each outer block grows by the other inputs' values
                expr = f"{expr} + {sql.idiv('i', size * inner)} * {(total - size) * inner}"
            parts.append(x if expr == "i" else sql.positions(x, expr, width))
            offset += size
        return sql.union(parts, per_row_size(out_shape))
