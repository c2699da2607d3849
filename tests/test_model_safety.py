"""A model cannot make the database (or the client) open a file or load a library.

Every hostile model here would read a file it names if onnxruntime (or onnx's own tools) got to
build it: its external tensor is an initializer, a Constant, a subgraph's weight... Registration
must refuse it on every path — db.models.register, the `dbdl register` command, SQL
dbdl.register_model — before any onnxruntime session exists, leaving the registry empty; and
bytes that reached the registry some other way are refused when a session is built from them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import has, per_backend, run_onnx
from onnx import TensorProto, helper, numpy_helper

import dbdl
from dbdl_udf import modelcheck
from dbdl_udf.runtime import SESSIONS

SECRET = b"TOPSECRET-pg_authid-row-01234567"  # 32 bytes: eight float32 values
SECRET_FLOATS = np.frombuffer(SECRET, dtype=np.float32)


def external(name: str, location: str, dims=(8,)) -> TensorProto:
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = TensorProto.FLOAT
    tensor.dims.extend(dims)
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def _io(extra_inputs=()):
    return ([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8]), *extra_inputs],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])])


def _model(nodes, initializers=(), extra_inputs=(), sparse=(), functions=(), opsets=(("", 17),)):
    inputs, outputs = _io(extra_inputs)
    graph = helper.make_graph(nodes, "leak", inputs, outputs, list(initializers), sparse_initializer=list(sparse))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                              functions=list(functions))
    model.ir_version = 8
    return model


ZERO = numpy_helper.from_array(np.zeros(8, np.float32), "zero")


def _adds(secret: str):
    """y = x * 0 + <secret>: the file's bytes come back as the prediction."""
    return [helper.make_node("Mul", ["x", "zero"], ["z"]), helper.make_node("Add", ["z", secret], ["y"])]


def leaky_model(where: str, location: str) -> onnx.ModelProto:
    """A model whose prediction is the content of ``location``, hidden in ``where``."""
    if where == "initializer":
        return _model(_adds("W"), [external("W", location), ZERO])
    if where == "initializer_as_input":  # onnxruntime loads these even without a model path
        return _model(_adds("W"), [external("W", location), ZERO],
                      extra_inputs=[helper.make_tensor_value_info("W", TensorProto.FLOAT, [8])])
    if where == "constant":
        return _model([helper.make_node("Constant", [], ["W"], value=external("c", location)), *_adds("W")], [ZERO])
    if where == "constant_tensors":  # an attribute of type TENSORS
        node = helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(np.zeros(8, np.float32)))
        node.attribute.append(helper.make_attribute("stash", [external("c", location)]))
        return _model([node, *_adds("W")], [ZERO])
    if where == "if":
        branch = helper.make_graph([helper.make_node("Identity", ["S"], ["w"])], "branch", [],
                                   [helper.make_tensor_value_info("w", TensorProto.FLOAT, [8])],
                                   [external("S", location)])
        cond = numpy_helper.from_array(np.array(True), "cond")
        node = helper.make_node("If", ["cond"], ["W"], then_branch=branch, else_branch=branch)
        return _model([node, *_adds("W")], [cond, ZERO])
    if where == "loop":
        body = helper.make_graph(
            [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Add", ["acc", "S"], ["acc_out"])],
            "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info("acc", TensorProto.FLOAT, [8])],
            [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [8])],
            [external("S", location)])
        inits = [numpy_helper.from_array(np.array(1, np.int64), "trip"),
                 numpy_helper.from_array(np.array(True), "cond"), ZERO]
        node = helper.make_node("Loop", ["trip", "cond", "zero"], ["W"], body=body)
        return _model([node, *_adds("W")], inits)
    if where == "sparse_initializer":
        values = external("W_values", location, dims=(8,))
        indices = numpy_helper.from_array(np.arange(8, dtype=np.int64), "W_indices")
        sparse = helper.make_sparse_tensor(values, indices, [8])
        return _model(_adds("W"), [ZERO], sparse=[sparse])
    if where == "function":
        body = [helper.make_node("Constant", [], ["w"], value=external("c", location)),
                helper.make_node("Add", ["a", "w"], ["b"])]
        function = helper.make_function("local.fns", "AddSecret", ["a"], ["b"], body,
                                        [helper.make_opsetid("", 17)])
        nodes = [helper.make_node("Mul", ["x", "zero"], ["z"]),
                 helper.make_node("AddSecret", ["z"], ["y"], domain="local.fns")]
        return _model(nodes, [ZERO], functions=[function], opsets=(("", 17), ("local.fns", 1)))
    if where == "training_info":
        model = _model([helper.make_node("Add", ["x", "zero"], ["y"])], [ZERO])
        init = helper.make_graph([helper.make_node("Identity", ["S"], ["s"])], "init", [],
                                 [helper.make_tensor_value_info("s", TensorProto.FLOAT, [8])],
                                 [external("S", location)])
        info = model.training_info.add()
        info.initialization.CopyFrom(init)
        return model
    raise ValueError(where)


