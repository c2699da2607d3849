"""What importing dbdl costs: torch is imported by the paths that need it (a torch model to
register, the training readers, DL-centric execution on a GPU), not by ``import dbdl``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import STRATEGIES, export_onnx, make_mlp

ROOT = Path(__file__).resolve().parents[1]


def test_import_connect_register_and_predict_do_not_import_torch(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(export_onnx(make_mlp((4, 8, 3)), 4))
    script = f"""
import sys
import dbdl
assert "torch" not in sys.modules, "import dbdl imported torch"
db = dbdl.connect("duckdb:///:memory:")
db.models.register("m", {str(model)!r})
db.sql("CREATE TABLE t AS SELECT [1, 2, 3, 4]::FLOAT[4] AS f FROM range(3)")
for strategy in {STRATEGIES!r}:
    assert len(db.sql("SELECT predict_class('m', f) FROM t", strategy=strategy).fetchall()) == 3
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "python"), str(ROOT / "udf")]))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
