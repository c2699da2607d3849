"""TreeEnsembleClassifier (ai.onnx.ml): per class, the trees' leaf weights summed (or averaged)
plus the base value, then the post-transform; outputs the label and the scores. As in
onnxruntime, two classes whose weights all name one class (binary: LightGBM, XGBoost,
GradientBoosting) give the scores ``[1 - s, s]`` where every weight is positive, ``[σ(-s), σ(s)]``
with LOGISTIC otherwise. In SQL one nested CASE per tree, or a walk over a node table (_trees.py)."""

from __future__ import annotations

import numpy as np

from . import _ml, _trees
from .base import Op, Shape


class TreeEnsembleClassifier(Op):
    op_types = ("TreeEnsembleClassifier",)
    n_outputs = 2

    def forest(self) -> _trees.Forest:
        if not hasattr(self, "_forest"):
            self._forest = _trees.Forest(self.op_type, self.attrs, "class")
        return self._forest

    def _labels(self):
        return _ml.labels(self.attrs)

    def _transform(self) -> str:
        return _ml.text(self.attrs.get("post_transform"), "NONE")

    def _binary(self) -> bool:
        return len(self._labels()[0]) == 2 and len(self.forest().targets) == 1

    def _positive(self) -> bool:
        w = _ml.floats(self.attrs, "class_weights")
        return bool(w is None or (w >= 0).all())

    def _base(self) -> np.ndarray:
        """The base value of each score (one score in the binary case)."""
        n = 1 if self._binary() else len(self._labels()[0])
        b = self.forest().base
        if b is None or not len(b):
            return np.zeros(n)
        if self._binary():
            return np.array([b[0] if len(b) == 1 else b[self.forest().targets[0]]])
        if len(b) != n:
            raise NotImplementedError("TreeEnsembleClassifier whose base_values do not match its classes")
        return b

    def infer_outputs(self, shapes: list[Shape | None]) -> list[Shape]:
        name = self._transform()
        _ml.check_transform(self.op_type, name)
        forest, (labels, _) = self.forest(), self._labels()
        (shape,) = shapes
        width = int(np.prod(shape)) if shape else 1
        if forest.features and forest.features[-1] >= width:
            raise NotImplementedError("TreeEnsembleClassifier reading a feature beyond its input's width")
        if len(labels) < 2 or (forest.targets and forest.targets[-1] >= len(labels)):
            raise NotImplementedError("TreeEnsembleClassifier whose class ids do not match its labels")
        if self._binary():
            if self._positive() and name != "NONE" or not self._positive() and name != "LOGISTIC":
                raise NotImplementedError(f"binary TreeEnsembleClassifier with post_transform {name}")
            if forest.base is not None and len(forest.base) == 2:
                raise NotImplementedError("binary TreeEnsembleClassifier with two base_values")
        elif len(labels) == 2 and forest.base is not None and len(forest.base):
            raise NotImplementedError("TreeEnsembleClassifier of two classes with base_values")
        self._base()
        return [(), (len(labels),)]

    def output_problem(self, index: int) -> str:
        return _ml.STRING_LABELS if index == 0 and self._labels()[1] else ""

    def infer(self, shapes):
        return self.infer_outputs(shapes)[0]

    def param_bytes(self) -> int:
        return 20 * self.forest().n_nodes

    def run(self, x):
        forest, (labels, strings) = self.forest(), self._labels()
        if self._binary():
            s = forest.scores(x, len(labels))[:, forest.targets[0]] + self._base()[0]
            if self._positive():
                probs = np.stack([1.0 - s, s], axis=1)
            else:
                p = 1.0 / (1.0 + np.exp(-s))
                probs = np.stack([1.0 - p, p], axis=1)
        else:
            probs = _ml.transform(self._transform(), forest.scores(x, len(labels)) + self._base())
        label = np.asarray(labels, dtype=object if strings else np.int64)[np.argmax(probs, axis=1)]
        return label, probs.astype(np.float32)

    def to_sql(self, sql, inputs, out_shape):
        forest, (labels, strings) = self.forest(), self._labels()
        if self._binary():
            s = forest.scores_sql(sql, inputs[0], [(forest.targets[0], float(self._base()[0]))])
            if not self._positive():
                s = sql.scalar(s, _ml.LOGISTIC_SQL)
            probs = sql.dense(s, np.array([[-1.0, 1.0]]), np.array([1.0, 0.0]))  # [1 - s, s]
        else:
            scores = forest.scores_sql(sql, inputs[0], [(k, float(b)) for k, b in enumerate(self._base())])
            probs = _ml.transform_sql(sql, scores, self._transform())
        label = _ml.STRING_LABELS if strings else \
            _ml.label_sql(sql, probs, labels)
        return [label, probs]
