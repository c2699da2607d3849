"""DL-centric execution: stream the rows out in large columnar batches, score them in the DL
runtime (torch on CUDA for models registered from torch when a GPU is present, else onnxruntime on
all cores), stream the predictions back into a temporary table, and join it into the query.

Where the SELECT reads one base table, its rows travel keyed by the backend's row identity
(DuckDB's rowid, PostgreSQL's ctid); otherwise only the distinct feature vectors of its rows
(query.distinct_features), keyed by themselves. DuckDB moves Arrow record batches both ways;
PostgreSQL moves binary COPY both ways.

    estimate = setup + rows × (bytes in + bytes out) × transfer cost + rows × FLOPs / runtime FLOP/s
"""

from __future__ import annotations

import functools
import itertools
import os
import secrets
from typing import TYPE_CHECKING, Callable

import numpy as np
import sqlglot.expressions as exp

from dbdl_udf.runtime import SESSIONS, Column, check_features, checked_output, run_batch, shape_outputs, valid_rows

from ..errors import ShapeMismatch
from ..names import ResolvedModel
from ..query import distinct_features, enclosing_select, row_identity, scorable, source_rows
from .base import Estimate, PredictCall, StatementPlan, Strategy

if TYPE_CHECKING:
    from ..backends.base import Backend

BATCH_ROWS = 65536
#: rows per model run inside a transfer batch: bounds the model's intermediates (a CNN's activations,
#: a padded batch) while keeping onnxruntime's per-run overhead negligible
RUN_ROWS = 4096
_tables = itertools.count()
#: a random part of the temporary tables' names, with the process's pid (a forked child's own)
_TABLE_TAG = secrets.token_hex(3)


def scorer(backend: "Backend", model: ResolvedModel, kind: str,
           model_bytes: Callable[[], bytes] | None = None, wide: bool = False) -> Callable[..., np.ndarray]:
    """What predict/predict_array/predict_class return, for a batch: ``score(columns)`` takes a list
    of ``dbdl_udf.runtime.Column`` (one per feature argument; the rows valid in all of them are
    scored, in order) and ``score(matrix)`` a (rows x width) float32 matrix, as before.

    ``wide``: the call passes one column per feature (``predict('m', c0, c1, c2)`` for a model of
    one input of width 3): the columns, one number per row each, are stacked into one (rows x n)
    matrix for the model's input (``stack_columns``).

    ``model_bytes``: the ONNX bytes to run instead of the stored version's (a hybrid plan's
    sub-model, ``model`` then carrying its hash and signature): onnxruntime, no feeding options."""
    from dbdl_udf.runtime import build_feeds, take_rows

    # torch where it has a GPU to run on; on CPU onnxruntime over all cores is the faster runtime
    # (a 17 MFLOP/row MLP: ~25% faster here than torch's CPU kernels)
    module = _torch_module(backend, model) if model_bytes is None and _has_gpu() else None
    output = model.output_index
    spec = model.output_spec
    options = feed_options_of(backend, model) if model_bytes is None else {}

    if module is not None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        module = module.to(device)

        def run(x, n: int) -> np.ndarray:
            feeds = build_feeds(model.signature, x, options, model.ref)
            with torch.no_grad():
                # writable copies: Arrow buffers are read-only
                y = module(*[torch.from_numpy(np.array(feeds[s.name])).to(device) for s in model.signature.inputs])
            y = y[output] if isinstance(y, (tuple, list)) else y
            return checked_output(y.float().cpu().numpy(), n, spec, model.ref)
    else:
        session, signature = SESSIONS.get(model.sha256, model_bytes or (lambda: backend.model_bytes(model.sha256)), 0,
                                          model=model.ref)

        def run(x, n: int) -> np.ndarray:
            return run_batch(session, signature, x, output, model.ref, options)

    def score(x) -> np.ndarray:
        if wide and isinstance(x, (list, tuple)) and len(x) > 1:
            x = [stack_columns(x, model.ref)]
        if isinstance(x, (list, tuple)):
            rows = valid_rows(x)
            x = take_rows(x, rows)
            n = int(rows.sum())
            if n == 0:
                return shape_outputs(np.zeros((0, spec.per_row or 0), np.float32), kind, model.ref, spec.name,
                                     model.signature)
            if n <= RUN_ROWS:
                y = run(x, n)
            else:  # one transfer batch, several runs: a model's intermediates grow with the rows it is fed
                # (each run a slice of the batch's buffers, not a copy)
                y = np.concatenate([run([c.slice(start, start + RUN_ROWS) for c in x], min(RUN_ROWS, n - start))
                                    for start in range(0, n, RUN_ROWS)])
            return shape_outputs(y, kind, model.ref, spec.name, model.signature)
        check_features(model.signature, x.shape[1], model.ref)
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.concatenate([run(x[i:i + RUN_ROWS], len(x[i:i + RUN_ROWS])) for i in range(0, len(x), RUN_ROWS)]) \
            if len(x) > RUN_ROWS else run(x, len(x))
        return shape_outputs(y, kind, model.ref, spec.name, model.signature)

    # what a backend that scores where the rows are (Spark's executors) needs to build this scorer
    # again there: the closure holds a session and the connection, which do not travel
    score.recipe = {"model": model, "kind": kind, "model_bytes": model_bytes, "options": options, "wide": wide}
    return score


