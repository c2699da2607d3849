"""Erf: the error function. Neither DuckDB nor PostgreSQL has one: the SQL form is Abramowitz and
Stegun's 7.1.26 (|error| <= 1.5e-7, below float32's resolution near 1),
erf(x) = sign(x) (1 - t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) e ** -x²), t = 1 / (1 + p |x|)."""

from __future__ import annotations

import math

import numpy as np

from .base import Op

_P = 0.3275911
_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf_sql(v: str) -> str:
    """The SQL expression of erf(``v``) (``v`` an SQL expression, repeated)."""
    t = f"(1.0 / (1.0 + {_P!r} * ABS({v})))"
    poly = f"{_A[4]!r}"
    for a in reversed(_A[:4]):
        poly = f"({a!r} + {t} * {poly})"
    # x² bounded: e ** -80 is far below float32's resolution, and EXP never underflows to an error
    magnitude = f"(1.0 - {t} * {poly} * EXP(-LEAST({v} * {v}, 80.0)))"
    return f"(CASE WHEN {v} < 0 THEN -{magnitude} ELSE {magnitude} END)"


_erf = np.vectorize(math.erf, otypes=[np.float64])


def erf(x: np.ndarray) -> np.ndarray:
    return _erf(x).astype(np.result_type(x, np.float32))


class Erf(Op):
    op_types = ("Erf",)

    def run(self, x):
        return erf(x)

    def to_sql(self, sql, inputs, out_shape):
        return sql.scalar(inputs[0], erf_sql("{v}"))
