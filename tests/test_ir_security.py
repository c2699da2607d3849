"""The SQL that issue 13's operators compile to runs with the caller's rights on PostgreSQL: every
built-in function and operator in it is named with pg_catalog (what remains unqualified is SQL
syntax — CAST, COALESCE, GREATEST, LEAST, CASE — or dbdl's own names), so nothing a caller planted
on the search_path can answer it. Models: a torch module through Linear, LayerNorm, GELU, Concat,
Clip, Exp, LogSoftmax and ReduceMean, a scikit-learn forest (tree ensembles as CASE and as a walk),
and a small CNN (Conv, pools and a residual Add: the patch-map joins)."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sqlglot.tokens import TokenType

from conftest import export_onnx
from dbdl.planner import plan_statement
from dbdl.query import parse

_OPERATORS = {TokenType.PLUS, TokenType.DASH, TokenType.STAR, TokenType.SLASH, TokenType.EQ, TokenType.LT,
              TokenType.GT, TokenType.LTE, TokenType.GTE, TokenType.NEQ, TokenType.DPIPE, TokenType.MOD}
#: SQL constructs, not functions a search_path resolves
_SYNTAX = {"CAST", "COALESCE", "GREATEST", "LEAST", "NULLIF"}


class _Mixed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.linear, self.norm = torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.norm(self.linear(x)))
        both = torch.cat([h, torch.clamp(x, -1, 1).exp()], dim=1)
        return torch.log_softmax(both, dim=1).mean(dim=1, keepdim=True)


class _Cnn(torch.nn.Module):
    """Conv, BatchNorm (folded), ReLU, a residual Add, AveragePool, MaxPool, global average pooling."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.conv, self.bn, self.fc = torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.BatchNorm2d(2), torch.nn.Linear(2, 3)
        self.avg = torch.nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False)

    def forward(self, x):
        image = x.view(-1, 2, 2, 2)
        h = torch.relu(self.bn(self.conv(image))) + image
        h = torch.nn.functional.max_pool2d(self.avg(h), 2)
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))


def _models(features):
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(
        features, (features[:, 0] > 0).astype(int))
    tree = to_onnx(forest, features[:1], options={id(forest): {"zipmap": False}}).SerializeToString()
    return {"mixed": (export_onnx(_Mixed().eval(), 8), "mixed", 0), "forest": (tree, "forest:probabilities", 1),
            "cnn": (export_onnx(_Cnn().eval(), 8), "cnn", 0)}


def _unqualified(sql: str, dialect) -> set[str]:
    text = re.sub(r"OPERATOR\(pg_catalog\.[^)]*\)", " + 0 + ", sql)  # a qualified operator: a placeholder
    text = re.sub(r"'(?:[^']|'')*'", "''", text)
    tokens = dialect().tokenize(text)
    found = set()
    for k, token in enumerate(tokens):
        placeholder = token.text == "0" or (token.token_type == TokenType.PLUS and (
            k + 1 < len(tokens) and tokens[k + 1].text == "0" or k > 0 and tokens[k - 1].text == "0"))
        if token.token_type in _OPERATORS and not placeholder:
            found.add(f"operator {token.text}")
        called = k + 1 < len(tokens) and tokens[k + 1].token_type == TokenType.L_PAREN
        after_dot = k > 0 and tokens[k - 1].token_type == TokenType.DOT
        # a name before "(" that is no alias list ("AS u(v, i)") and carries no schema
        if called and not after_dot and token.token_type == TokenType.VAR and token.text.upper() not in _SYNTAX \
                and not (k > 0 and tokens[k - 1].token_type == TokenType.ALIAS):
            found.add(f"function {token.text}")
    return found


@pytest.mark.never(["duckdb"], reason="DuckDB has no roles or search_path to plant on (docs/security.md)")
@pytest.mark.never(["spark"], reason="Spark resolves built-in functions before any database's "
                   "functions, and temporary ones are the session's own: nothing to plant on")
@pytest.mark.parametrize("walk", [False, True], ids=["case", "walk"])
def test_the_new_operators_sql_names_every_built_in_with_its_schema(db, features, walk, monkeypatch):
    from dbdl.ir.ops import _trees

    monkeypatch.setattr(_trees, "CASE_NODES", 0 if walk else 10**9)  # forests as CASE, or a node-table walk
    db.create_table("t", {"id": np.arange(20), "feats": features[:20]})
    for name, (data, ref, output) in _models(features).items():
        db.models.register(name, data)
        query = f"SELECT id, predict_array('{ref}', feats) AS p FROM t ORDER BY id"
        planned = plan_statement(db.backend, parse(query, db.backend.dialect)[0], "relation")
        assert _unqualified(planned.sql, db.backend.dialect) == set(), name
        got = np.array([r[1] for r in db.sql(query, strategy="relation").fetchall()], dtype=np.float32)
        session = ort.InferenceSession(db.models.model_bytes(name), providers=["CPUExecutionProvider"])
        want = session.run(None, {session.get_inputs()[0].name: features[:20]})[output]
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_the_check_itself_finds_an_unqualified_operator_or_function():
    from dbdl.backends.postgres.dialect import DbdlPostgres

    assert _unqualified("SELECT a + b, exp(c) FROM t", DbdlPostgres) == {"operator +", "function exp"}
    assert _unqualified("SELECT a OPERATOR(pg_catalog.+) b, pg_catalog.exp(c), CAST(d AS REAL) FROM t AS u(a, b)",
                        DbdlPostgres) == set()


@pytest.mark.never(["duckdb"], reason="DuckDB has no roles or search_path to plant on (docs/security.md)")
@pytest.mark.never(["spark"], reason="Spark resolves built-in functions before any database's "
                   "functions, and temporary ones are the session's own: nothing to plant on")
def test_the_density_probe_names_every_built_in_with_its_schema(db):
    """The planner's sample of a wide input's nonzero share (strategies.base.PredictCall.density)
    runs on the caller's connection: every function and operator it names is pg_catalog's, so a
    caller's planted array_remove, cardinality or avg is never what it calls."""
    from dbdl.query import find_predict_calls

    db.create_table("w", {"id": np.arange(4), "x": np.eye(4, 600, dtype=np.float32)})
    call, = find_predict_calls(parse("SELECT predict_array('m', x) FROM w", db.backend.dialect)[0])
    sql = db.backend.density_probe(call.expressions[1:], 600)
    assert _unqualified(sql, db.backend.dialect) == set(), sql
    assert db.backend.feature_density(call.expressions[1:], 600) == pytest.approx(1 / 600)
