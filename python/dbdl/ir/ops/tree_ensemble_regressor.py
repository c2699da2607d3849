"""TreeEnsembleRegressor (ai.onnx.ml): per target, the trees' leaf weights summed (or averaged)
plus the base value; in SQL one nested CASE per tree, or a walk over a node table (_trees.py)."""

from __future__ import annotations

import numpy as np

from . import _ml, _trees
from .base import Op, Shape


class TreeEnsembleRegressor(Op):
    op_types = ("TreeEnsembleRegressor",)

    def forest(self) -> _trees.Forest:
        if not hasattr(self, "_forest"):
            self._forest = _trees.Forest(self.op_type, self.attrs, "target")
        return self._forest

    def _targets(self) -> int:
        return int(self.attrs.get("n_targets", 1))

    def _base(self) -> np.ndarray:
        b = self.forest().base
        return np.zeros(self._targets()) if b is None or not len(b) else np.broadcast_to(b, (self._targets(),))

    def infer(self, shapes: list[Shape | None]) -> Shape:
        _ml.check_transform(self.op_type, _ml.text(self.attrs.get("post_transform"), "NONE"))
        forest = self.forest()
        (shape,) = shapes
        width = int(np.prod(shape)) if shape else 1
        if forest.features and forest.features[-1] >= width:
            raise NotImplementedError("TreeEnsembleRegressor reading a feature beyond its input's width")
        if forest.targets and forest.targets[-1] >= self._targets():
            raise NotImplementedError("TreeEnsembleRegressor with a weight for a target beyond n_targets")
        return (self._targets(),)

    def param_bytes(self) -> int:
        return 20 * self.forest().n_nodes  # feature, mode, threshold and two children per node

    def run(self, x):
        scores = self.forest().scores(x, self._targets()) + self._base()
        return _ml.transform(_ml.text(self.attrs.get("post_transform"), "NONE"), scores).astype(np.float32)

    def to_sql(self, sql, inputs, out_shape):
        scores = self.forest().scores_sql(sql, inputs[0], [(k, float(b)) for k, b in enumerate(self._base())])
        return _ml.transform_sql(sql, scores, _ml.text(self.attrs.get("post_transform"), "NONE"))
