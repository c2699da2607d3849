"""The dbdl command on a real database file."""

from __future__ import annotations

import json
import subprocess
import sys

import dbdl


def dbdl_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dbdl.cli", *args], capture_output=True, text=True, check=check)


def test_models_list_show_promote_drop(url, mlp_onnx, mlp2_onnx, tmp_path):
    with dbdl.connect(url) as db:
        db.models.register("fraud", mlp_onnx, description="v1")
    path = tmp_path / "v2.onnx"
    path.write_bytes(mlp2_onnx)
    assert "registered fraud@2" in dbdl_cli("register", url, "fraud", str(path)).stdout

    listed = json.loads(dbdl_cli("models", "list", url, "--json").stdout)
    assert [(m["name"], m["version"], m["serving"]) for m in listed] == [("fraud", 1, False), ("fraud", 2, True)]
    assert listed[0]["description"] == "v1" and listed[0]["n_features"] == 8
    assert "fraud" in dbdl_cli("models", "list", url).stdout

    shown = json.loads(dbdl_cli("models", "show", url, "fraud", "--version", "1", "--json").stdout)
    assert shown["version"] == 1 and shown["outputs"][0]["shape"] == [3]

    dbdl_cli("models", "promote", url, "fraud", "1")
    assert json.loads(dbdl_cli("models", "show", url, "fraud", "--json").stdout)["version"] == 1
    assert "rolled back to version 2" in dbdl_cli("models", "rollback", url, "fraud").stdout
    assert "dropped 2 version(s)" in dbdl_cli("models", "drop", url, "fraud").stdout
    with dbdl.connect(url) as db:
        assert db.models.list() == []


def test_errors_are_one_clear_line(url):
    dbdl.connect(url).close()
    result = dbdl_cli("models", "show", url, "ghost", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("dbdl: error: ModelNotFound: no model named 'ghost'")
    assert "Traceback" not in result.stderr


def test_sql_command(url, scorer_onnx):
    with dbdl.connect(url) as db:
        db.models.register("s", scorer_onnx)
    out = dbdl_cli("sql", url, "SELECT predict('s', [0, 0, 0, 0, 0, 0, 0, 0]) AS p").stdout
    assert "p" in out and "0." in out


def test_models_options_and_cache(url, mlp_onnx, features):
    with dbdl.connect(url) as db:
        db.models.register("m", mlp_onnx)
        db.create_table("t", {"id": list(range(len(features))), "feats": features})
    options = json.loads(dbdl_cli("models", "options", url, "m", "cache=on", "cache_max_bytes=64MiB").stdout)
    assert options == {"cache": True, "cache_max_bytes": 64 << 20, "pad_id": None, "feed": "auto"}
    with dbdl.connect(url) as db:
        db.sql("SELECT predict_class('m', feats) FROM t")
    (stats,) = json.loads(dbdl_cli("models", "cache", url, "m", "--json").stdout)
    assert (stats["name"], stats["misses"], stats["rows"], stats["max_bytes"]) == ("m", 300, 300, 64 << 20)
    assert "emptied" in dbdl_cli("models", "cache", url, "m", "--clear").stdout
    assert json.loads(dbdl_cli("models", "cache", url, "--json").stdout) == []
    bad = dbdl_cli("models", "options", url, "m", "cache=maybe", check=False)
    assert bad.returncode == 2 and "true or false" in bad.stderr
