"""Clip: v bounded by constant min and max (inputs 2 and 3 from opset 11, attributes before);
a bound computed at run time is refused."""

from __future__ import annotations

import numpy as np

from .base import Op


class Clip(Op):
    op_types = ("Clip",)

    def bounds(self) -> tuple[float | None, float | None]:
        def bound(position: int, attr: str) -> float | None:
            if position in self.params:
                value = np.asarray(self.params[position])
                if value.size != 1:
                    raise NotImplementedError(f"Clip with a {attr} of shape {value.shape} (ONNX takes a scalar)")
                return float(value.reshape(-1)[0])
            return float(self.attrs[attr]) if attr in self.attrs else None

        # a missing bound is float32's lowest / largest value, as ONNX defines it (so Clip(-inf) with
        # only a max is -FLT_MAX in onnxruntime)
        lo, hi = bound(1, "min"), bound(2, "max")
        largest = float(np.finfo(np.float32).max)
        return (-largest if lo is None else lo), (largest if hi is None else hi)

    def infer(self, shapes):
        if any(s is not None for s in shapes[1:]):
            raise NotImplementedError("Clip with a min or max computed at run time (SQL takes constant bounds)")
        self.bounds()
        return shapes[0]

    def run(self, x, *rest):
        lo, hi = self.bounds()
        if lo is not None:
            x = np.maximum(x, np.asarray(lo, x.dtype))
        if hi is not None:
            x = np.minimum(x, np.asarray(hi, x.dtype))
        return x

    def to_sql(self, sql, inputs, out_shape):
        lo, hi = self.bounds()
        template = "{v}"
        if lo is not None:
            template = f"GREATEST({template}, {lo!r})"
        if hi is not None:
            # NaN stays NaN, as onnxruntime (LEAST would take the bound: SQL orders NaN above every number)
            template = (f"CASE WHEN {{v}} > CAST('Infinity' AS DOUBLE) THEN CAST('NaN' AS DOUBLE) "
                        f"ELSE LEAST({template}, {hi!r}) END")
        return sql.scalar(inputs[0], template)