PLACES = ["initializer", "initializer_as_input", "constant", "constant_tensors", "if", "loop",
          "sparse_initializer", "function", "training_info"]


@pytest.fixture
def secret_file(tmp_path, monkeypatch) -> Path:
    """A file in the working directory, where a model given as bytes finds relative locations."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "secret.bin"
    path.write_bytes(SECRET)
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "1260").write_bytes(SECRET)
    return path


@pytest.fixture
def sessions_built(monkeypatch):
    """Every onnxruntime session this process builds from now on."""
    built: list[object] = []
    real = ort.InferenceSession

    def recording(*args, **kwargs):
        built.append(args[0] if args else kwargs.get("path_or_bytes"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    return built


def registry_counts(db) -> tuple[int, int, int]:
    return tuple(db.sql(f"SELECT count(*) FROM dbdl.{t}").scalar() for t in ("models", "model_versions", "blobs"))


def test_the_hostile_model_really_reads_the_file(secret_file):
    """Without dbdl's check onnxruntime hands the file's bytes back: the attack is real."""
    data = leaky_model("initializer_as_input", "secret.bin").SerializeToString()
    out = run_onnx(data, {"x": np.ones((1, 8), np.float32)})
    assert out.tobytes() == SECRET


@pytest.mark.parametrize("location", ["secret.bin", "global/1260", "ABSOLUTE", "../../etc/passwd"])
@pytest.mark.parametrize("where", PLACES)
def test_register_refuses_external_data_everywhere(db, secret_file, sessions_built, where, location):
    location = str(secret_file) if location == "ABSOLUTE" else location
    model = leaky_model(where, location)
    for form in (model, model.SerializeToString()):
        with pytest.raises(dbdl.InvalidModel, match=r"external file.*save_as_external_data=False") as caught:
            db.models.register("evil", form)
        assert location in str(caught.value) and SECRET.decode() not in str(caught.value)
    assert sessions_built == []
    assert registry_counts(db) == (0, 0, 0)


def test_register_refuses_a_model_saved_with_external_data(db, secret_file, sessions_built, mlp_onnx, tmp_path):
    """What onnx writes for a large model: the weights in a file beside the .onnx (onnx.load with
    load_external_data=False, or a copy of the .onnx without its data file)."""
    model = onnx.load_from_string(mlp_onnx)
    onnx.external_data_helper.convert_model_to_external_data(model, all_tensors_to_one_file=True,
                                                            location="weights.bin", size_threshold=0)
    onnx.save(model, str(tmp_path / "big.onnx"))
    assert (tmp_path / "weights.bin").exists()
    with pytest.raises(dbdl.InvalidModel, match="'weights.bin'.*save_as_external_data=False"):
        db.models.register("big", str(tmp_path / "big.onnx"))
    with pytest.raises(dbdl.InvalidModel, match="external file"):
        db.models.register("big", onnx.load(str(tmp_path / "big.onnx"), load_external_data=False))
    assert sessions_built == [] and registry_counts(db) == (0, 0, 0)
    # the fix the message names: load with the data beside it, save whole, register
    whole = onnx.load(str(tmp_path / "big.onnx"))
    onnx.save(whole, str(tmp_path / "whole.onnx"), save_as_external_data=False)
    assert db.models.register("big", str(tmp_path / "whole.onnx")) == 1
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_allclose(db.models.load("big")(x), run_onnx(mlp_onnx, {"x": x}), atol=1e-5)


def test_cli_register_refuses_external_data(url, secret_file, tmp_path):
    path = tmp_path / "evil.onnx"
    path.write_bytes(leaky_model("initializer_as_input", "secret.bin").SerializeToString())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "dbdl.cli", "register", url, "evil", str(path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode != 0
    assert "InvalidModel" in proc.stderr + proc.stdout and "external file" in proc.stderr + proc.stdout
    assert SECRET.decode() not in proc.stderr + proc.stdout
    db = dbdl.connect(url)
    try:
        assert registry_counts(db) == (0, 0, 0)
    finally:
        db.close()


@pytest.fixture
def pg(url):
    """A PostgreSQL database: its tests are marked notimpl(["duckdb"]) (SQL registration is PostgreSQL's)."""
    assert url.startswith("postgres"), "a test of SQL registration is marked @pytest.mark.notimpl(['duckdb'], ...)"
    db = dbdl.connect(url)
    yield db
    db.close()


@pytest.mark.notimpl(["duckdb"], reason="SQL registration is PostgreSQL's")
@pytest.mark.parametrize("location", ["global/1260", "pg_hba.conf", "ABSOLUTE"])
@pytest.mark.parametrize("where", PLACES)
def test_sql_register_model_refuses_external_data(pg, pg_server, where, location):
    """The server's working directory is its data directory: global/1260 is pg_authid."""
    location = str(pg_server.datadir / "global" / "1260") if location == "ABSOLUTE" else location
    data = leaky_model(where, location).SerializeToString()
    with pytest.raises(dbdl.InvalidModel, match="external file.*save_as_external_data=False") as caught:
        pg.backend.fetchone("SELECT dbdl.register_model(?, ?)", ("evil", data))
    assert "md5" not in str(caught.value) and "SCRAM" not in str(caught.value)
    assert registry_counts(pg) == (0, 0, 0)
    stats = pg.backend.fetchone("SELECT dbdl.runtime_stats()")[0]
    assert '"cached": 0' in stats


def _smuggle(db, name: str, good: bytes, bad: bytes) -> None:
    """Register ``good``, then point its version at ``bad`` as if written before dbdl checked models
    (or behind its back): the stored sha256 matches the stored bytes."""
    db.models.register(name, good)
    sha = hashlib.sha256(bad).hexdigest()
    db.backend.execute("INSERT INTO dbdl.blobs (sha256, bytes, size_bytes) VALUES (?, ?, ?)", (sha, bad, len(bad)))
    db.backend.execute("UPDATE dbdl.model_versions SET sha256 = ? WHERE name = ?", (sha, name))


@pytest.mark.parametrize("where", ["initializer_as_input", "if", "constant"])
def test_stored_bytes_are_checked_before_a_session_is_built(db, table, secret_file, strategy, where, mlp_onnx):
    """On PostgreSQL the server's working directory is its data directory, so global/1260 there is
    pg_authid; on DuckDB the client's working directory holds secret.bin."""
    location = per_backend(db, duckdb="secret.bin", postgres="global/1260")
    bad = leaky_model(where, location).SerializeToString()
    SESSIONS.clear()
    _smuggle(db, "m", mlp_onnx, bad)
    with pytest.raises(dbdl.InvalidModel, match="external file") as caught:
        db.sql("SELECT id, predict_array('m', feats) FROM t", strategy=strategy)
    assert SECRET.decode() not in str(caught.value)
    # the model named by a column: no planning, the session is built where the rows are scored
    with pytest.raises(dbdl.InvalidModel, match="external file"):
        db.sql("SELECT id, predict_array(CASE WHEN id >= 0 THEN 'm' END, feats) FROM t")
    with pytest.raises(dbdl.InvalidModel, match="external file"):
        db.models.load("m")
    if has(db, "in_server"):  # the server's own predict, no client code in between
        with pytest.raises(dbdl.InvalidModel, match="external file"):
            db.backend.fetchall("SELECT dbdl.predict_array('m', feats) FROM t")


# -- operator domains ----------------------------------------------------------------------------


def _custom_op_model(domain: str, op: str = "Leak", declare: bool = True) -> onnx.ModelProto:
    nodes = [helper.make_node(op, ["x"], ["y"], domain=domain)]
    opsets = (("", 17), (domain, 1)) if declare else (("", 17),)
    return _model(nodes, opsets=opsets)


@pytest.mark.parametrize("domain", ["ai.onnx.contrib", "com.evil.customops", "com.microsoft.nchwc",
                                    "org.pytorch.aten"])
def test_register_refuses_custom_operator_domains(db, sessions_built, domain):
    with pytest.raises(dbdl.InvalidModel, match=f"domain '{domain}'.*custom-operator library"):
        db.models.register("custom", _custom_op_model(domain))
    # an opset import alone (no node uses it) is refused as well: nothing is loaded for it
    only_import = _model([helper.make_node("Relu", ["x"], ["y"])], opsets=(("", 17), (domain, 1)))
    with pytest.raises(dbdl.InvalidModel, match=f"operator set of domain '{domain}'"):
        db.models.register("custom", only_import)
    assert sessions_built == [] and registry_counts(db) == (0, 0, 0)


@pytest.mark.notimpl(["duckdb"], reason="SQL registration is PostgreSQL's")
def test_sql_register_refuses_custom_operator_domains(pg):
    with pytest.raises(dbdl.InvalidModel, match="domain 'ai.onnx.contrib'"):
        pg.backend.fetchone("SELECT dbdl.register_model(?, ?)",
                            ("custom", _custom_op_model("ai.onnx.contrib").SerializeToString()))
    assert registry_counts(pg) == (0, 0, 0)


def test_standard_ml_and_microsoft_domains_and_local_functions_are_allowed(db, table, features):
    """What converters emit is accepted: ai.onnx.ml (sklearn converters), com.microsoft contrib
    operators (onnxruntime's fusions), and a model-local function in a domain of its own."""
    w = np.random.default_rng(1).standard_normal((8, 8)).astype(np.float32)
    body = [helper.make_node("Relu", ["a"], ["b"])]
    relu = helper.make_function("my.fns", "MyRelu", ["a"], ["b"], body, [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Gelu", ["h"], ["g"], domain="com.microsoft"),
             helper.make_node("MyRelu", ["g"], ["r"], domain="my.fns"),
             helper.make_node("Normalizer", ["r"], ["y"], domain="ai.onnx.ml", norm="MAX")]
    model = _model(nodes, [numpy_helper.from_array(w, "W")], functions=[relu],
                   opsets=(("", 17), ("com.microsoft", 1), ("my.fns", 1), ("ai.onnx.ml", 3)))
    data = model.SerializeToString()
    assert db.models.register("ok", data) == 1
    got = np.array([r[1] for r in sorted(db.sql("SELECT id, predict_array('ok', feats) FROM t").fetchall())],
                   dtype=np.float32)
    np.testing.assert_allclose(got, run_onnx(data, {"x": features}), atol=1e-5)


def test_ort_config_metadata_is_refused(db):
    model = _model([helper.make_node("Relu", ["x"], ["y"])])
    onnx.helper.set_model_props(model, {"ort_config": '{"session_options": {"enable_profiling": true}}'})
    with pytest.raises(dbdl.InvalidModel, match="ort_config"):
        db.models.register("cfg", model)
    assert registry_counts(db) == (0, 0, 0)


# -- the checker itself ----------------------------------------------------------------------------


def test_layouts_cover_every_path_to_a_tensor_node_or_graph():
    """modelcheck reads the wire format with its own table of ONNX layouts: every field of
    onnx.proto that can (transitively) hold a tensor, node, graph or opset must be in it."""
    from google.protobuf.descriptor import FieldDescriptor

    targets = {"TensorProto", "NodeProto", "GraphProto", "OperatorSetIdProto", "FunctionProto"}
    reaches: dict[str, bool] = {}

    def reach(desc, seen=()) -> bool:
        if desc.name in targets:
            return True
        if desc.full_name in seen:
            return False
        if desc.full_name not in reaches:
            reaches[desc.full_name] = any(
                reach(f.message_type, (*seen, desc.full_name)) for f in desc.fields
                if f.type == FieldDescriptor.TYPE_MESSAGE)
        return reaches[desc.full_name]

    checked = 0
    for name, layout in modelcheck.LAYOUTS.items():
        desc = getattr(onnx, name).DESCRIPTOR
        for f in desc.fields:
            if f.type == FieldDescriptor.TYPE_MESSAGE and reach(f.message_type):
                assert layout.get(f.number) == f.message_type.name, f"{name}.{f.name} ({f.number})"
                checked += 1
        for number, child in layout.items():
            assert desc.fields_by_number[number].message_type.name == child
    assert checked >= 20
    # and every message that can hold one is walked
    for name in ("ModelProto", "GraphProto", "NodeProto", "AttributeProto", "SparseTensorProto",
                 "TrainingInfoProto", "FunctionProto"):
        assert name in modelcheck.LAYOUTS


@pytest.mark.parametrize("bad", [b"\xff" * 10, b"\x0a\x80", b"\x0b", b"\x3a\x05abc"])
def test_malformed_wire_format_is_invalid_model(bad):
    with pytest.raises(dbdl.InvalidModel, match="not an ONNX model"):
        modelcheck.check_model_bytes(bad)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (protobuf's own Python refuses to nest this deep)."""
    length, out = len(payload), bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([number << 3 | 2]) + bytes(out) + payload


def test_deeply_nested_subgraphs_are_refused_without_recursion_error():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", *_io()).SerializeToString()
    for _ in range(1000):  # If(then_branch=If(then_branch=...)), a thousand levels
        attribute = _field(1, b"then_branch") + _field(6, graph)
        graph = _field(1, _field(4, b"If") + _field(5, attribute)) + _field(2, b"g")
    data = b"\x08\x08" + _field(7, graph)  # ir_version 8, graph
    with pytest.raises(dbdl.InvalidModel, match="levels deep"):
        modelcheck.check_model_bytes(data)


def test_real_models_pass(mlp_onnx, multi_io_onnx):
    for data in (mlp_onnx, multi_io_onnx):
        modelcheck.check_model_bytes(data)
    # 64 MB of weights: skipped over by length, never decoded
    big = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "big", *_io(),
        [numpy_helper.from_array(np.zeros((8, 2_000_000), np.float32), "W")]))
    modelcheck.check_model_bytes(big.SerializeToString())
