"""Fixtures: real databases, real models.

Every behavioural test takes ``db`` (or ``url``), parametrized over the backends in BACKENDS; a
backend that cannot run here is skipped with its reason, never silently dropped.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import dbdl

import pgserver

# backend name -> factory(tmp_path, request) -> fresh, empty database URL
BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest], str]] = {}


def _duckdb_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return f"duckdb:///{tmp_path / 'test.duckdb'}"


_database_counter = iter(range(1_000_000))


def _postgres_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    server = request.getfixturevalue("pg_server")
    name = f"dbdl_test_{next(_database_counter)}"
    url = server.create_database(name)
    request.addfinalizer(lambda: server.drop_database(name))
    return url


BACKENDS["duckdb"] = _duckdb_url
BACKENDS["postgres"] = _postgres_url


def _unavailable(reason: str):
    # CI sets DBDL_REQUIRE_POSTGRES=1: there a missing server is a failure, not a skip
    if os.environ.get("DBDL_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required (DBDL_REQUIRE_POSTGRES=1) but cannot run here: {reason}")
    pytest.skip(f"PostgreSQL cannot run here: {reason}")


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """One real PostgreSQL server for the whole run (initdb + pg_ctl as the postgres user).

    The server's Python imports dbdl_udf, numpy and onnxruntime from this checkout and this
    environment; where the postgres OS user cannot read them (a checkout under /root, say), the
    few packages it needs are copied to a readable folder and given to `dbdl migrate`."""
    ok, why = pgserver.available()
    if not ok:
        _unavailable(why)
    from dbdl.backends.postgres import default_python_path

    blocked = [p for p in default_python_path() if not pgserver.postgres_can_read(p)[0]]
    copied = None
    if blocked:
        copied = Path(tempfile.mkdtemp(prefix="dbdl-server-python-"))
        copied.chmod(0o755)
        site = Path(np.__file__).resolve().parent.parent
        for name in ("numpy", "numpy.libs", "onnxruntime", "onnx"):
            if (site / name).exists():
                shutil.copytree(site / name, copied / name)
        shutil.copytree(Path(__file__).resolve().parent.parent / "udf" / "dbdl_udf", copied / "dbdl_udf")
        subprocess.run(["chmod", "-R", "a+rX", str(copied)], check=True)
        readable, blocker = pgserver.postgres_can_read(copied)
        if not readable:
            _unavailable(f"the server cannot read {copied} either: {blocker}")
        os.environ["DBDL_SERVER_PYTHON_PATH"] = json.dumps([str(copied)])
    try:
        with pgserver.PostgresServer() as server:
            yield server
    finally:
        if copied is not None:
            os.environ.pop("DBDL_SERVER_PYTHON_PATH", None)
            shutil.rmtree(copied, ignore_errors=True)


@pytest.fixture(params=sorted(BACKENDS))
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return BACKENDS[request.param](tmp_path, request)


@pytest.fixture(params=["udf", "relation", "dl"])
def strategy(request) -> str:
    """How predict runs: the in-database function, the model compiled to SQL joins, or the rows
    streamed out to the DL runtime."""
    return request.param


@pytest.fixture
def db(url: str) -> Iterator[dbdl.Database]:
    database = dbdl.connect(url)
    yield database
    database.close()


# -- models ------------------------------------------------------------------------------------


def make_mlp(sizes=(8, 16, 3), seed: int = 0, final=None) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    layers = layers[:-1]
    if final is not None:
        layers.append(final)
    return torch.nn.Sequential(*layers).eval()


def export_onnx(module: torch.nn.Module, width: int) -> bytes:
    """What a user's own torch.onnx.export writes (TorchScript exporter, dynamic batch axis)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, width),), buf, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return buf.getvalue()


@pytest.fixture(scope="session")
def mlp() -> torch.nn.Module:
    return make_mlp((8, 16, 3), seed=0)


@pytest.fixture(scope="session")
def mlp_onnx(mlp) -> bytes:
    return export_onnx(mlp, 8)


@pytest.fixture(scope="session")
def mlp2_onnx() -> bytes:
    """A second version of the same architecture, other weights."""
    return export_onnx(make_mlp((8, 16, 3), seed=1), 8)


@pytest.fixture(scope="session")
def scorer_onnx() -> bytes:
    """One value per row (a probability)."""
    return export_onnx(make_mlp((8, 4, 1), seed=2, final=torch.nn.Sigmoid()), 8)


@pytest.fixture(scope="session")
def multi_io_onnx() -> bytes:
    """Two inputs (a: 3, b: 2 features) and two outputs (logits: 4 values, score: 1 value)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    v = rng.standard_normal((4, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
        helper.make_node("MatMul", ["ab", "W"], ["logits"]),
        helper.make_node("MatMul", ["logits", "V"], ["s"]),
        helper.make_node("Sigmoid", ["s"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes, "multi_io",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 1])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(v, "V")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run_onnx(model_bytes: bytes, feeds: dict[str, np.ndarray], output: int = 0) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[output]


@pytest.fixture(scope="session")
def features() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((300, 8)).astype(np.float32)


@pytest.fixture
def table(db, features) -> str:
    """Table t(id, feats FLOAT[8] / real[], grp) with 300 rows."""
    db.create_table("t", {"id": np.arange(len(features)), "feats": features, "grp": np.arange(len(features)) % 3})
    return "t"
