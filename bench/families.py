"""Model families for the relation-centric benchmarks (bench_relation.py, bench_trees.py, bench_planner.py).

Each family is a real converter's output — torch.onnx.export, skl2onnx, onnxmltools — fitted on a
dataset shipped with scikit-learn (breast cancer: 30 features; digits: 8×8 images), and a way to
make any number of rows at that shape: the dataset's rows tiled and jittered by 0.1% (relation-
centric scoring de-duplicates the feature vectors, so tiling alone would score 569 rows).
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class Family:
    name: str
    label: str            # what the table says
    onnx: Callable[[], bytes]
    rows: Callable[[int], np.ndarray]   # n -> (n, width) features
    call: str             # the predict call scored, {m} = the model's name
    data: str             # which rows (families with the same data share their tables)
    output: str = ""      # the onnxruntime output the reference takes its argmax of ("" = the first)
    ids: bool = False     # integer features (an embedding model)


def _quiet(fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*a, **kw)
    return functools.lru_cache(maxsize=None)(wrapper)


@functools.lru_cache(maxsize=None)
def _dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer, load_digits

    X, y = {"cancer": load_breast_cancer, "digits": load_digits}[name](return_X_y=True)
    return X.astype(np.float32), y


def tiled(name: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` rows of dataset ``name``: its rows repeated, each value jittered by up to ±0.1%."""
    X, _ = _dataset(name)
    rng = np.random.default_rng(seed)
    out = X[np.arange(n) % len(X)]
    return (out * (1 + 1e-3 * rng.uniform(-1, 1, size=out.shape).astype(np.float32))
            + 1e-4 * rng.standard_normal(out.shape, dtype=np.float32))


def _torch_export(module, example) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.onnx.export(module.eval(), (example,), buf, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return buf.getvalue()


def _skl(est, data: str = "cancer") -> bytes:
    from skl2onnx import to_onnx

    X, y = _dataset(data)
    est.fit(X, y)
    return to_onnx(est, X[:1], target_opset={"": 17, "ai.onnx.ml": 3},
                   options={id(est): {"zipmap": False}} if hasattr(est, "predict_proba") else None).SerializeToString()


@_quiet
def mlp_onnx() -> bytes:
    import torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    return _torch_export(m, torch.randn(2, 64))


@_quiet
def logistic_onnx() -> bytes:
    from sklearn.linear_model import LogisticRegression

    return _skl(LogisticRegression(max_iter=3000))


@_quiet
def pipeline_onnx() -> bytes:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return _skl(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)))


@_quiet
def forest_onnx(trees: int = 20, depth: int = 6) -> bytes:
    from sklearn.ensemble import RandomForestClassifier

    return _skl(RandomForestClassifier(n_estimators=trees, max_depth=depth, random_state=0))


@_quiet
def boosting_onnx(trees: int = 20, depth: int = 3) -> bytes:
    from sklearn.ensemble import GradientBoostingClassifier

    return _skl(GradientBoostingClassifier(n_estimators=trees, max_depth=depth, random_state=0))


@_quiet
def lightgbm_onnx(trees: int = 50, leaves: int = 31) -> bytes:
    import lightgbm
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    X, y = _dataset("cancer")
    est = lightgbm.LGBMClassifier(n_estimators=trees, num_leaves=leaves, verbose=-1, random_state=0).fit(X, y)
    return onnxmltools.convert_lightgbm(est, initial_types=[("input", FloatTensorType([None, X.shape[1]]))],
                                        zipmap=False).SerializeToString()


@_quiet
def cnn_onnx() -> bytes:
    import torch
    from torch import nn

    class CNN(nn.Module):  # digits 8×8: conv 8 channels, max-pool, conv 16, global average pool, linear
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                     nn.Flatten(), nn.Linear(16, 10))

        def forward(self, x):
            return self.net(x.reshape(-1, 1, 8, 8))

    torch.manual_seed(0)
    return _torch_export(CNN(), torch.randn(2, 64))


VOCAB = 10_000
IDS = 16


@_quiet
def embedding_onnx() -> bytes:
    import torch
    from torch import nn

    class Bag(nn.Module):  # 16 ids a row → Embedding(10,000, 32), mean, Linear(32, 4)
        def __init__(self) -> None:
            super().__init__()
            self.embedding, self.fc = nn.Embedding(VOCAB, 32), nn.Linear(32, 4)

        def forward(self, ids):
            return self.fc(self.embedding(ids).mean(1))

    torch.manual_seed(0)
    return _torch_export(Bag(), torch.randint(0, VOCAB, (2, IDS)))


def ids_rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(n, IDS)).astype(np.int64)


def gaussian_rows(width: int) -> Callable[[int], np.ndarray]:
    return lambda n: np.random.default_rng(0).standard_normal((n, width), dtype=np.float32)


CLASS = "predict_class('{m}', feats)"
PROBA = "predict_class('{m}:probabilities', feats)"

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("mlp", "MLP 64-128-10 (torch)", mlp_onnx, gaussian_rows(64), CLASS, "gauss64"),
    Family("logistic", "logistic regression (skl2onnx, 30 features)", logistic_onnx,
           lambda n: tiled("cancer", n), PROBA, "cancer", "probabilities"),
    Family("pipeline", "StandardScaler + LogisticRegression (skl2onnx)", pipeline_onnx,
           lambda n: tiled("cancer", n), PROBA, "cancer", "probabilities"),
    Family("forest", "random forest, 20 trees, depth 6 (skl2onnx)", forest_onnx,
           lambda n: tiled("cancer", n), PROBA, "cancer", "probabilities"),
    Family("boosting", "gradient boosting, 20 trees, depth 3 (skl2onnx)", boosting_onnx,
           lambda n: tiled("cancer", n), PROBA, "cancer", "probabilities"),
    Family("lightgbm", "LightGBM, 50 trees, 31 leaves (onnxmltools)", lightgbm_onnx,
           lambda n: tiled("cancer", n), PROBA, "cancer", "probabilities"),
    Family("cnn", "CNN on 8×8 digits: conv 8, max-pool, conv 16, avg-pool, linear (torch)", cnn_onnx,
           lambda n: tiled("digits", n), CLASS, "digits"),
    Family("embedding", f"embedding: {IDS} ids → Embedding(10k, 32), mean, Linear (torch)", embedding_onnx,
           ids_rows, CLASS, "ids", ids=True),
]}
