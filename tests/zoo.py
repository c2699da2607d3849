"""The model zoo: models made by tools nobody on the team wrote, the way their users make them.

Each entry is built once per test session (``build(key)``, cached) and holds what a user would
hand to ``db.models.register`` — ONNX bytes written by skl2onnx / onnxmltools / a plain
``torch.onnx.export`` call, a fitted scikit-learn estimator, a file of the ONNX package's own
backend test data — the rows to store in a table, and the values the model's *own* library gives
for those rows (scikit-learn ``predict`` / ``predict_proba``, torch ``forward``, onnxruntime run
directly on the converter's file, or the reference outputs shipped with the ONNX test data).

Nothing here calls dbdl: tests/test_byom.py registers the entries and scores them through SQL.
"""

from __future__ import annotations

import functools
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import torch
from onnx import numpy_helper

ONNX_TEST_DATA = Path(onnx.__file__).resolve().parent / "backend" / "test" / "data"

for _name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "skl2onnx"):
    logging.getLogger(_name).setLevel(logging.ERROR)


@dataclass
class Check:
    """One SQL call and what it must give, row by row (rows ordered by id)."""

    kind: str  # "scalar" (predict), "array" (predict_array), "class" (predict_class), "text" (predict -> text)
    output: str | None  # output selector after ':' in the model reference, None = the default output
    expected: np.ndarray
    atol: float = 1e-4
    rtol: float = 1e-4


@dataclass
class Form:
    """One way of feeding the model from SQL: the call's feature arguments and the columns they read."""

    args: tuple[str, ...]
    note: str  # what it exercises (printed in the test id / skip reasons)
    needs: str = ""  # the issue-11 feature it depends on
    #: False: relation-centric SQL takes no such features (a nested array, bytes), whatever the model
    relation: bool = True


@dataclass
class SQLColumn:
    """A column written with SQL (``CREATE TABLE`` + ``INSERT`` with bound parameters) rather than
    ``db.create_table``: a type such as a nested fixed-size array, spelled per backend."""

    types: dict[str, str]  # backend name -> column type
    rows: list

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class ZooModel:
    key: str
    family: str  # sklearn | lightgbm | torch | onnx-test
    what: str  # one line: how the model was made
    model: Any  # what is handed to db.models.register
    columns: dict[str, Any]  # table columns (numpy 2-D arrays become FLOAT[n] / real[]; pyarrow arrays as they are)
    checks: list[Check]
    forms: list[Form] = field(default_factory=lambda: [Form(("x",), "flat FLOAT[n] column")])
    example: Any = None
    options: dict[str, Any] = field(default_factory=dict)  # set_options after registration
    needs: tuple[str, ...] = ()  # issue-11 §1 features this model needs at registration
    relation: bool | None = None  # True: relation-centric must be feasible; None: ask EXPLAIN

    @property
    def n_rows(self) -> int:
        col = next(iter(self.columns.values()))
        return len(col)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def run_ort(model_bytes: bytes, feeds: dict[str, np.ndarray]) -> list:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def zipmap_to_array(maps: list[dict], classes) -> np.ndarray:
    return np.array([[m[c] for c in classes] for m in maps], dtype=np.float32)


