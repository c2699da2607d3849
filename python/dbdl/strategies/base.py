"""What every execution strategy is: a ``Strategy`` registers itself by name, says whether it can
run a predict call and why not, estimates its time, and rewrites the call.

The planner (planner/rewrite.py) builds one ``PredictCall`` per call it pins, asks every registered
strategy for its ``candidate`` (an ``Estimate``: seconds, or the reason it is ruled out), picks the
cheapest feasible one (or the one the caller forced), and lets it ``rewrite`` the call inside the
``StatementPlan`` of the statement. A new strategy is one file in this folder, imported by
``strategies/__init__.py``; see docs/architecture.md, "Adding a strategy".
"""

from __future__ import annotations

import functools
import itertools
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import sqlglot.expressions as exp

from ..errors import PermissionDenied
from ..names import ResolvedModel

if TYPE_CHECKING:
    from ..backends.base import Backend

#: name -> strategy, in the order they were defined (udf, relation, dl): EXPLAIN lists them so
STRATEGIES: dict[str, "Strategy"] = {}

_graphs: dict[str, Any] = {}
#: FLOPs per row of models the IR cannot hold whole (a Conv net), by content hash: the registry's
#: per-operator count (dbdl_udf.flops through dbdl_udf.cost.estimate_cost)
_onnx_flops: dict[str, int] = {}


def model_graph(backend: "Backend", model: ResolvedModel):
    """The model's IR (ir.Graph), built once per content hash and process."""
    graph = _graphs.get(model.sha256)
    if graph is None:
        import onnx

        from dbdl_udf.cost import estimate_cost
        from dbdl_udf.modelcheck import check_model_bytes

        from ..ir import from_onnx

        data = backend.model_bytes(model.sha256)
        check_model_bytes(data, f"model {model.ref!r}")  # from_onnx decodes tensors: never from a file
        proto = onnx.load_from_string(data)
        graph = from_onnx(proto)
        if graph.unsupported:
            _onnx_flops[model.sha256] = estimate_cost(proto)[1]
        _graphs[model.sha256] = graph
    return graph


def memory_budget() -> int:
    """Bytes a strategy that holds the whole model may use: DBDL_MEMORY_BUDGET, else half of RAM."""
    if os.environ.get("DBDL_MEMORY_BUDGET"):
        return int(float(os.environ["DBDL_MEMORY_BUDGET"]))
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def constants(backend: "Backend") -> dict[str, float]:
    """The cost model's constants for ``backend``: its declared defaults, overridden by what
    `dbdl calibrate` measured (a role that may not read dbdl.calibration gets the defaults)."""
    values = dict(backend.cost_defaults)
    try:
        values.update(backend.calibration())
    except PermissionDenied:
        pass
    return values


#: models at least this wide have their input's density sampled for the relation-centric estimate
SPARSE_WIDTH = 512


@dataclass
class Estimate:
    strategy: str
    seconds: float | None  # None when ruled out
    reason: str = ""       # why it was ruled out, or what dominates
    terms: dict[str, float] = field(default_factory=dict)
    layout: str = ""       # relation-centric: "element" or "blocked" weights
    #: hybrid: the split (what EXPLAIN names) and, per operator, where it runs and why
    split: str = ""
    placement: list[str] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return self.seconds is not None


