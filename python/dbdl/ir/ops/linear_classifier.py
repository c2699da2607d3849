"""LinearClassifier (ai.onnx.ml): scores = x · coefficientsᵀ + intercepts, then the post-transform;
outputs the label (the class with the largest score) and the scores. With one row of coefficients
and two classes (binary), onnxruntime adds the second class's score: ``[1 - s, s]`` without a
transform (as onnxruntime), ``[1 - p, p]`` with LOGISTIC, and the label is the second class where
``s > 0``."""

from __future__ import annotations

import numpy as np

from . import _ml
from .base import Op, Shape


class LinearClassifier(Op):
    op_types = ("LinearClassifier",)
    n_outputs = 2

    def _labels(self):
        return _ml.labels(self.attrs)

    def weight(self) -> np.ndarray:
        coef = _ml.floats(self.attrs, "coefficients")
        n_rows = len(_ml.floats(self.attrs, "intercepts")) if self.attrs.get("intercepts") else None
        if n_rows is None:
            n_rows = max(1, len(self._labels()[0]))
        return coef.reshape(n_rows, -1).T  # (in x score rows)

    def bias(self) -> np.ndarray:
        b = _ml.floats(self.attrs, "intercepts")
        return np.zeros(self.weight().shape[1]) if b is None else b

    def _binary(self) -> bool:
        return self.weight().shape[1] == 1 and len(self._labels()[0]) == 2

    def _transform(self) -> str:
        return _ml.text(self.attrs.get("post_transform"), "NONE")

    def infer_outputs(self, shapes: list[Shape | None]) -> list[Shape]:
        _ml.check_transform(self.op_type, self._transform())
        if not self.attrs.get("intercepts"):
            raise NotImplementedError("LinearClassifier without intercepts")
        (width,) = shapes[0]
        if self.weight().shape[0] != width:
            raise NotImplementedError("LinearClassifier whose coefficients do not match its input's width")
        if self.weight().shape[1] == 1 and not self._binary():
            raise NotImplementedError("LinearClassifier with one row of coefficients and other than two classes")
        return [(), (2 if self._binary() else self.weight().shape[1],)]

    def output_problem(self, index: int) -> str:
        return _ml.STRING_LABELS if index == 0 and self._labels()[1] else ""

    def infer(self, shapes):
        return self.infer_outputs(shapes)[0]

    def param_bytes(self) -> int:
        return int(self.weight().nbytes // 2)

    def run(self, x):
        scores = x.astype(np.float64) @ self.weight() + self.bias()
        name = self._transform()
        if self._binary():
            s = scores[:, 0]
            if name == "NONE":
                probs = np.stack([1.0 - s, s], axis=1)
            elif name == "LOGISTIC":
                p = 1.0 / (1.0 + np.exp(-s))
                probs = np.stack([1.0 - p, p], axis=1)
            else:
                raise NotImplementedError(f"binary LinearClassifier with post_transform {name}")
        else:
            probs = _ml.transform(name, scores)
        labels, strings = self._labels()
        chosen = (scores[:, 0] > 0).astype(np.int64) if self._binary() else np.argmax(probs, axis=1)
        label = np.asarray(labels, dtype=object if strings else np.int64)[chosen]
        return label, probs.astype(np.float32)

    def to_sql(self, sql, inputs, out_shape):
        name = self._transform()
        scores = sql.dense(inputs[0], self.weight(), self.bias())
        if self._binary():
            if name in ("NONE", "LOGISTIC"):
                p = scores if name == "NONE" else sql.scalar(scores, _ml.LOGISTIC_SQL)
                probs = sql.dense(p, np.array([[-1.0, 1.0]]), np.array([1.0, 0.0]))  # [1 - p, p]
            else:
                raise NotImplementedError(f"binary LinearClassifier with post_transform {name}")
        else:
            probs = _ml.transform_sql(sql, scores, name)
        labels, strings = self._labels()
        if strings:
            label = _ml.STRING_LABELS
        elif self._binary():  # onnxruntime: the second label where the score is positive
            label = sql.scalar(scores, f"CASE WHEN {{v}} > 0 THEN {int(labels[1])} ELSE {int(labels[0])} END")
        else:
            label = _ml.label_sql(sql, probs, labels)
        return [label, probs]