def torch_export(module: torch.nn.Module, args, **kwargs) -> bytes:
    """``torch.onnx.export(module, args, f)`` as a user writes it (fixed example batch, no dynamic axes)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, **kwargs)
    return buf.getvalue()


# -- scikit-learn (skl2onnx) ---------------------------------------------------------------------


def _to_onnx(estimator, X, **kwargs) -> bytes:
    from skl2onnx import to_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_onnx(estimator, X[:1], **kwargs).SerializeToString()


def _classifier(key, what, estimator, X, y, rows, zipmap: bool, needs=(), direct=False, relation=True) -> ZooModel:
    """A fitted classifier; the reference is scikit-learn itself (labels, predict_proba), cross-checked
    with onnxruntime on the converter's file (which is what the classifier's ONNX computes in float32)."""
    X = X.astype(np.float32)
    estimator.fit(X, y)
    sel = _rng(1).choice(len(X), size=rows, replace=False)
    x = X[sel]
    onnx_bytes = _to_onnx(estimator, X, options=None if zipmap else {"zipmap": False})
    label, proba = run_ort(onnx_bytes, {"X": x})[:2]
    if zipmap:
        proba = zipmap_to_array(proba, estimator.classes_)
    proba = np.asarray(proba, dtype=np.float32)
    # the converter computes what scikit-learn computes (float32 vs float64: probabilities to 1e-4)
    np.testing.assert_allclose(proba, estimator.predict_proba(x), atol=1e-4)
    agree = np.mean(np.asarray(label) == estimator.predict(x))
    assert agree >= 0.97, f"{key}: onnxruntime and scikit-learn agree on only {agree:.0%} of labels"
    text = np.asarray(label).dtype.kind in "OUS"
    checks = [
        Check("text" if text else "scalar", None, np.asarray(label) if text else np.asarray(label, np.float32), 0, 0),
        Check("array", "probabilities", proba),
        Check("class", "probabilities", np.argmax(proba, axis=1)),
    ]
    needs = tuple(needs) + (("zipmap",) if zipmap and not direct else ())  # dbdl converts without ZipMap
    return ZooModel(key, "sklearn", what, estimator if direct else onnx_bytes, {"x": x}, checks, needs=needs,
                    example=X[:1] if direct else None, relation=relation)


def _iris():
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True)


def _breast_cancer():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    return (X - X.mean(0)) / X.std(0), y  # standardized: a plain LogisticRegression converges


def _digits():
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


def skl_linear_regression() -> ZooModel:
    from sklearn.linear_model import LinearRegression

    rng = _rng(2)
    X = rng.standard_normal((200, 10)).astype(np.float32)
    y = X @ rng.standard_normal(10) + 0.1 * rng.standard_normal(200)
    est = LinearRegression().fit(X, y)
    x = X[:40]
    onnx_bytes = _to_onnx(est, X)
    expected = est.predict(x).astype(np.float32)
    np.testing.assert_allclose(run_ort(onnx_bytes, {"X": x})[0][:, 0], expected, atol=1e-4)
    return ZooModel("skl_linear_regression", "sklearn", "skl2onnx.to_onnx(LinearRegression) on 10 synthetic features",
                    onnx_bytes, {"x": x}, [Check("scalar", None, expected)], relation=True)


def skl_ridge_float64() -> ZooModel:
    """skl2onnx converts with the dtype of the sample it is given: float64 rows make a double model."""
    from sklearn.linear_model import Ridge

    rng = _rng(12)
    X = rng.standard_normal((200, 6))
    y = X @ rng.standard_normal(6) + 3.0
    est = Ridge(alpha=0.5).fit(X, y)
    x = X[:30]
    onnx_bytes = _to_onnx(est, X)  # input tensor(double)
    expected = est.predict(x)
    np.testing.assert_allclose(run_ort(onnx_bytes, {"X": x})[0][:, 0], expected, rtol=1e-12)
    return ZooModel("skl_ridge_float64", "sklearn", "skl2onnx.to_onnx(Ridge, X_float64[:1]) — a float64 model "
                    "(double input and output)", onnx_bytes, {"x": pa.array(list(x), type=pa.list_(pa.float64()))},
                    [Check("scalar", None, expected.astype(np.float32), 1e-5, 1e-5)], needs=("float64",),
                    relation=True)  # relation-centric SQL computes in double precision


def skl_logistic_zipmap() -> ZooModel:
    from sklearn.linear_model import LogisticRegression

    X, y = _iris()
    return _classifier("skl_logistic_zipmap", "skl2onnx.to_onnx(LogisticRegression) on iris, default options (ZipMap)",
                       LogisticRegression(max_iter=1000), X, y, 40, zipmap=True)


def skl_logistic_no_zipmap() -> ZooModel:
    from sklearn.linear_model import LogisticRegression

    X, y = _breast_cancer()
    return _classifier("skl_logistic_no_zipmap", "skl2onnx.to_onnx(LogisticRegression, options={'zipmap': False}) "
                       "on breast_cancer", LogisticRegression(max_iter=1000), X, y, 40, zipmap=False)


def skl_logistic_string_labels() -> ZooModel:
    from sklearn.linear_model import LogisticRegression

    X, y = _iris()
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    return _classifier("skl_logistic_string_labels", "skl2onnx.to_onnx(LogisticRegression) on iris with string labels "
                       "(ZipMap)", LogisticRegression(max_iter=1000), X, names, 40, zipmap=True, needs=("text_labels",),
                       relation=None)  # the label output has no SQL form; the probabilities have


def skl_mlp() -> ZooModel:
    from sklearn.neural_network import MLPClassifier

    X, y = _digits()
    return _classifier("skl_mlp", "skl2onnx.to_onnx(MLPClassifier(32)) on digits (ZipMap)",
                       MLPClassifier((32,), max_iter=200, random_state=0), X / 16, y, 40, zipmap=True)


def skl_random_forest() -> ZooModel:
    from sklearn.ensemble import RandomForestClassifier

    X, y = _breast_cancer()
    return _classifier("skl_random_forest", "skl2onnx.to_onnx(RandomForestClassifier(10 trees), zipmap=False) on "
                       "breast_cancer", RandomForestClassifier(10, max_depth=5, random_state=0), X, y, 40, zipmap=False)


def skl_gradient_boosting() -> ZooModel:
    from sklearn.ensemble import GradientBoostingClassifier

    X, y = _iris()
    return _classifier("skl_gradient_boosting", "skl2onnx.to_onnx(GradientBoostingClassifier(20)) on iris (ZipMap)",
                       GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0), X, y, 40, zipmap=True)


def _pipeline():
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), PCA(16, random_state=0), LogisticRegression(max_iter=1000))


def skl_pipeline() -> ZooModel:
    X, y = _digits()
    return _classifier("skl_pipeline", "skl2onnx.to_onnx(Pipeline(StandardScaler, PCA(16), LogisticRegression)) on "
                       "digits (ZipMap)", _pipeline(), X, y, 40, zipmap=True)


def skl_fitted_estimator() -> ZooModel:
    """The fitted Pipeline object itself handed to register (dbdl converts it)."""
    X, y = _digits()
    return _classifier("skl_fitted_estimator", "db.models.register('m', fitted Pipeline(StandardScaler, PCA, "
                       "LogisticRegression)) — no conversion by the user", _pipeline(), X, y, 40, zipmap=True,
                       needs=("sklearn_direct",), direct=True)


def lightgbm_classifier() -> ZooModel:
    import lightgbm
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    X, y = _breast_cancer()
    X = X.astype(np.float32)
    est = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=8, verbose=-1, random_state=0).fit(X, y)
    x = X[_rng(1).choice(len(X), size=40, replace=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = onnxmltools.convert_lightgbm(est, initial_types=[("input", FloatTensorType([None, X.shape[1]]))])
    onnx_bytes = proto.SerializeToString()
    label, maps = run_ort(onnx_bytes, {"input": x})
    proba = zipmap_to_array(maps, est.classes_)
    np.testing.assert_allclose(proba, est.predict_proba(x), atol=1e-4)
    checks = [Check("scalar", None, np.asarray(label, np.float32), 0, 0), Check("array", "probabilities", proba),
              Check("class", "probabilities", np.argmax(proba, axis=1))]
    return ZooModel("lightgbm_classifier", "lightgbm", "onnxmltools.convert_lightgbm(LGBMClassifier(20 trees)) on "
                    "breast_cancer (ZipMap; label output shaped [1])", onnx_bytes, {"x": x}, checks, needs=("zipmap",),
                    relation=True)


def lightgbm_regressor() -> ZooModel:
    import lightgbm
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    rng = _rng(13)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    y = X[:, 0] * 2 - X[:, 1] + np.sin(X[:, 2])
    est = lightgbm.LGBMRegressor(n_estimators=30, num_leaves=8, verbose=-1, random_state=0).fit(X, y)
    x = X[:35]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = onnxmltools.convert_lightgbm(est, initial_types=[("input", FloatTensorType([None, 8]))])
    onnx_bytes = proto.SerializeToString()
    expected = est.predict(x).astype(np.float32)
    np.testing.assert_allclose(run_ort(onnx_bytes, {"input": x})[0][:, 0], expected, atol=1e-4)
    return ZooModel("lightgbm_regressor", "lightgbm", "onnxmltools.convert_lightgbm(LGBMRegressor(30 trees)) on 8 "
                    "synthetic features", onnx_bytes, {"x": x}, [Check("scalar", None, expected)],
                    relation=True)


# -- torch, exported the way users export ---------------------------------------------------------


def _torch_reference(module, *inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(*[torch.from_numpy(a) for a in inputs]).numpy()


def torch_mlp_default_export() -> ZooModel:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).eval()
    x = _rng(3).standard_normal((41, 30)).astype(np.float32)
    onnx_bytes = torch_export(m, (torch.randn(1, 30),))  # torch 2.x default: the dynamo exporter, batch fixed at 1
    y = _torch_reference(m, x)
    return ZooModel("torch_mlp_default_export", "torch", "torch.onnx.export(mlp, torch.randn(1, 30), f) — default "
                    "(dynamo) exporter, batch axis fixed at 1", onnx_bytes, {"x": x},
                    [Check("array", None, y), Check("class", None, np.argmax(y, 1))], needs=("fixed_batch",),
                    relation=True)


def torch_mlp_fixed_batch() -> ZooModel:
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1), torch.nn.Sigmoid()).eval()
    x = _rng(4).standard_normal((37, 8)).astype(np.float32)
    onnx_bytes = torch_export(m, (torch.randn(1, 8),), dynamo=False)
    return ZooModel("torch_mlp_fixed_batch", "torch", "torch.onnx.export(mlp, torch.randn(1, 8), f, dynamo=False) — "
                    "TorchScript exporter, batch fixed at 1, one sigmoid output", onnx_bytes, {"x": x},
                    [Check("scalar", None, _torch_reference(m, x)[:, 0])], needs=("fixed_batch",), relation=True)


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = torch.nn.Linear(5, 8), torch.nn.Linear(3, 8), torch.nn.Linear(8, 3)

    def forward(self, x, z):
        return self.out(torch.relu(self.a(x) + self.b(z)))


def torch_two_inputs() -> ZooModel:
    torch.manual_seed(2)
    m = TwoInputs().eval()
    rng = _rng(5)
    a, b = rng.standard_normal((33, 5)).astype(np.float32), rng.standard_normal((33, 3)).astype(np.float32)
    onnx_bytes = torch_export(m, (torch.randn(1, 5), torch.randn(1, 3)), dynamo=False)
    y = _torch_reference(m, a, b)
    forms = [Form(("x",), "one FLOAT[8] column, the inputs concatenated in order"),
             Form(("a", "b"), "predict('m', a, b): one column per input", needs="multi_input")]
    return ZooModel("torch_two_inputs", "torch", "torch.onnx.export(m, (torch.randn(1, 5), torch.randn(1, 3)), f, "
                    "dynamo=False) — two inputs, batch fixed at 1", onnx_bytes,
                    {"x": np.concatenate([a, b], 1), "a": a, "b": b},
                    [Check("array", None, y), Check("class", None, np.argmax(y, 1))], forms=forms,
                    needs=("fixed_batch",))


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            torch.nn.Linear(16, 10))

    def forward(self, x):
        return self.net(x / 255.0)


def torch_cnn() -> ZooModel:
    torch.manual_seed(3)
    m = SmallCNN().eval()
    images = _rng(6).integers(0, 256, size=(8, 3, 32, 32), dtype=np.uint8)  # few: relation-centric SQL runs it too
    x = images.astype(np.float32)
    onnx_bytes = torch_export(m, (torch.randn(1, 3, 32, 32),))  # default exporter, batch 1
    y = _torch_reference(m, x)
    flat = x.reshape(len(x), -1)
    # DuckDB lists array sizes innermost first: FLOAT[32][32][3] is 3 x 32 x 32
    nested = SQLColumn({"duckdb": "FLOAT[32][32][3]", "postgres": "real[]"}, x.tolist())
    pixels = pa.array([row.tobytes() for row in images.reshape(len(images), -1)], type=pa.binary())
    forms = [Form(("x",), "flat FLOAT[3072] column reshaped to [N,3,32,32]", needs="reshape"),
             Form(("nested",), "nested FLOAT[3][32][32] column", needs="nested_arrays", relation=False),
             Form(("pixels",), "uint8 image bytes (BLOB / bytea)", needs="uint8_images", relation=False)]
    return ZooModel("torch_cnn", "torch", "torch.onnx.export(cnn, torch.randn(1, 3, 32, 32), f) — Conv/BatchNorm/"
                    "MaxPool/GlobalAvgPool CNN, default exporter, batch fixed at 1", onnx_bytes,
                    {"x": flat, "nested": nested, "pixels": pixels},
                    [Check("array", None, y), Check("class", None, np.argmax(y, 1))], forms=forms,
                    needs=("fixed_batch",), relation=True)


class Recurrent(torch.nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(8, 16, batch_first=True)
        self.out = torch.nn.Linear(16, 3)

    def forward(self, x):
        seq, _ = self.rnn(x)
        return self.out(seq[:, -1])


def _recurrent(key, cell, seed) -> ZooModel:
    torch.manual_seed(seed)
    m = Recurrent(cell).eval()
    x = _rng(seed).standard_normal((23, 12, 8)).astype(np.float32)
    onnx_bytes = torch_export(m, (torch.randn(1, 12, 8),), dynamo=False)
    y = _torch_reference(m, x)
    return ZooModel(key, "torch", f"torch.onnx.export({cell.__name__}(8, 16, batch_first=True) + Linear, "
                    "torch.randn(1, 12, 8), f, dynamo=False) — batch fixed at 1", onnx_bytes,
                    {"x": x.reshape(len(x), -1)}, [Check("array", None, y), Check("class", None, np.argmax(y, 1))],
                    needs=("fixed_batch",), relation=False)


def torch_lstm() -> ZooModel:
    return _recurrent("torch_lstm", torch.nn.LSTM, 7)


def torch_gru() -> ZooModel:
    return _recurrent("torch_gru", torch.nn.GRU, 8)


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.out = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.out(self.layer(x).mean(1))


def torch_transformer() -> ZooModel:
    torch.manual_seed(9)
    m = Encoder().eval()
    x = _rng(9).standard_normal((19, 10, 16)).astype(np.float32)
    onnx_bytes = torch_export(m, (torch.randn(1, 10, 16),), dynamo=False)
    y = _torch_reference(m, x)
    return ZooModel("torch_transformer", "torch", "torch.onnx.export(TransformerEncoderLayer(16, 2, 32) + mean + "
                    "Linear, torch.randn(1, 10, 16), f, dynamo=False) — batch fixed at 1", onnx_bytes,
                    {"x": x.reshape(len(x), -1)}, [Check("array", None, y), Check("class", None, np.argmax(y, 1))],
                    needs=("fixed_batch",), relation=False)


class BagOfTokens(torch.nn.Module):
    """The AG News tutorial's TextClassificationModel, small: EmbeddingBag(text, offsets) + Linear."""

    def __init__(self, vocab=1000, dim=16, classes=4):
        super().__init__()
        self.embedding = torch.nn.EmbeddingBag(vocab, dim, sparse=False)
        self.fc = torch.nn.Linear(dim, classes)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))


