"""ArrayFeatureExtractor (ai.onnx.ml) of a constant 1-D array by per-row indices: skl2onnx's
``classes[argmax]``, a classifier's label. In SQL a CASE over the index."""

from __future__ import annotations

import numpy as np

from .base import Op, Shape


class ArrayFeatureExtractor(Op):
    op_types = ("ArrayFeatureExtractor",)

    def _values(self) -> np.ndarray:
        if 0 not in self.params or 1 in self.params:
            raise NotImplementedError("ArrayFeatureExtractor other than of a constant array by per-row indices")
        values = self.params[0]
        if values.ndim != 1 or values.dtype.kind not in "biuf":
            raise NotImplementedError("ArrayFeatureExtractor of other than a 1-D numeric constant")
        return values

    def infer(self, shapes: list[Shape | None]) -> Shape:
        self._values()
        return shapes[1]

    def run(self, data, indices):
        return np.take(self._values(), np.asarray(indices, dtype=np.int64))

    def to_sql(self, sql, inputs, out_shape):
        cases = " ".join(f"WHEN {k} THEN {float(v)!r}" for k, v in enumerate(self._values().tolist()))
        return sql.scalar(inputs[1], f"CASE {{v}} {cases} END")