@dataclass
class PredictCall:
    """One pinned predict call, as the strategies see it."""

    backend: "Backend"
    #: scalar, array or class (dbdl_udf.kinds)
    kind: str
    model: ResolvedModel
    #: the model's IR (ir.Graph): FLOPs, parameter bytes, and whether SQL can compute it
    graph: Any
    #: the call's node in the statement, and its feature arguments (one, one per model input, or —
    #: ``wide`` — one number per feature)
    call: exp.Anonymous
    args: list[exp.Expression]
    #: the SELECT the call sits in, and whether it reads rows (SELECT … FROM …)
    select: exp.Select | None
    joinable: bool
    #: rows the call scores (the cache's expected misses, where the result cache takes part)
    rows: int
    #: bytes a strategy that holds the whole model may use
    budget: int
    #: a variant the caller forced ("relation:blocked" → "blocked"), else ""
    variant: str = ""
    #: one column per feature: ``predict('m', c0, c1, c2)`` for a model of one input of width 3 (the
    #: planner's rule, planner/rewrite.py ``wide_call``); ``args`` are those n scalar arguments
    wide: bool = False

    @property
    def features(self) -> exp.Expression:
        return self.args[0]

    @property
    def feature_source(self) -> exp.Expression | list[exp.Expression]:
        """What relation- and DL-centric side queries select: the one features argument, or the list
        of a wide call's columns."""
        return list(self.args) if self.wide else self.args[0]

    def packed(self) -> exp.Expression:
        """A wide call's columns as one array (``Backend.pack_features``), on a backend with arrays."""
        return self.backend.pack_features(self.args, self.model.signature.n_features)

    @functools.cached_property
    def parameters(self) -> bool:
        """The features hold bound parameters (only the in-database form takes them)."""
        return any(a.find(exp.Placeholder, exp.Parameter) is not None for a in self.args)

    @functools.cached_property
    def density(self) -> float:
        """The share of nonzero values in the call's features (sampled where the model is wide,
        SPARSE_WIDTH values or more; 1.0 otherwise): a dense layer over the input joins only those
        in relation-centric SQL."""
        width = self.model.signature.n_features
        if width < SPARSE_WIDTH or not self.joinable or len(self.args) != 1 or self.parameters:
            return 1.0
        return self.backend.feature_density(self.args, width)

    @functools.cached_property
    def costs(self) -> dict[str, float]:
        return constants(self.backend)

    @functools.cached_property
    def flops(self) -> int:
        """FLOPs per row: the IR's count, or where the IR cannot hold the whole model, the
        registry's per-operator count of the ONNX graph (the same rules, dbdl_udf.flops)."""
        if not self.graph.unsupported:
            return self.graph.flops_per_row
        return _onnx_flops.get(self.model.sha256) or (
            2 * self.model.signature.n_features * max(1, self.model.output_spec.per_row or 1))

    @property
    def param_bytes(self) -> int:
        return max(self.graph.param_bytes, self.graph.initializer_bytes)

    @property
    def too_big(self) -> str:
        """Why a strategy that holds the whole model cannot (over the memory budget), or ""."""
        if self.param_bytes > self.budget:
            return f"model needs {self.param_bytes:,} bytes, over the memory budget of {self.budget:,}"
        return ""

    @functools.cached_property
    def plain_problem(self) -> str:
        """Why the call is not the plain form — one vector of float32 values for a model of
        fixed-width float32 inputs — which relation-centric SQL and the result cache take (the
        backend may add a reason of its own: a nested array, bytes); "" when it is."""
        if self.wide:  # the cache keys the columns packed into one array
            return plain_features(self.model, self.args[:1]) or ("" if self.backend.array_features else (
                f"the call passes one column per feature, and {self.backend.name} has no array type to pack them into"))
        return plain_features(self.model, self.args) or (
            (self.backend.relation_feature_problem(self.model, self.args) or "") if self.joinable else "")

    @functools.cached_property
    def relation_problem(self) -> str:
        """As ``plain_problem``, for relation-centric SQL, which also takes float64 vectors and integer
        vectors (the token ids of an embedding lookup); the result cache keeps to float32
        (``plain_problem``)."""
        if self.wide:  # scalar numbers, one column each: checked by the planner
            return plain_features(self.model, self.args[:1], RELATION_DTYPES)
        return plain_features(self.model, self.args, RELATION_DTYPES) or (
            (self.backend.relation_feature_problem(self.model, self.args) or "") if self.joinable else "")


#: the input types relation-centric SQL takes (it computes in double precision): float32 or float64
#: features, integer indices
RELATION_DTYPES = ("float32", "float64", "int32", "int64")


def plain_features(model: ResolvedModel, feature_args: list[exp.Expression],
                   dtypes: tuple[str, ...] = ("float32",)) -> str:
    """Why a call is not one vector of float32 values (or of ``dtypes``) for a model of fixed-width
    inputs of those types; ""."""
    if len(feature_args) > 1:
        return f"the call passes {len(feature_args)} feature arguments"
    for spec in model.signature.inputs:
        if spec.dtype not in dtypes:
            return f"input {spec.name!r} takes {spec.dtype} values, not {' or '.join(dtypes)}"
        if spec.per_row is None or not spec.shape:
            return f"input {spec.name!r} has no fixed width per row (shape {list(spec.shape)})"
    return ""


@dataclass
class StatementPlan:
    """What the rewrites of one statement share: CTEs to add to its query, temporary tables to drop
    after it ran, and names numbered per statement."""

    #: the CTEs relation-centric calls need, added to the statement's query at the end
    ctes: list[exp.CTE] = field(default_factory=list)
    #: temporary tables the statement reads (DL-centric predictions), dropped after it ran
    cleanup: list[str] = field(default_factory=list)
    counter: itertools.count = field(default_factory=itertools.count)


class Strategy(ABC):
    """One way to run predict calls. Subclasses register themselves under ``name``."""

    #: the name users force it by (strategy="relation", /*+ dbdl strategy=relation */)
    name: ClassVar[str]
    #: the same call twice in one SELECT (select list and GROUP BY) is rewritten once and its
    #: expression reused: a strategy whose rewrite adds a join must say so
    joins: ClassVar[bool] = False
    #: its variants depend on the model (hybrid's split points): the planner leaves them to
    #: ``feasible``, which names the valid ones
    model_variants: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            STRATEGIES[cls.name] = cls()

    def variants(self, backend: "Backend") -> tuple[str, ...]:
        """What ``strategy="name:variant"`` may force on this backend (relation: the weight layouts)."""
        return ()

    @abstractmethod
    def feasible(self, call: PredictCall) -> str | None:
        """Why this strategy cannot run ``call``, or None when it can."""

    @abstractmethod
    def estimate(self, call: PredictCall) -> Estimate:
        """The estimated time of a call it can run (``feasible`` said None)."""

    @abstractmethod
    def rewrite(self, call: PredictCall, statement: StatementPlan, estimate: Estimate) -> exp.Expression:
        """The expression replacing the call (what must run first, runs now: DL-centric scoring)."""

    def candidate(self, call: PredictCall) -> Estimate:
        reason = self.feasible(call)
        return Estimate(self.name, None, reason) if reason else self.estimate(call)


def udf_core_share(c: dict[str, float], rows: int) -> float:
    """The share of the machine's cores the in-database function runs on for ``rows`` rows: on
    DuckDB one thread per row group (``udf_row_group_rows``), elsewhere all it is given."""
    if not c.get("udf_row_group_rows"):
        return 1.0
    return min(1.0, max(1, -(-int(rows) // int(c["udf_row_group_rows"]))) / (os.cpu_count() or 1))