def _token_rows(seed, n, vocab, lo=3, hi=15) -> list[list[int]]:
    rng = _rng(seed)
    return [rng.integers(1, vocab, size=int(rng.integers(lo, hi))).tolist() for _ in range(n)]


def _bag_reference(m, rows) -> np.ndarray:
    text = torch.tensor([t for r in rows for t in r], dtype=torch.int64)
    offsets = torch.tensor(np.cumsum([0] + [len(r) for r in rows[:-1]]), dtype=torch.int64)
    with torch.no_grad():
        return m(text, offsets).numpy()


def torch_embedding_bag() -> ZooModel:
    torch.manual_seed(10)
    m = BagOfTokens().eval()
    rows = _token_rows(10, 29, 1000)
    onnx_bytes = torch_export(m, (torch.tensor(rows[0] + rows[1]), torch.tensor([0, len(rows[0])])), dynamo=False,
                              input_names=["text", "offsets"], output_names=["logits"],
                              dynamic_axes={"text": {0: "tokens"}, "offsets": {0: "batch"}, "logits": {0: "batch"}})
    y = _bag_reference(m, rows)
    tokens = pa.array(rows, type=pa.list_(pa.int32()))
    return ZooModel("torch_embedding_bag", "torch", "torch.onnx.export(EmbeddingBag(1000, 16) + Linear, (text, "
                    "offsets), f, dynamic_axes=...) — the AG News tutorial's model: flat tokens plus offsets",
                    onnx_bytes, {"tokens": tokens}, [Check("array", None, y), Check("class", None, np.argmax(y, 1))],
                    forms=[Form(("tokens",), "ragged INTEGER[] token lists -> flat tokens + offsets", needs="offsets")],
                    needs=("offsets",), relation=False)