def stack_columns(columns: list[Column], model_ref: str = "the model") -> Column:
    """One Column of (rows x n) values from n Columns of one number per row (a call of one column per
    feature); a row is valid where every column is (a NULL in any gives NULL)."""
    valid = valid_rows(columns)
    for k, column in enumerate(columns):
        if column.fixed_width() != 1:
            raise ShapeMismatch(f"model {model_ref!r} is called with one column per feature, and argument {k + 2} "
                                "holds more than one number per row; pass one number per column, or the whole "
                                "vector as one argument")
    kind = np.result_type(*[c.values.dtype for c in columns])
    matrix = np.empty((len(valid), len(columns)), dtype=kind)
    for k, column in enumerate(columns):
        matrix[:, k] = column.matrix()[:, 0] if column.offsets is not None else column.values
    return Column.from_matrix(matrix, valid)


def feed_options_of(backend: "Backend", model: ResolvedModel) -> dict:
    """The model's feeding options (pad_id, feed), read through dbdl.model_catalog."""
    from dbdl_udf.runtime import feed_options

    return feed_options(backend.version_options(model.name, model.version))


@functools.lru_cache(maxsize=1)
def _has_gpu() -> bool:
    """A CUDA device torch can use. Without an NVIDIA driver (no /dev/nvidiactl) torch is not even
    imported: importing it costs a second or two, and DL-centric scoring on CPU is onnxruntime's."""
    import sys

    if "torch" not in sys.modules and not os.path.exists("/dev/nvidiactl"):
        return False
    import torch

    return torch.cuda.is_available()


def _torch_module(backend: "Backend", model: ResolvedModel):
    """The torch module of a version registered from torch (None for others, and for a role that
    may not read the stored program: it scores with onnxruntime)."""
    program = backend.torch_program(model.name, model.version)
    if program is None:
        return None
    from ..modelio import load_torch_program

    return load_torch_program(program)


def feature_names(n: int) -> list[str]:
    """The columns a DL-centric source query gives the feature arguments: dbdl_f, dbdl_f1, dbdl_f2 …"""
    return ["dbdl_f"] + [f"dbdl_f{i}" for i in range(1, n)]


