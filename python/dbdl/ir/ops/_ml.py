"""Shared by the ai.onnx.ml operators: attribute decoding and the post-transforms onnxruntime
applies to scores (numpy and SQL). Defines no operator."""

from __future__ import annotations

from typing import Any

import numpy as np

LOGISTIC_SQL = "1.0 / (1.0 + EXP(-LEAST(GREATEST({v}, -80.0), 80.0)))"  # clamped: EXP never overflows


def text(value: Any, default: str = "") -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def floats(attrs: dict[str, Any], name: str) -> np.ndarray | None:
    """A float list attribute, or its ``<name>_as_tensor`` form (double precision), or None."""
    value = attrs.get(name)
    if value is None:
        tensor = attrs.get(f"{name}_as_tensor")
        if tensor is None:
            return None
        from onnx import numpy_helper

        return numpy_helper.to_array(tensor).astype(np.float64).ravel()
    return np.asarray(value, dtype=np.float32).astype(np.float64)


def labels(attrs: dict[str, Any]) -> tuple[list, bool]:
    """(the class labels, whether they are strings)."""
    if attrs.get("classlabels_strings"):
        return [text(s) for s in attrs["classlabels_strings"]], True
    return [int(v) for v in attrs.get("classlabels_ints") or attrs.get("classlabels_int64s") or []], False


STRING_LABELS = "the label output of a classifier with string labels has no SQL form (its probabilities output has)"

TRANSFORMS = ("NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO")


def check_transform(op_type: str, name: str) -> None:
    if name not in TRANSFORMS:
        raise NotImplementedError(f"{op_type} with post_transform {name} (dbdl's IR has {', '.join(TRANSFORMS)})")


def transform(name: str, scores: np.ndarray) -> np.ndarray:
    """onnxruntime's post-transform of (batch, classes) scores."""
    if name == "NONE":
        return scores
    if name == "LOGISTIC":
        return 1.0 / (1.0 + np.exp(-scores))
    if name == "SOFTMAX":
        e = np.exp(scores - scores.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if name == "SOFTMAX_ZERO":  # zeros stay zero, the others share the probability
        nonzero = np.abs(scores) > 1e-7
        e = np.where(nonzero, np.exp(scores - scores.max(axis=-1, keepdims=True)), 0.0)
        return e / e.sum(axis=-1, keepdims=True)
    raise NotImplementedError(f"post_transform {name}")


def transform_sql(sql, x, name: str):
    if name == "NONE":
        return x
    if name == "LOGISTIC":
        return sql.scalar(x, LOGISTIC_SQL)
    if name == "SOFTMAX":
        return sql.softmax(x)
    if name == "SOFTMAX_ZERO":
        shifted = sql.scalar(x, "CASE WHEN ABS({v}) > 1e-7 THEN EXP({v} - MAX({v}) OVER (PARTITION BY rid)) ELSE 0.0 END")
        return sql.scalar(shifted, "{v} / SUM({v}) OVER (PARTITION BY rid)")
    raise NotImplementedError(f"post_transform {name}")


def label_sql(sql, probabilities, class_labels: list):
    """(rid, 0, the label) from the probabilities: the label of the first largest."""
    index = sql.argmax(probabilities)
    if class_labels == list(range(len(class_labels))):
        return index
    cases = " ".join(f"WHEN {k} THEN {int(label)}" for k, label in enumerate(class_labels))
    return sql.scalar(index, f"CASE {{v}} {cases} END")