class PaddedTokens(torch.nn.Module):
    """Embedding with padding_idx=0, summed over the sequence: padding with 0 changes nothing."""

    def __init__(self, vocab=500, dim=8, classes=3):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, dim, padding_idx=0)
        self.fc = torch.nn.Linear(dim, classes)

    def forward(self, tokens):
        return self.fc(self.embedding(tokens).sum(1))


def torch_padded_tokens() -> ZooModel:
    torch.manual_seed(11)
    m = PaddedTokens().eval()
    rows = _token_rows(11, 27, 500, 2, 12)
    with torch.no_grad():
        y = np.concatenate([m(torch.tensor([r])).numpy() for r in rows])
    onnx_bytes = torch_export(m, (torch.tensor([rows[0]]),), dynamo=False, input_names=["tokens"],
                              output_names=["logits"], dynamic_axes={"tokens": {0: "batch", 1: "length"},
                                                                     "logits": {0: "batch"}})
    tokens = pa.array(rows, type=pa.list_(pa.int32()))
    return ZooModel("torch_padded_tokens", "torch", "torch.onnx.export(Embedding(500, 8, padding_idx=0) + sum + "
                    "Linear, tokens [1, L], dynamic_axes={batch, length}) — token lists padded per batch",
                    onnx_bytes, {"tokens": tokens}, [Check("array", None, y), Check("class", None, np.argmax(y, 1))],
                    forms=[Form(("tokens",), "ragged INTEGER[] token lists padded with pad_id", needs="padding")],
                    options={"pad_id": 0}, needs=("padding",), relation=False)


