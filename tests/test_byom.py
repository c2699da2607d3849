"""Bring your own model: the zoo of tests/zoo.py registered and scored through SQL on every backend.

Each zoo model — made by skl2onnx, onnxmltools, a plain ``torch.onnx.export`` call, or shipped
with the ONNX package's backend tests — is registered once per backend (one database per backend
for this module) and scored with ``predict`` / ``predict_array`` / ``predict_class`` under every
strategy, in every input form the entry lists; the rows must equal what the model's own library
gives (scikit-learn, torch, onnxruntime on the original file). Relation-centric execution runs
where dbdl's IR compiles the model; elsewhere the test is skipped with EXPLAIN's reason (and an
entry that says ``relation=True`` fails instead).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from conftest import BACKENDS, STRATEGIES, skip_model_gap
from zoo import ZOO, Form, SQLColumn, ZooModel, build

import dbdl

FUNCTIONS = {"scalar": "predict", "text": "predict", "array": "predict_array", "class": "predict_class"}


class Zoo:
    """One database per backend; each zoo model registered (and each form's table written) once."""

    def __init__(self, db: dbdl.Database, backend: str):
        self.db, self.backend = db, backend
        self.registered: dict[str, BaseException | None] = {}
        self.tables: dict[tuple[str, int], str | BaseException] = {}

    def register(self, model: ZooModel) -> None:
        if model.key not in self.registered:
            try:
                self.db.models.register(model.key, model.model, example=model.example, description=model.what)
                if model.options:
                    self.db.models.set_options(model.key, **model.options)
                self.registered[model.key] = None
            except BaseException as exc:  # noqa: BLE001 - kept and re-raised by every test of the model
                self.registered[model.key] = exc
        error = self.registered[model.key]
        if error is not None:
            raise error

    def table(self, model: ZooModel, form_index: int) -> str:
        key = (model.key, form_index)
        if key not in self.tables:
            name = f"z_{model.key}_{form_index}"
            form = model.forms[form_index]
            data = {"id": pa.array(np.arange(model.n_rows, dtype=np.int64))}
            for col in dict.fromkeys(form.args):
                data[col] = model.columns[col]
            try:
                if any(isinstance(v, SQLColumn) for v in data.values()):
                    self._sql_table(name, data)
                else:
                    self.db.create_table(name, data)
                self.tables[key] = name
            except BaseException as exc:  # noqa: BLE001
                self.tables[key] = exc
        value = self.tables[key]
        if isinstance(value, BaseException):
            raise value
        return value

    def _sql_table(self, name: str, data: dict) -> None:
        types = {c: (v.types[self.backend] if isinstance(v, SQLColumn) else "BIGINT") for c, v in data.items()}
        self.db.sql(f"CREATE TABLE {name} ({', '.join(f'{c} {t}' for c, t in types.items())})")
        insert = f"INSERT INTO {name} VALUES ({', '.join('?' for _ in data)})"
        columns = [v.rows if isinstance(v, SQLColumn) else v.to_pylist() for v in data.values()]
        for row in zip(*columns):
            self.db.sql(insert, list(row))


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def zoo_db(request, tmp_path_factory):
    url = BACKENDS[request.param](tmp_path_factory.mktemp(f"zoo_{request.param}"), request)
    database = dbdl.connect(url)
    yield Zoo(database, request.param)
    database.close()


def _cases():
    """(model key, form index) for every input form of every zoo entry. The entries are built here,
    at collection (about 5 s, once per session: ``build`` caches them); one that cannot be built
    gets a single case, whose test then fails with the builder's error."""
    cases = []
    for key in ZOO:
        try:
            model = build(key)
        except Exception:  # noqa: BLE001 - a converter that fails here fails that entry's tests, not the module
            cases.append(pytest.param(key, 0, id=f"{key}-unbuilt"))
            continue
        for i, form in enumerate(model.forms):
            cases.append(pytest.param(key, i, id=f"{key}-{'+'.join(form.args)}"))
    return cases


CASES = _cases()


def sql_for(model: ZooModel, check, form: Form, table: str) -> str:
    ref = model.key if check.output is None else f"{model.key}:{check.output}"
    args = ", ".join(form.args)
    return f"SELECT id, {FUNCTIONS[check.kind]}('{ref}', {args}) AS v FROM {table} ORDER BY id"


def relation_ruled_out(db, sql: str) -> str | None:
    """EXPLAIN's reason when relation-centric execution cannot run this query, else None."""
    for plan in db.explain(sql):
        for candidate in plan.candidates:
            if candidate.strategy == "relation" and not candidate.feasible:
                return candidate.reason
    return None


def compare(check, rows, what: str) -> None:
    values = [r[1] for r in rows]
    assert len(values) == len(check.expected), what
    if check.kind == "text":
        assert [str(v) for v in values] == [str(v) for v in check.expected], what
        return
    assert all(v is not None for v in values), f"{what}: NULL predictions"
    if check.kind == "class":
        np.testing.assert_array_equal(np.asarray(values, dtype=np.int64), check.expected, err_msg=what)
        return
    got = np.asarray([np.asarray(v, dtype=np.float32).ravel() for v in values]) if check.kind == "array" else \
        np.asarray(values, dtype=np.float32)
    np.testing.assert_allclose(got, np.asarray(check.expected, np.float32).reshape(got.shape), atol=check.atol,
                               rtol=check.rtol, err_msg=what)


@pytest.mark.parametrize("key", list(ZOO))
def test_zoo_model_registers(zoo_db, key):
    model = build(key)
    zoo_db.register(model)
    info = zoo_db.db.models.get(key)
    assert info.version == 1 and info.serving
    assert info.description == model.what
    # the registered bytes run in onnxruntime (the registry may have rewritten them: batch axis, opset)
    import onnxruntime as ort

    ort.InferenceSession(zoo_db.db.models.model_bytes(key), providers=["CPUExecutionProvider"])
    # what registration did is recorded, and the bytes as given are kept
    kinds = {r.kind for r in info.rewrites}
    if "fixed_batch" in model.needs:
        assert info.batch_mode in ("symbolic", "slices") and kinds & {"batch_symbolic", "batch_slices"}, info.rewrites
    else:
        assert info.batch_mode == "dynamic", info.rewrites
    if "old_opset" in model.needs:
        assert "opset" in kinds and info.opset >= 7, info.rewrites
    if "zipmap" in model.needs:
        assert "zipmap" in kinds, info.rewrites
        assert [o.name for o in info.outputs][1] == "probabilities"
    if kinds - {"batch_slices"} and isinstance(model.model, bytes):  # the bytes were rewritten
        assert zoo_db.db.models.model_bytes(key, original=True) == model.model
        assert info.original_sha256 is not None
    elif not kinds - {"batch_slices"}:  # slices: the model runs as given
        assert info.original_sha256 is None


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("key, form_index", CASES)
def test_zoo_model_scores_like_its_library(zoo_db, key, form_index, strategy):
    model = build(key)
    form = model.forms[form_index]
    zoo_db.register(model)
    table = zoo_db.table(model, form_index)
    db = zoo_db.db
    for check in model.checks:
        sql = sql_for(model, check, form, table)
        if strategy == "relation":
            reason = relation_ruled_out(db, sql)
            if reason is not None:
                if model.relation and form.relation:
                    pytest.fail(f"{key}: relation-centric execution should compile this model, EXPLAIN says: {reason}")
                skip_model_gap(strategy, key, reason)
        rows = db.sql(sql, strategy=strategy).fetchall()
        compare(check, rows, f"{key} [{form.note}] {sql} under {strategy} on {zoo_db.backend}")


# -- classifiers: what predict and predict_class mean on a label output ---------------------------------


def _classifiers() -> list[str]:
    keys = []
    for key in ZOO:
        try:
            if any(c.output == "probabilities" for c in build(key).checks):
                keys.append(key)
        except Exception:  # noqa: BLE001 - reported by that entry's own tests
            pass
    return keys


CLASSIFIERS = _classifiers()


@pytest.mark.parametrize("key", CLASSIFIERS)
def test_predict_class_on_a_label_output_points_to_probabilities(zoo_db, key):
    model = build(key)
    zoo_db.register(model)
    table = zoo_db.table(model, 0)
    with pytest.raises(dbdl.Error, match=f"{key}(@1)?:probabilities"):
        zoo_db.db.sql(f"SELECT predict_class('{key}', x) FROM {table}").fetchall()


def test_string_labels_come_back_as_text(zoo_db):
    model = build("skl_logistic_string_labels")
    zoo_db.register(model)
    table = zoo_db.table(model, 0)
    rows = zoo_db.db.sql(f"SELECT id, predict('{model.key}', x) AS v FROM {table} ORDER BY id").fetchall()
    assert all(isinstance(r[1], str) for r in rows)
    assert sorted({r[1] for r in rows}) == sorted(set(model.checks[0].expected.tolist()))
