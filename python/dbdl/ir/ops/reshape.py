"""Reshape that keeps the batch axis: how a row's values are addressed, not the values."""

from __future__ import annotations

from math import prod

from .base import Op, Shape


class Reshape(Op):
    op_types = ("Reshape",)

    def target(self, in_shape: Shape) -> Shape:
        if 1 not in self.params and "shape" not in self.attrs:
            raise NotImplementedError("Reshape to a shape computed at run time (export with a fixed shape)")
        spec = [int(d) for d in self.params.get(1, self.attrs.get("shape"))]  # opset < 5: an attribute
        if spec and spec[0] == 1 and getattr(self, "batch_one", False):
            spec[0] = -1  # a model exported with batch 1: its leading 1 is the row itself
        if not spec or spec[0] not in (0, -1):
            raise NotImplementedError("Reshape that moves the batch axis")
        rest = spec[1:]
        if not self.attrs.get("allowzero", 0):  # 0: the input's size on that axis
            rest = [in_shape[k] if d == 0 and k < len(in_shape) else d for k, d in enumerate(rest)]
        if -1 in rest:
            known = int(prod(d for d in rest if d != -1)) or 1
            rest = [int(prod(in_shape)) // known if d == -1 else d for d in rest]
        return tuple(rest)

    def infer(self, shapes: list[Shape | None]) -> Shape:
        self._row_wise = True  # a runtime input (constants are folded without infer)
        out = self.target(shapes[0])
        if int(prod(out)) != int(prod(shapes[0])):
            raise NotImplementedError(f"Reshape of {shapes[0]} to {out}")
        return out

    def run(self, x, shape=None):
        spec = [int(d) for d in self.params.get(1, self.attrs.get("shape", [0, -1]))]
        if getattr(self, "_row_wise", False):
            return x.reshape((len(x), *self.target(x.shape[1:])))
        if spec and spec[0] not in (0, -1):  # a constant's reshape (folded): the whole tensor's shape
            zero = not self.attrs.get("allowzero", 0)
            return x.reshape([x.shape[k] if d == 0 and zero else d for k, d in enumerate(spec)])
        return x.reshape((len(x), *self.target(x.shape[1:])))

    def to_sql(self, sql, inputs, out_shape):
        return inputs[0]