class EmbeddingMean(torch.nn.Module):
    """A bag of words the plain way: nn.Embedding, the mean over the sequence, a Linear head."""

    def __init__(self, vocab=300, dim=8, classes=3):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, dim)
        self.fc = torch.nn.Linear(dim, classes)

    def forward(self, tokens):
        return self.fc(self.embedding(tokens).mean(1))


def torch_embedding_mean() -> ZooModel:
    torch.manual_seed(12)
    m = EmbeddingMean().eval()
    tokens = _rng(12).integers(0, 300, size=(23, 6)).astype(np.int64)
    onnx_bytes = torch_export(m, (torch.zeros(1, 6, dtype=torch.int64),))  # the default (dynamo) exporter
    y = _torch_reference(m, tokens)
    return ZooModel("torch_embedding_mean", "torch", "torch.onnx.export(Embedding(300, 8) + mean(1) + Linear, "
                    "torch.zeros(1, 6, dtype=int64), f) — default (dynamo) exporter, 6 token ids per row",
                    onnx_bytes, {"tokens": pa.array(tokens.tolist(), type=pa.list_(pa.int64()))},
                    [Check("array", None, y), Check("class", None, np.argmax(y, 1))],
                    forms=[Form(("tokens",), "fixed-length BIGINT[] token ids")], needs=("fixed_batch",),
                    relation=True)


