"""Imputer (ai.onnx.ml): a value equal to replaced_value_float (NaN matches NaN) becomes the
imputed value of its position. (SQL NULL features never reach a model: the row's prediction is NULL.)"""

from __future__ import annotations

import math

import numpy as np

from . import _ml
from .base import Op


class Imputer(Op):
    op_types = ("Imputer",)

    def _constants(self):
        values = _ml.floats(self.attrs, "imputed_value_floats")
        replaced = float(self.attrs.get("replaced_value_float", 0.0))
        return values, replaced

    def infer(self, shapes):
        values, _ = self._constants()
        if values is None:
            raise NotImplementedError("Imputer of integers (imputed_value_int64s)")
        (width,) = shapes[0]
        if len(values) not in (1, width):
            raise NotImplementedError("Imputer whose imputed values do not match its input's width")
        return shapes[0]

    def run(self, x):
        values, replaced = self._constants()
        x = x.astype(np.float32)
        hit = np.isnan(x) if math.isnan(replaced) else x == np.float32(replaced)
        return np.where(hit, np.broadcast_to(values.astype(np.float32), x.shape), x).astype(np.float32)

    def to_sql(self, sql, inputs, out_shape):
        values, replaced = self._constants()
        # SQL's NaN equals NaN (both DuckDB and PostgreSQL), as the replaced value must
        target = "CAST('NaN' AS DOUBLE PRECISION)" if math.isnan(replaced) else repr(float(np.float32(replaced)))
        return sql.positional(inputs[0], {"m": values}, f"CASE WHEN {{v}} = {target} THEN {{m}} ELSE {{v}} END")
