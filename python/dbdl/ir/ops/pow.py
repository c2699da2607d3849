"""Pow: v ** e with a constant scalar exponent e (a tensor or per-position exponent is refused).
SQL's POWER raises where onnxruntime gives NaN (a negative base, fractional e) or +inf (0 to a
negative power): the SQL form gives those values."""

from __future__ import annotations

import numpy as np

from .base import Op


class Pow(Op):
    op_types = ("Pow",)

    def exponent(self) -> float:
        return float(np.asarray(self.params[1]).reshape(-1)[0])

    def infer(self, shapes):
        if 0 in self.params or 1 not in self.params or np.asarray(self.params[1]).size != 1:
            raise NotImplementedError("Pow takes one constant number as its exponent in SQL (a tensor or "
                                      "per-position exponent is not supported)")
        return shapes[0]

    def run(self, x, e=None):
        exponent = self.arg((x, e), 1).astype(x.dtype)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.power(x, exponent)
        # C's pow (onnxruntime): -inf ** e is +inf for a fractional e > 0 and 0 for e < 0; numpy gives NaN
        fractional = exponent != np.round(exponent)
        return np.where(np.isneginf(x) & fractional, np.where(exponent > 0, np.inf, 0.0).astype(x.dtype), out)

    def to_sql(self, sql, inputs, out_shape):
        e = self.exponent()
        if e == 1.0:
            return sql.scalar(inputs[0], "{v}")
        if e == 2.0:
            return sql.scalar(inputs[0], "({v} * {v})")
        if e == 0.0:
            return sql.scalar(inputs[0], "1.0")
        cases = []
        if e != int(e):
            # -inf ** e is +inf for e > 0, 0 for e < 0 (C's pow); other negative bases NaN
            cases.append(f"WHEN {{v}} = CAST('-Infinity' AS DOUBLE) THEN {'CAST(' + repr('Infinity') + ' AS DOUBLE)' if e > 0 else '0.0'}")
            cases.append("WHEN {v} < 0 THEN CAST('NaN' AS DOUBLE)")
        if e < 0:
            cases.append("WHEN {v} = 0 THEN CAST('Infinity' AS DOUBLE)")
        power = f"POWER({{v}}, {e!r})"
        return sql.scalar(inputs[0], f"CASE {' '.join(cases)} ELSE {power} END" if cases else power)
