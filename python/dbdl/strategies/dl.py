"""DL-centric execution: stream the rows out in large columnar batches, score them in the DL
runtime (torch on CUDA for models registered from torch when a GPU is present, else onnxruntime on
all cores), stream the predictions back into a temporary table, and join it into the query.

Only the distinct feature vectors of the SELECT's rows travel (see common.distinct_features).
DuckDB moves Arrow record batches both ways; PostgreSQL moves binary COPY both ways.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Callable

import numpy as np
import sqlglot.expressions as exp

from dbdl_udf.runtime import SESSIONS, check_features, checked_output, run_batch, shape_outputs

from ..registry import ResolvedModel, load_model_bytes
from .common import distinct_features, enclosing_select, scorable, source_rows

if TYPE_CHECKING:
    from ..backends.base import Backend

BATCH_ROWS = 65536
_tables = itertools.count()


def scorer(backend: "Backend", model: ResolvedModel, kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """features (rows x width, float32) -> what predict/predict_array/predict_class return."""
    # torch where it has a GPU to run on; on CPU onnxruntime over all cores is the faster runtime
    # (a 17 MFLOP/row MLP: ~25% faster here than torch's CPU kernels)
    module = _torch_module(backend, model) if len(model.signature.inputs) == 1 and _has_gpu() else None
    output = model.output_index
    spec = model.output_spec

    if module is not None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        module = module.to(device)

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                batch = np.array(x, dtype=np.float32).reshape((len(x), *model.signature.inputs[0].shape))
                y = module(torch.from_numpy(batch).to(device))  # a writable copy: Arrow buffers are read-only
            y = y[output] if isinstance(y, (tuple, list)) else y
            return checked_output(y.float().cpu().numpy(), len(x), spec, model.ref)
    else:
        session, signature = SESSIONS.get(model.sha256, lambda: load_model_bytes(backend, model.sha256), 0,
                                          model=model.ref)

        def run(x: np.ndarray) -> np.ndarray:
            return run_batch(session, signature, x, output, model.ref)

    def score(x: np.ndarray) -> np.ndarray:
        check_features(model.signature, x.shape[1], model.ref)
        return shape_outputs(run(np.ascontiguousarray(x, dtype=np.float32)), kind, model.ref, spec.name,
                             model.signature)

    score.text = kind == "scalar" and spec.is_text  # class names: the backend's table holds text
    return score


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _torch_module(backend: "Backend", model: ResolvedModel):
    from ..errors import PermissionDenied

    try:
        return _read_torch_module(backend, model)
    except PermissionDenied:
        return None  # a role that may not read the stored program scores with onnxruntime


def _read_torch_module(backend: "Backend", model: ResolvedModel):
    row = backend.fetchone("SELECT source FROM dbdl.model_catalog WHERE name = ? AND version = ?",
                           (model.name, model.version))
    if not row or row[0] != "torch":
        return None
    program = backend.fetchone("SELECT torch_program FROM dbdl.model_versions WHERE name = ? AND version = ?",
                               (model.name, model.version))
    if not program or program[0] is None:
        return None
    from ..modelio import load_torch_program

    return load_torch_program(bytes(program[0]))


def dl_call(backend: "Backend", kind: str, model: ResolvedModel, call: exp.Anonymous, features: exp.Expression,
            cleanup: list[str]) -> exp.Expression:
    """Score the SELECT's feature vectors outside the database now; the column that replaces ``call``."""
    select = enclosing_select(call)
    table = f"dbdl_dl_{next(_tables)}"
    cleanup.append(table)
    identity = row_identity(backend, select)
    if identity is not None:
        # one base table: key the predictions by its row identity (PostgreSQL's ctid) — no
        # de-duplication of feature arrays, and a join on a 6-byte key instead of on the arrays
        source = source_rows(select)
        source.set("expressions", [exp.alias_(identity.copy(), "dbdl_k"), exp.alias_(features.copy(), "dbdl_f")])
        # NULL elements are the decoders' to spot (features may be bytea on PostgreSQL)
        source.where(scorable(features), copy=False)
        backend.score_into_temp_table(source.sql(dialect=backend.dialect), scorer(backend, model, kind), kind, table,
                                      keyed=True)
        on = backend.equals(exp.column("dbdl_k", table=table), identity.copy())
    else:
        source = distinct_features(select, features).sql(dialect=backend.dialect)
        backend.score_into_temp_table(source, scorer(backend, model, kind), kind, table)
        on = backend.equals(exp.column("dbdl_f", table=table), features.copy())
    select.join(exp.to_table(table), on=on, join_type="left", copy=False)
    select.args["joins"][-1].meta["dbdl_added"] = True  # not a join of the user's rows
    return exp.column("dbdl_prediction", table=table)


def row_identity(backend: "Backend", select: exp.Select, column: str | None = None) -> exp.Expression | None:
    """``<table>.ctid`` (or ``column``) when the backend has row identities and the SELECT reads
    exactly one base table (not a CTE, view or partitioned table) and joins nothing else; otherwise None."""
    column = column or getattr(backend, "row_identity", None)
    source = select.args.get("from_") or select.args.get("from")
    joins = [j for j in select.args.get("joins") or [] if not j.meta.get("dbdl_added")]
    if column is None or source is None or joins or not isinstance(source.this, exp.Table):
        return None
    table = source.this
    node, ctes = select, set()
    while node is not None:
        with_ = node.args.get("with_") or node.args.get("with")
        if with_ is not None:
            ctes.update(cte.alias for cte in with_.expressions)
        node = node.parent
    if not table.db and table.name in ctes:
        return None
    plain = exp.Table(this=table.this.copy(), db=table.args.get("db").copy() if table.args.get("db") else None)
    if not backend.is_base_table(plain.sql(dialect=backend.dialect)):
        return None
    return exp.column(column, table=table.alias_or_name)
