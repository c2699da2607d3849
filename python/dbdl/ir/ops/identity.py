"""Identity (and Dropout at inference): the input unchanged."""

from __future__ import annotations

from .base import Op


class Identity(Op):
    op_types = ("Identity", "Dropout")

    def run(self, x, *rest):
        return x

    def to_sql(self, sql, inputs, out_shape):
        return inputs[0]