class FixedBags(torch.nn.Module):
    def __init__(self, vocab=400, dim=8, classes=4, mode="mean"):
        super().__init__()
        self.embedding = torch.nn.EmbeddingBag(vocab, dim, mode=mode)
        self.fc = torch.nn.Linear(dim, classes)

    def forward(self, tokens):  # (n, L): one bag of L ids per row, no offsets
        return self.fc(self.embedding(tokens))


def torch_embedding_bag_2d() -> ZooModel:
    torch.manual_seed(14)
    m = FixedBags().eval()
    tokens = _rng(14).integers(0, 400, size=(19, 5)).astype(np.int32)
    onnx_bytes = torch_export(m, (torch.zeros(1, 5, dtype=torch.int64),), dynamo=False, input_names=["tokens"],
                              output_names=["logits"], dynamic_axes={"tokens": {0: "batch"}, "logits": {0: "batch"}})
    y = _torch_reference(m, tokens.astype(np.int64))
    return ZooModel("torch_embedding_bag_2d", "torch", "torch.onnx.export(EmbeddingBag(400, 8, mode='mean') + Linear, "
                    "2-D tokens, dynamo=False, dynamic_axes=...) — fixed-size bags, exported as a Loop",
                    onnx_bytes, {"tokens": pa.array(tokens.tolist(), type=pa.list_(pa.int32()))},
                    [Check("array", None, y), Check("class", None, np.argmax(y, 1))],
                    forms=[Form(("tokens",), "fixed-length INTEGER[] token ids into an int64 input")], relation=True)


