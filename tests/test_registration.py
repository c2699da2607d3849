"""Registration accepts what onnxruntime runs (issue 11 §1): models made by real tools — torch's
plain export, skl2onnx, onnxmltools/LightGBM, the ONNX package's own backend test models — are
registered on both backends, rewritten where dbdl needs it (recorded, original bytes kept) and
scored exactly like onnxruntime / the library itself scores them."""

from __future__ import annotations

import glob
import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import has
from conftest import DM8_NO_ARRAYS
from onnx import TensorProto, helper, numpy_helper

import dbdl
from dbdl_udf.runtime import Signature

ONNX_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
RNG = np.random.default_rng(11)


def ort_run(model: bytes, feeds: dict, output: int = 0):
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[output]


def in_slices(model: bytes, x: np.ndarray, batch: int, output: int = 0) -> np.ndarray:
    """What the ORIGINAL fixed-batch model gives for x, run ``batch`` rows at a time (last padded)."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = []
    for start in range(0, len(x), batch):
        part = x[start:start + batch]
        n = len(part)
        if n < batch:
            part = np.concatenate([part, np.repeat(part[-1:], batch - n, axis=0)])
        out.append(session.run(None, {name: part})[output][:n])
    return np.concatenate(out)


def scored(db, ref: str, x: np.ndarray, kind: str = "predict_array", strategy: str | None = None, table="r"):
    db.create_table(table, {"id": np.arange(len(x)), "f": x.reshape(len(x), -1).astype(np.float32)})
    rows = db.sql(f"SELECT id, {kind}('{ref}', f) AS p FROM {table} ORDER BY id", strategy=strategy).fetchall()
    return [r[1] for r in rows]


def kinds(info) -> list[str]:
    return [r.kind for r in info.rewrites]


# -- fixed batch sizes ---------------------------------------------------------------------------


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(x.size(0), -1))


@pytest.fixture(scope="module")
def plain_export(tmp_path_factory) -> Path:
    """torch.onnx.export(m, torch.randn(1, ...), "m.onnx"), as users write it: batch fixed at 1,
    the flatten baked into a Reshape constant [1, -1]."""
    path = tmp_path_factory.mktemp("export") / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SmallCNN().eval(), torch.randn(1, 3, 8, 8), str(path))
    return path


@DM8_NO_ARRAYS
@pytest.mark.parametrize("strategy", ["udf", "dl"])
def test_a_plain_torch_export_with_batch_1_is_made_symbolic_and_scores_like_torch(db, plain_export, strategy):
    original = plain_export.read_bytes()
    assert onnx.load(str(plain_export)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    db.models.register("cnn", str(plain_export))
    info = db.models.get("cnn")
    assert info.batch is None and info.batch_mode == "symbolic"
    assert "batch_symbolic" in kinds(info) and "Reshape" in info.rewrites[-1].note
    # torch writes the weights to m.onnx.data beside it: the original kept is the model with them embedded
    # (by the client; PostgreSQL's server records only the rewrites it makes itself)
    if not has(db, "in_server"):
        assert kinds(info)[0] == "external_data" and "m.onnx.data" in info.rewrites[0].note
    assert db.models.model_bytes("cnn", original=True) == onnx.load(str(plain_export)).SerializeToString()
    assert db.models.model_bytes("cnn") != original
    x = RNG.standard_normal((37, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = SmallCNN().eval()(torch.from_numpy(x)).numpy()
    got = np.array(scored(db, "cnn", x, strategy=strategy))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def _fixed_model(batch: int, mixing: bool | str) -> bytes:
    """x[batch, 3] + Expand(c, [batch, 3]) (the batch size is baked into the Expand: it cannot
    become symbolic, rows stay independent); mixing=True: x - mean(x, axis 0) (rows mixed);
    mixing="position": x + C[batch, 3], a constant per position in the batch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])
    if mixing is True:
        nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
                 helper.make_node("Sub", ["x", "m"], ["y"])]
        inits = []
    elif not mixing:
        nodes = [helper.make_node("Expand", ["c", "shape"], ["e"]), helper.make_node("Add", ["x", "e"], ["y"])]
        inits = [numpy_helper.from_array(np.array([[1.0, -2.0, 0.5]], dtype=np.float32), "c"),
                 numpy_helper.from_array(np.array([batch, 3], dtype=np.int64), "shape")]
    else:
        nodes = [helper.make_node("Add", ["x", "C"], ["y"])]
        inits = [numpy_helper.from_array(np.arange(batch * 3, dtype=np.float32).reshape(batch, 3), "C")]
    model = helper.make_model(helper.make_graph(nodes, "fixed", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@DM8_NO_ARRAYS
def test_a_batch_size_the_graph_bakes_in_is_scored_in_padded_slices(db):
    model = _fixed_model(4, mixing=False)
    db.models.register("fixed4", model)
    info = db.models.get("fixed4")
    assert info.batch == 4 and info.batch_mode == "slices" and kinds(info) == ["batch_slices"]
    assert info.original_sha256 is None  # nothing rewritten in the bytes
    assert db.models.model_bytes("fixed4", original=True) == model
    x = RNG.standard_normal((10, 3)).astype(np.float32)  # 4 + 4 + 2 (padded)
    for strategy in ("udf", "dl", None):
        got = np.array(scored(db, "fixed4", x, strategy=strategy, table=f"r_{strategy}"))
        np.testing.assert_allclose(got, in_slices(model, x, 4), rtol=1e-6)
    with pytest.raises(dbdl.StrategyUnavailable, match="cannot run"):
        db.sql("SELECT predict_array('fixed4', f) FROM r_udf", strategy="relation")
    # and the signature says so, also to a stored-JSON reader
    assert Signature.from_json(Signature.to_json(info.signature)).batch == 4
    # loaded in Python, the same slices
    np.testing.assert_allclose(db.models.load("fixed4")(x), in_slices(model, x, 4), rtol=1e-6)


def test_a_fixed_batch_model_that_mixes_rows_is_refused_and_nothing_is_stored(db):
    with pytest.raises(dbdl.InvalidModel, match="mixes rows.*dynamic_axes"):
        db.models.register("mix", _fixed_model(4, mixing=True))
    with pytest.raises(dbdl.InvalidModel, match="position in the batch.*dynamic_axes"):
        db.models.register("pos", _fixed_model(4, mixing="position"))
    assert db.models.names() == []


def test_the_onnx_packages_resnet50_fixed_batch_old_opset_scores_like_the_original(db):
    path = ONNX_DATA / "light" / "light_resnet50.onnx"
    original = path.read_bytes()
    db.models.register("resnet", str(path))
    info = db.models.get("resnet")
    assert info.batch_mode == "symbolic" and info.opset == 9
    x = RNG.random((2, 3, 224, 224), dtype=np.float32)
    got = db.models.load("resnet")(x)  # 150,528 features: wider than a DuckDB ARRAY, so scored from Python
    np.testing.assert_allclose(got, in_slices(original, x, 1), rtol=1e-4, atol=1e-6)
    assert db.models.model_bytes("resnet", original=True) == original


# -- old opsets ----------------------------------------------------------------------------------


@DM8_NO_ARRAYS
def test_an_opset_6_model_is_upgraded_checked_and_its_original_kept(db):
    path = ONNX_DATA / "pytorch-converted" / "test_Softmax" / "model.onnx"  # opset 6, batch fixed at 10
    original = path.read_bytes()
    db.models.register("sm", str(path))
    info = db.models.get("sm")
    assert kinds(info) == ["opset", "batch_symbolic"] and info.opset == 13
    assert "opset 6 upgraded to 13" in info.rewrites[0].note
    assert db.models.model_bytes("sm", original=True) == original
    x = RNG.standard_normal((23, 20)).astype(np.float32)
    np.testing.assert_allclose(np.array(scored(db, "sm", x)), in_slices(original, x, 10), rtol=1e-5, atol=1e-6)


@DM8_NO_ARRAYS
def test_an_opset_6_model_onnxruntime_cannot_load_scores_like_its_reference_output(db):
    case = ONNX_DATA / "pytorch-converted" / "test_Linear"  # opset 6 Gemm: no onnxruntime kernel
    with pytest.raises(Exception):
        ort.InferenceSession(str(case / "model.onnx"), providers=["CPUExecutionProvider"])
    db.models.register("lin", str(case / "model.onnx"))
    x = numpy_helper.to_array(onnx.load_tensor(str(case / "test_data_set_0" / "input_0.pb")))
    expected = numpy_helper.to_array(onnx.load_tensor(str(case / "test_data_set_0" / "output_0.pb")))
    np.testing.assert_allclose(np.array(scored(db, "lin", x)), expected, rtol=1e-4, atol=1e-5)


def test_a_model_whose_upgrade_fails_in_onnxruntime_is_refused_with_its_reason_and_the_fix(db):
    path = ONNX_DATA / "pytorch-converted" / "test_PReLU_1d_multiparam" / "model.onnx"
    with pytest.raises(dbdl.InvalidModel, match=r"opset 6.*Broadcast.*convert_version\(onnx.load\(path\), 13\)"):
        db.models.register("prelu", str(path))
    assert db.models.names() == []


def test_every_backend_test_model_onnxruntime_runs_registers_or_is_refused_with_a_fix():
    """The survey of issue 11 over the ONNX package's own models: every model onnxruntime loads
    (after dbdl's upgrade where it needs one) registers; refusals name a fix."""
    from dbdl.modelio import prepare

    accepted, refused = 0, {}
    for path in sorted(glob.glob(str(ONNX_DATA / "pytorch-converted" / "*" / "model.onnx"))):
        try:
            prepare(path)
            accepted += 1
        except dbdl.InvalidModel as exc:
            refused[Path(path).parent.name] = str(exc)
    assert accepted >= 75
    # PReLU with one slope per channel: onnxruntime cannot broadcast its opset-6 form even upgraded
    upgrade = {"test_PReLU_1d_multiparam", "test_PReLU_2d_multiparam", "test_PReLU_3d_multiparam"}
    # exp(x) - target * x with the target a [10, 10] constant: each row's output depends on its position
    position = {"test_PoissonNLLLLoss_no_reduce"}
    assert set(refused) <= upgrade | position
    assert all("convert_version" in refused[k] for k in upgrade & set(refused))
    assert all("position in the batch" in refused[k] and "dynamic_axes" in refused[k] for k in position & set(refused))


# -- scikit-learn, LightGBM ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iris_like():
    X = RNG.standard_normal((120, 4)).astype(np.float32)
    y = np.array(["setosa", "versicolor", "virginica"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)]
    return X, y


@DM8_NO_ARRAYS
@pytest.mark.parametrize("strategy", ["udf", "dl"])
def test_a_skl2onnx_classifier_with_zipmap_gives_text_labels_and_probabilities(db, iris_like, strategy):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    X, y = iris_like
    clf = LogisticRegression(max_iter=500).fit(X, y)
    model = to_onnx(clf, X[:1])  # skl2onnx's default: a ZipMap output
    assert any(n.op_type == "ZipMap" for n in model.graph.node)
    db.models.register("clf", model)
    info = db.models.get("clf")
    assert "zipmap" in kinds(info)
    assert [(s.name, s.dtype) for s in info.outputs] == [("output_label", "str"), ("probabilities", "float32")]
    labels = scored(db, "clf", X, kind="predict", strategy=strategy)
    assert labels == clf.predict(X).tolist()
    assert all(isinstance(v, str) for v in labels)
    probs = np.array(scored(db, "clf:probabilities", X, strategy=strategy, table="r2"))
    np.testing.assert_allclose(probs, clf.predict_proba(X), rtol=1e-4, atol=1e-5)
    classes = scored(db, "clf:probabilities", X, kind="predict_class", strategy=strategy, table="r3")
    assert classes == clf.predict_proba(X).argmax(axis=1).tolist()
    with pytest.raises(dbdl.ShapeMismatch, match=r"predict_class\('clf:probabilities'"):
        db.sql("SELECT predict_class('clf', f) FROM r", strategy=strategy).fetchall()
    with pytest.raises(dbdl.ShapeMismatch, match="holds text"):
        db.sql("SELECT predict_array('clf', f) FROM r", strategy=strategy).fetchall()


@DM8_NO_ARRAYS
def test_a_fitted_sklearn_pipeline_registers_directly(db, iris_like):
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = iris_like
    y_int = (y == "virginica").astype(np.int64) + (y == "versicolor").astype(np.int64) * 2
    pipe = make_pipeline(StandardScaler(), PCA(3), RandomForestClassifier(n_estimators=5, max_depth=3,
                                                                            random_state=0)).fit(X, y_int)
    db.models.register("pipe", pipe, example=X[:1])
    info = db.models.get("pipe")
    assert info.source == "sklearn" and [s.name for s in info.outputs] == ["label", "probabilities"]
    assert scored(db, "pipe", X, kind="predict") == pipe.predict(X).astype(float).tolist()
    np.testing.assert_allclose(np.array(scored(db, "pipe:probabilities", X, table="r2")), pipe.predict_proba(X),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(dbdl.InvalidModel, match="example=X\\[:1\\]"):
        db.models.register("pipe2", pipe)


@DM8_NO_ARRAYS
def test_a_lightgbm_classifier_via_onnxmltools_registers(db):
    import lightgbm
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    X = RNG.standard_normal((200, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    clf = lightgbm.LGBMClassifier(n_estimators=10, verbose=-1).fit(X, y)
    model = onnxmltools.convert_lightgbm(clf, initial_types=[("X", FloatTensorType([None, 5]))])
    db.models.register("gbm", model)
    info = db.models.get("gbm")
    assert {"zipmap", "output_batch"} <= set(kinds(info))
    assert scored(db, "gbm", X, kind="predict") == clf.predict(X).astype(float).tolist()
    np.testing.assert_allclose(np.array(scored(db, "gbm:probabilities", X, table="r2")), clf.predict_proba(X),
                               rtol=1e-4, atol=1e-5)


def test_registering_an_estimator_without_skl2onnx_explains(monkeypatch, iris_like):
    import sys

    from sklearn.linear_model import LogisticRegression

    from dbdl.modelio import prepare

    X, y = iris_like
    monkeypatch.setitem(sys.modules, "skl2onnx", None)  # what a missing package looks like to import
    with pytest.raises(dbdl.InvalidModel, match="pip install skl2onnx"):
        prepare(LogisticRegression().fit(X, y), X[:1])


# -- signature rules -------------------------------------------------------------------------------


class TextClassifier(torch.nn.Module):
    """The AG News tutorial's model: EmbeddingBag over flat tokens + offsets, then Linear."""

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.EmbeddingBag(100, 8, mode="mean")
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))


def test_one_dimensional_and_variable_length_inputs_register(db):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TextClassifier().eval(), (torch.tensor([1, 2, 3, 4, 5]), torch.tensor([0, 2])), buf,
                          dynamo=False, input_names=["text", "offsets"], output_names=["y"],
                          dynamic_axes={"text": {0: "tokens"}, "offsets": {0: "batch"}, "y": {0: "batch"}})
    db.models.register("bag", buf.getvalue())
    sig = db.models.get("bag").signature
    assert [(s.name, s.dtype, s.dims) for s in sig.inputs] == [("text", "int64", ("tokens",)),
                                                               ("offsets", "int64", ("batch",))]
    assert sig.batch is None and sig.outputs[0].shape == (4,)
    tokens = helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", "seq"])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "seq"])
    seq = helper.make_model(helper.make_graph([helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT)], "s",
                                              [tokens], [out]), opset_imports=[helper.make_opsetid("", 13)])
    seq.ir_version = 8
    db.models.register("seq", seq)
    assert db.models.get("seq").inputs[0].shape == (None,)


def test_signatures_stored_before_dims_and_batch_still_load():
    old = json.dumps({"inputs": [{"name": "x", "dtype": "float32", "shape": [8]}],
                      "outputs": [{"name": "y", "dtype": "float32", "shape": [3]}]})
    sig = Signature.from_json(old)
    assert sig.batch is None and sig.inputs[0].dims is None and sig.n_features == 8
    assert json.loads(sig.to_json()) == json.loads(old)  # nothing new is written for it either


# -- PostgreSQL: the server adapts what it stores; predict_text resists a hostile search_path -------


def test_sql_registration_makes_the_same_rewrites_in_the_server(pg_server, plain_export):
    url = pg_server.create_database("dbdl_reg_sql")
    try:
        with dbdl.connect(url) as db:
            original = onnx.load(str(plain_export)).SerializeToString()  # weights embedded
            db.sql("SELECT dbdl.register_model('cnn', ?, NULL, true)", (original,))
            info = db.models.get("cnn")
            assert info.batch_mode == "symbolic" and db.models.model_bytes("cnn", original=True) == original
            x = RNG.standard_normal((3, 3, 8, 8)).astype(np.float32)
            with torch.no_grad():
                expected = SmallCNN().eval()(torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(np.array(scored(db, "cnn", x)), expected, rtol=1e-4, atol=1e-5)
            # the rewrites and the original are the server's own: no SQL parameter takes them
            args = db.sql("SELECT pg_catalog.pg_get_function_arguments(p.oid) FROM pg_catalog.pg_proc p "
                          "WHERE p.proname = 'register_model'").fetchall()
            assert all("rewrite" not in a[0] and "original" not in a[0] for a in args)
    finally:
        pg_server.drop_database("dbdl_reg_sql")


def test_predict_text_resists_planted_functions_and_needs_dbdl_user(world, iris_like):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from test_security import assert_nothing_ran_as_another_role, connect, evil_body

    X, y = iris_like
    clf = LogisticRegression(max_iter=500).fit(X, y)
    with dbdl.connect(world["url"]) as db:
        db.models.register("clf", to_onnx(clf, X[:1]))
        db.create_table("u", {"id": np.arange(5), "f": X[:5]})
        db.sql(f"GRANT SELECT ON u TO {world['roles']['analyst']}, {world['roles']['user']}")
    with connect(world, "user") as attacker:
        body = evil_body("predict_text") + " RETURN NULL; END;"
        attacker.execute(f"CREATE FUNCTION public.array_send(real[]) RETURNS bytea LANGUAGE plpgsql AS $${body}$$")
        attacker.execute(f"CREATE FUNCTION public.predict_text(text, real[]) RETURNS text LANGUAGE plpgsql AS "
                         f"$${body}$$")
        attacker.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO PUBLIC")
    with connect(world, "analyst") as victim:
        victim.execute("SET search_path = public, dbdl, pg_catalog")
        rows = victim.execute("SELECT dbdl.predict_text('clf', f) FROM u ORDER BY id").fetchall()
        assert [r[0] for r in rows] == clf.predict(X[:5]).tolist()
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"dbdl.predict_text\('clf', features\)"):
            victim.execute("SELECT dbdl.predict('clf', f) FROM u").fetchall()
    assert_nothing_ran_as_another_role(world, "user")
    with connect(world) as owner:
        owner.execute(f"CREATE ROLE nobody_{world['db']} LOGIN")
    try:
        with psycopg.connect(world["server"].url(world["db"], f"nobody_{world['db']}"), autocommit=True) as nobody:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                nobody.execute("SELECT dbdl.predict_text('clf', ARRAY[1, 2, 3, 4]::real[])").fetchall()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                nobody.execute("SELECT dbdl.predict_label('clf', '\\x00'::bytea, false)").fetchall()
    finally:
        with connect(world) as owner:
            owner.execute(f"DROP ROLE nobody_{world['db']}")


import psycopg  # noqa: E402 - after the fixtures that need no PostgreSQL driver
from test_security import world  # noqa: E402,F401 - the fixture


def test_dbdl_models_show_says_how_the_batch_is_scored_and_what_was_rewritten(tmp_path):
    import subprocess
    import sys

    url = f"duckdb:///{tmp_path / 'cli.duckdb'}"
    with dbdl.connect(url) as db:
        db.models.register("sm", str(ONNX_DATA / "pytorch-converted" / "test_Softmax" / "model.onnx"))
        db.models.register("fixed4", _fixed_model(4, mixing=False))
    show = subprocess.run([sys.executable, "-m", "dbdl.cli", "models", "show", url, "sm"], capture_output=True,
                          text=True, check=True, env={**__import__("os").environ, "COLUMNS": "200"}).stdout
    assert "made symbolic at registration" in show and "opset 6 upgraded to 13" in show
    out = subprocess.run([sys.executable, "-m", "dbdl.cli", "models", "show", url, "fixed4", "--json"],
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    assert data["batch"] == 4 and data["batch_mode"] == "slices" and data["rewrites"][0]["kind"] == "batch_slices"


def test_only_the_data_file_torch_writes_beside_the_model_is_embedded(db, plain_export, tmp_path):
    """A model naming another file beside it (a secret, say) is refused: embedded, it would land in
    the database for every reader of the model's bytes."""
    import shutil

    copy = tmp_path / "other.onnx"
    shutil.copy(plain_export, copy)  # still names m.onnx.data, which is not other.onnx.data
    shutil.copy(str(plain_export) + ".data", tmp_path / "m.onnx.data")
    with pytest.raises(dbdl.InvalidModel, match="external file"):
        db.models.register("other", str(copy))
    assert db.models.names() == []


class LastStep(torch.nn.Module):
    def __init__(self, cell):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = cell(6, 8, batch_first=True)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


@DM8_NO_ARRAYS
@pytest.mark.parametrize("cell", [torch.nn.LSTM, torch.nn.GRU])
def test_a_plain_recurrent_export_with_batch_1_scores_like_torch(db, cell, tmp_path):
    """torch's exporter bakes batch 1 into the initial hidden state: dbdl keeps the original and
    scores one row at a time."""
    module = LastStep(cell).eval()
    path = tmp_path / "rnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 4, 6),), str(path))
    db.models.register("rnn", str(path))
    info = db.models.get("rnn")
    assert info.batch_mode in ("symbolic", "slices")
    x = RNG.standard_normal((9, 4, 6)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.array(scored(db, "rnn", x)), expected, rtol=1e-4, atol=1e-5)


@DM8_NO_ARRAYS
@pytest.mark.notimpl(["spark"], raises=dbdl.QueryError,
                     reason="predict_text is DuckDB's and PostgreSQL's in-database function of any model; Spark's "
                            "functions are registered per pinned version when a predict call is planned, and a "
                            "predict() of class names returns the text already")
def test_predict_text_as_written_by_hand_and_with_a_model_named_by_a_column(db, iris_like):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    X, y = iris_like
    clf = LogisticRegression(max_iter=500).fit(X, y)
    db.models.register("clf", to_onnx(clf, X[:1]))
    db.create_table("r", {"id": np.arange(6), "f": X[:6], "m": np.array(["clf"] * 6)})
    expected = clf.predict(X[:6]).tolist()
    assert [r[0] for r in db.sql("SELECT predict_text('clf', f) FROM r ORDER BY id").fetchall()] == expected
    assert [r[0] for r in db.sql("SELECT predict_text(m, f) FROM r ORDER BY id").fetchall()] == expected
    # a model named by a column through predict(): not planned, so the text needs predict_text
    with pytest.raises(dbdl.Error, match="predict_text"):
        db.sql("SELECT predict(m, f) FROM r").fetchall()
