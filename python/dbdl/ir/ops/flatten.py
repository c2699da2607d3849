"""Flatten from axis 1: a row becomes one vector (already so in the relation)."""

from __future__ import annotations

from math import prod

from .base import Op, Shape


class Flatten(Op):
    op_types = ("Flatten",)

    def infer(self, shapes: list[Shape | None]) -> Shape:
        axis = int(self.attrs.get("axis", 1))
        if (axis + len(shapes[0]) + 1 if axis < 0 else axis) != 1:
            raise NotImplementedError("Flatten on an axis other than 1")
        return (int(prod(shapes[0])) if shapes[0] else 1,)

    def run(self, x):
        return x.reshape(len(x), -1)

    def to_sql(self, sql, inputs, out_shape):
        return inputs[0]