# -- the ONNX package's own backend test models -----------------------------------------------------


def _onnx_test(key, folder, what, rows=None, needs=("fixed_batch", "old_opset"), relation=None,
               input_dtype=np.float32) -> ZooModel:
    """A model of onnx/backend/test/data with a fixed batch size. Rows are scored against onnxruntime run
    directly on the original file, batch by batch (the last batch padded); where onnxruntime cannot
    load the original (old-opset kernels it no longer has), against the outputs shipped with the data."""
    path = ONNX_TEST_DATA / folder if folder.endswith(".onnx") else ONNX_TEST_DATA / folder / "model.onnx"
    data = path.read_bytes()
    proto = onnx.load_from_string(data)
    weights = {t.name for t in proto.graph.initializer}  # IR 3 lists initializers among the inputs
    inp = next(i for i in proto.graph.input if i.name not in weights)
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    batch, per_row = shape[0], shape[1:]
    try:
        run_ort(data, {inp.name: np.zeros(shape, dtype=input_dtype)})
        ort_loads = True
    except Exception:
        ort_loads = False
    if ort_loads and rows:
        rng = _rng(len(key))
        if input_dtype == np.int64:
            x = rng.integers(0, 4, size=(rows, *per_row)).astype(np.int64)  # its table has 4 rows
        else:
            x = rng.standard_normal((rows, *per_row)).astype(np.float32)
        outs = []
        for start in range(0, rows, batch):
            part = x[start:start + batch]
            padded = np.concatenate([part, np.zeros((batch - len(part), *per_row), part.dtype)])
            outs.append(run_ort(data, {inp.name: padded})[0][: len(part)])
        y = np.concatenate(outs)
        reference = "onnxruntime on the original file, in batches of its fixed size"
    else:
        sample = ONNX_TEST_DATA / folder / "test_data_set_0"
        x = numpy_helper.to_array(onnx.load_tensor(str(sample / "input_0.pb")))
        y = numpy_helper.to_array(onnx.load_tensor(str(sample / "output_0.pb")))
        reference = "the outputs shipped with the ONNX test data (onnxruntime cannot load the original)"
    flat = x.reshape(len(x), -1)
    if input_dtype != np.float32:
        columns = {"x": pa.array(flat.tolist(), type=pa.list_(pa.int64()))}
    elif flat.shape[1] > 100_000:  # DuckDB's fixed-size ARRAY stops at 100,000 values: a LIST (FLOAT[])
        columns = {"x": pa.array(list(flat.astype(np.float32)), type=pa.list_(pa.float32()))}
    else:
        columns = {"x": flat.astype(np.float32)}
    y2 = y.reshape(len(y), -1).astype(np.float32)
    checks = [Check("array", None, y2, 1e-4, 1e-4)]
    opset = proto.opset_import[0].version
    return ZooModel(key, "onnx-test", f"{folder} (opset {opset}, input {shape}); reference: {reference}", data,
                    columns, checks, needs=needs, relation=relation)


