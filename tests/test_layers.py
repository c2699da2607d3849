"""Issue 12's read of the layers: the bugs it found, each shown fixed, and the rules the layers keep
(a backend named only inside backends/, every hook declared on the base class)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest

import dbdl
from dbdl.backends.base import Backend
from dbdl.names import weight_table_prefix
from conftest import has, run_onnx

PACKAGE = Path(dbdl.__file__).resolve().parent


@pytest.mark.notimpl(["spark"], reason="Spark has no result cache (cache_key_bytes None)")
def test_a_question_mark_in_a_literal_or_jsonb_operator_runs_with_the_cache_on(db, mlp_onnx, features, strategy):
    """The cache's steps run parts of the user's query as dbdl's own statements; a ``?`` in a string
    literal there used to become a placeholder on PostgreSQL (one converter rewrote every ``?``)."""
    db.create_table("t", {"id": np.arange(40), "feats": features[:40],
                          "tag": ["a?b" if i % 2 else "c%d" for i in range(40)]})
    db.models.register("m", mlp_onnx)
    db.models.set_options("m", cache=True)
    expected = run_onnx(mlp_onnx, {"x": features[:40]})
    # where the server alone fills the cache, another strategy would score the misses uncached
    how = None if has(db, "in_server") and strategy != "udf" else strategy
    for _ in range(2):  # the first run fills the cache, the second reads it
        got = db.sql("SELECT id, predict_array('m', feats) AS y FROM t WHERE tag = 'a?b' AND tag <> '%?' "
                     "ORDER BY id", strategy=how).fetchall()
        assert [r[0] for r in got] == list(range(1, 40, 2))
        np.testing.assert_allclose(np.array([r[1] for r in got]), expected[1::2], atol=1e-5)
    stats = db.models.cache_stats("m")[0]
    assert stats.rows == 20 and stats.hits == 20


@pytest.mark.never(["duckdb", "spark"], reason="jsonb and its ? operator are PostgreSQL's")
def test_the_jsonb_question_mark_operator_beside_a_cached_model(db, mlp_onnx, features):
    db.create_table("t", {"id": np.arange(10), "feats": features[:10]})
    db.sql("""ALTER TABLE t ADD COLUMN doc jsonb DEFAULT '{"k": 1}'""")
    db.models.register("m", mlp_onnx)
    db.models.set_options("m", cache=True)
    got = db.sql("SELECT id, predict_class('m', feats) FROM t WHERE doc ? 'k' ORDER BY id").fetchall()
    assert [r[1] for r in got] == run_onnx(mlp_onnx, {"x": features[:10]}).argmax(axis=1).tolist()


def test_dropping_a_model_drops_its_weight_tables_and_no_table_that_merely_looks_alike(db, mlp_onnx, features):
    """The weight tables of bytes no version uses are dropped by a prefix test: the ``LIKE`` it
    replaced read ``_`` as any character, so a user's table rel<x><hash>… went too."""
    db.create_table("t", {"id": np.arange(20), "feats": features[:20]})
    db.models.register("m", mlp_onnx)
    db.sql("SELECT id, predict_array('m', feats) FROM t", strategy="relation").fetchall()
    sha = db.models.get("m").sha256
    schema = db.backend.data_schema
    prefix = weight_table_prefix(sha)
    weights = [name for name in db.backend.tables_in(schema) if name.startswith(prefix)]
    assert weights, (prefix, db.backend.tables_in(schema))
    lookalike = "relx" + prefix[4:] + "keep"  # matches LIKE 'rel_<hash>_%'
    db.sql(f"CREATE TABLE {schema}.{lookalike} (v INTEGER)")
    db.models.drop("m")
    left = set(db.backend.tables_in(schema))
    assert lookalike in left and not (set(weights) & left)


def test_a_dm8_url_is_not_advertised_before_its_backend_exists():
    with pytest.raises(dbdl.ConnectionError, match="unknown database URL scheme 'dm8'.*duckdb://.*postgresql://"):
        dbdl.connect("dm8://SYSDBA@localhost:5236")


def test_a_dataset_that_is_gone_is_dataset_not_found_not_a_model_error(db):
    with pytest.raises(dbdl.DatasetNotFound) as info:
        db.datasets.get("nope")
    assert not isinstance(info.value, dbdl.ModelNotFound)


# -- the rules the layers keep ------------------------------------------------------------------------


def _modules_outside_backends():
    for path in sorted(PACKAGE.rglob("*.py")):
        if "backends" not in path.relative_to(PACKAGE).parts:
            yield path, ast.parse(path.read_text(encoding="utf-8"))


def test_no_backend_is_named_outside_backends():
    """What differs per database is data a backend declares: no module above the backends compares
    a backend's name or imports a database driver."""
    found = []
    for path, tree in _modules_outside_backends():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in ("duckdb", "postgres", "postgresql"):
                found.append(f"{path.name}:{node.lineno}: {node.value!r}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if getattr(node, "module", None) else [])
                if any(n.split(".")[0] in ("duckdb", "psycopg") for n in names):
                    found.append(f"{path.name}:{node.lineno}: imports a driver")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") \
                    and node.args and "backend" in ast.unparse(node.args[0]):
                found.append(f"{path.name}:{node.lineno}: probes {ast.unparse(node)}")
    assert not found, found


def test_every_backend_implements_the_whole_interface():
    import dbdl.backends.duckdb
    import dbdl.backends.postgres  # noqa: F401

    for cls in set(Backend._by_scheme.values()):
        assert not inspect.isabstract(cls), (cls, cls.__abstractmethods__)
        for hook in ("relational", "dialect", "name"):
            assert hasattr(cls, hook), (cls, hook)
        assert set(cls.cost_defaults) >= {"udf_row_s", "dl_byte_s", "rel_weight_s"}
