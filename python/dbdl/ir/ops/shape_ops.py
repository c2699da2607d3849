"""Flatten, Reshape, Identity, Cast: they change how a row's values are addressed, not the values
(Cast to a floating type only); in the relation each row is already a flat vector."""

from __future__ import annotations

from math import prod

import numpy as np

from .base import Op, Shape


class Identity(Op):
    op_types = ("Identity", "Dropout")

    def run(self, x, *rest):
        return x

    def flops(self, in_shapes, out_shape):
        return 0

    def to_sql(self, sql, inputs, out_shape):
        return inputs[0]


class Flatten(Op):
    op_types = ("Flatten",)

    def infer(self, shapes: list[Shape | None]) -> Shape:
        if int(self.attrs.get("axis", 1)) != 1:
            raise NotImplementedError("Flatten on an axis other than 1")
        return (int(prod(shapes[0])) if shapes[0] else 1,)

    def flops(self, in_shapes, out_shape):
        return 0

    def run(self, x):
        return x.reshape(len(x), -1)

    def to_sql(self, sql, inputs, out_shape):
        return inputs[0]


class Reshape(Op):
    op_types = ("Reshape",)

    def target(self, in_shape: Shape) -> Shape:
        spec = [int(d) for d in self.params[1]]
        if not spec or spec[0] not in (0, -1):
            raise NotImplementedError("Reshape that moves the batch axis")
        rest = spec[1:]
        if -1 in rest:
            known = int(prod(d for d in rest if d != -1)) or 1
            rest = [int(prod(in_shape)) // known if d == -1 else d for d in rest]
        return tuple(rest)

    def infer(self, shapes: list[Shape | None]) -> Shape:
        out = self.target(shapes[0])
        if int(prod(out)) != int(prod(shapes[0])):
            raise NotImplementedError(f"Reshape of {shapes[0]} to {out}")
        return out

    def flops(self, in_shapes, out_shape):
        return 0

    def run(self, x, shape=None):
        return x.reshape((len(x), *self.target(x.shape[1:])))

    def to_sql(self, sql, inputs, out_shape):
        return inputs[0]


class Cast(Op):
    op_types = ("Cast",)
    _FLOATS = {1: np.float32, 10: np.float16, 11: np.float64}

    def run(self, x):
        to = int(self.attrs.get("to", 1))
        if to not in self._FLOATS:
            raise NotImplementedError(f"Cast to ONNX type {to}")
        return x.astype(self._FLOATS[to])

    def flops(self, in_shapes, out_shape):
        return 0

    def to_sql(self, sql, inputs, out_shape):
        if int(self.attrs.get("to", 1)) not in self._FLOATS:
            raise NotImplementedError(f"Cast to ONNX type {self.attrs.get('to')}")
        return inputs[0]