def dl_call(backend: "Backend", kind: str, model: ResolvedModel, call: exp.Anonymous,
            features: exp.Expression | list[exp.Expression], cleanup: list[str], wide: bool = False) -> exp.Expression:
    """Score the SELECT's feature vectors outside the database now; the column that replaces ``call``.

    ``features`` is the call's one features argument, or the list of them (``predict('m', a, b)``):
    the source query then has one column per argument (``feature_names``). ``wide``: the list is one
    number per feature of the model's one input (``predict('m', c0, c1, c2)``): the scorer stacks
    the columns into one matrix (``scorer(..., wide=True)``); where the backend scores elsewhere than
    in this process (``Backend.dl_scores_in_client`` False: Spark's executors), the source packs
    them into one array instead (``Backend.pack_features``)."""
    args = list(features) if isinstance(features, (list, tuple)) else [features]
    if wide and not backend.dl_scores_in_client:
        args, wide = [backend.pack_features(args, model.signature.n_features)], False
    names = feature_names(len(args))
    select = enclosing_select(call)
    # unique across processes and clients too: a global temporary table's definition (DM8's) is
    # shared by every session of the schema, while its rows are each session's own
    table = f"dbdl_dl_{os.getpid()}_{_TABLE_TAG}_{next(_tables)}"
    cleanup.append(table)
    # predict() of class names: the backend's table holds text
    table_kind = "text" if kind == "scalar" and model.output_spec.is_text else kind
    identity = row_identity(select, backend.row_identity, backend.is_base_table, backend.dialect)
    if identity is not None:
        # one base table: key the predictions by its row identity (DuckDB's rowid, PostgreSQL's
        # ctid) — no de-duplication of feature arrays, and a join on a narrow key instead of the arrays
        source = source_rows(select)
        source.set("expressions", [exp.alias_(identity.copy(), "dbdl_k")]
                   + [exp.alias_(a.copy(), name) for a, name in zip(args, names)])
        # NULL elements are the decoders' to spot (features may be bytea on PostgreSQL)
        source.where(exp.and_(*[scorable(a) for a in args]), copy=False)
        backend.score_into_temp_table(source.sql(dialect=backend.dialect), scorer(backend, model, kind, wide=wide),
                                      table_kind, table, signature=model.signature, keyed=True, batch_rows=BATCH_ROWS)
        on = backend.equals(exp.column("dbdl_k", table=table), identity.copy())
    else:
        rows = distinct_features(select, args[0])
        if len(args) > 1:
            rows.set("expressions", [exp.alias_(a.copy(), name) for a, name in zip(args, names)])
            rows.where(exp.and_(*[scorable(a) for a in args[1:]]), copy=False)
        backend.score_into_temp_table(rows.sql(dialect=backend.dialect), scorer(backend, model, kind, wide=wide),
                                      table_kind, table, signature=model.signature, batch_rows=BATCH_ROWS)
        on = exp.and_(*[backend.equals(exp.column(name, table=table), a.copy()) for a, name in zip(args, names)])
    select.join(exp.to_table(table), on=on, join_type="left", copy=False)
    select.args["joins"][-1].meta["dbdl_added"] = True  # not a join of the user's rows
    return exp.column("dbdl_prediction", table=table)


class DLCentric(Strategy):
    name = "dl"
    joins = True

    def feasible(self, call: PredictCall) -> str | None:
        if call.too_big:
            return call.too_big
        if not call.joinable:
            return "predict is not inside a SELECT … FROM …"
        if call.parameters:
            return "the features hold bound parameters, which only the in-database form takes"
        return None

    def estimate(self, call: PredictCall) -> Estimate:
        c, rows, model = call.costs, call.rows, call.model
        bytes_in = 4 * model.signature.n_features
        bytes_out = 4 * (model.output_spec.per_row or 1)
        terms = {"setup": c["dl_setup_s"], "transfer": rows * (bytes_in + bytes_out) * c["dl_byte_s"],
                 "compute": rows * call.flops / c["dl_flops_per_s"]}
        return Estimate(self.name, sum(terms.values()), terms=terms)

    def rewrite(self, call: PredictCall, statement: StatementPlan, estimate: Estimate) -> exp.Expression:
        return dl_call(call.backend, call.kind, call.model, call.call,
                       call.features if len(call.args) == 1 else call.args, statement.cleanup, wide=call.wide)