def onnx_conv2d() -> ZooModel:
    return _onnx_test("onnx_conv2d", "pytorch-converted/test_Conv2d", "Conv2d", rows=9, relation=True)


def onnx_linear_no_bias() -> ZooModel:
    return _onnx_test("onnx_linear_no_bias", "pytorch-converted/test_Linear_no_bias", "Linear", rows=10,
                      relation=True)  # Transpose of the weight: folded


def onnx_linear() -> ZooModel:
    return _onnx_test("onnx_linear", "pytorch-converted/test_Linear", "Linear (Gemm opset 6)", rows=10)


def onnx_batchnorm2d() -> ZooModel:
    return _onnx_test("onnx_batchnorm2d", "pytorch-converted/test_BatchNorm2d_eval", "BatchNorm2d", rows=5,
                      relation=False)


def onnx_softmax() -> ZooModel:
    return _onnx_test("onnx_softmax", "pytorch-converted/test_Softmax", "Softmax", rows=23)


def onnx_maxpool2d() -> ZooModel:
    return _onnx_test("onnx_maxpool2d", "pytorch-converted/test_MaxPool2d", "MaxPool2d", rows=5, relation=True)


def onnx_embedding() -> ZooModel:
    return _onnx_test("onnx_embedding", "pytorch-converted/test_Embedding", "Embedding (int64 ids)", rows=7,
                      relation=True, input_dtype=np.int64, needs=("fixed_batch", "old_opset", "int_inputs"))


def onnx_single_relu() -> ZooModel:
    return _onnx_test("onnx_single_relu", "simple/test_single_relu_model", "Relu", rows=11, needs=("fixed_batch",))


def onnx_light_squeezenet() -> ZooModel:
    """A published architecture at full size: SqueezeNet 1.0 on 3x224x224 (weights made by
    ConstantOfShape, so the file is small), fixed batch 1, opset 9, output [1, 1000, 1, 1]."""
    model = _onnx_test("onnx_light_squeezenet", "light/light_squeezenet.onnx", "SqueezeNet", rows=3,
                       needs=("fixed_batch",), relation=False)
    model.checks.append(Check("class", None, np.argmax(model.checks[0].expected, axis=1)))
    return model


ZOO: dict[str, Callable[[], ZooModel]] = {f.__name__: f for f in (
    skl_linear_regression, skl_ridge_float64, skl_logistic_zipmap, skl_logistic_no_zipmap, skl_logistic_string_labels, skl_mlp,
    skl_random_forest, skl_gradient_boosting, skl_pipeline, skl_fitted_estimator, lightgbm_classifier, lightgbm_regressor,
    torch_mlp_default_export, torch_mlp_fixed_batch, torch_two_inputs, torch_cnn, torch_lstm, torch_gru,
    torch_transformer, torch_embedding_bag, torch_padded_tokens, torch_embedding_mean, torch_embedding_bag_2d,
    onnx_conv2d, onnx_linear_no_bias, onnx_linear, onnx_batchnorm2d, onnx_softmax, onnx_maxpool2d, onnx_embedding,
    onnx_single_relu, onnx_light_squeezenet,
)}


@functools.lru_cache(maxsize=None)
def build(key: str) -> ZooModel:
    model = ZOO[key]()
    assert model.key == key, (model.key, key)
    return model
