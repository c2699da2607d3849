"""Shared by TreeEnsembleRegressor and TreeEnsembleClassifier: the forest read from the ONNX
attributes, evaluated in numpy as onnxruntime does, and in SQL in one of two forms. Defines no
operator.

- "case" (small forests): each tree one nested CASE over the row's features as columns ``f<k>``:
  no join per row, but the statement grows with the nodes, and sqlglot and the database parse and
  plan it (a 45,000-node forest: about a minute before the first row);
- "walk" (large forests, ``CASE_NODES``): the nodes as a table, every row stepping down every tree
  one level per join (``SQLBuilder.tree_walk``): a statement of fixed size, depth joins of rows ×
  trees each.

Comparisons follow onnxruntime (IEEE): a NaN feature fails every comparison but NEQ, and goes the
true way where missing_value_tracks_true. SQL orders NaN above every number and equal to itself,
so the SQL conditions add ``= NaN`` / ``<> NaN`` terms where the two differ."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from . import _ml

MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ")
_NAN = "CAST('NaN' AS DOUBLE PRECISION)"
_CMP = {"BRANCH_LEQ": "<=", "BRANCH_LT": "<", "BRANCH_GTE": ">=", "BRANCH_GT": ">", "BRANCH_EQ": "=",
        "BRANCH_NEQ": "<>"}
#: forests with more nodes than this are compiled as a walk over a node table, not as CASE text
CASE_NODES = 2000
#: a node's comparison in the walk form, ``{v}`` the feature value and ``{t}`` the threshold, with
#: NaN values as onnxruntime treats them (SQL orders NaN above every number and equal to itself)
_WALK = {"BRANCH_LEQ": "{v} <= {t}", "BRANCH_LT": "{v} < {t}", "BRANCH_EQ": "{v} = {t}", "BRANCH_NEQ": "{v} <> {t}",
         "BRANCH_GTE": f"({{v}} >= {{t}} AND {{v}} <> {_NAN})", "BRANCH_GT": f"({{v}} > {{t}} AND {{v}} <> {_NAN})"}


def _number(x: float) -> str:
    x = float(x)
    if np.isnan(x):
        return _NAN
    if np.isinf(x):
        return f"CAST('{'-' if x < 0 else ''}Infinity' AS DOUBLE PRECISION)"
    return repr(x)


@dataclass
class Tree:
    root: int
    #: node index -> (feature, mode, threshold, true index, false index, missing tracks true)
    branches: dict[int, tuple[int, str, float, int, int, bool]] = field(default_factory=dict)
    #: leaf index -> [(target, weight)]
    leaves: dict[int, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))

    def depth(self) -> int:
        def d(n):
            b = self.branches.get(n)
            return 0 if b is None else 1 + max(d(b[3]), d(b[4]))
        return d(self.root)


class Forest:
    """The trees of a TreeEnsemble* node; ``prefix`` is "target" or "class"."""

    def __init__(self, op_type: str, attrs: dict, prefix: str) -> None:
        a = attrs
        tree_ids = list(a.get("nodes_treeids", []))
        node_ids = list(a.get("nodes_nodeids", []))
        modes = [_ml.text(m) for m in a.get("nodes_modes", [])]
        bad = sorted(set(modes) - set(MODES) - {"LEAF"})
        if bad:
            raise NotImplementedError(f"{op_type} with node mode {bad[0]}")
        values = _ml.floats(a, "nodes_values")
        values = np.zeros(len(node_ids)) if values is None else values
        features = list(a.get("nodes_featureids", [0] * len(node_ids)))
        trues = list(a.get("nodes_truenodeids", [0] * len(node_ids)))
        falses = list(a.get("nodes_falsenodeids", [0] * len(node_ids)))
        missing = list(a.get("nodes_missing_value_tracks_true", []) or [0] * len(node_ids))
        index = {(t, n): k for k, (t, n) in enumerate(zip(tree_ids, node_ids))}
        children = {(t, trues[k]) for k, t in enumerate(tree_ids) if modes[k] != "LEAF"} | \
                   {(t, falses[k]) for k, t in enumerate(tree_ids) if modes[k] != "LEAF"}
        self.trees: dict[int, Tree] = {}
        for k, (t, n) in enumerate(zip(tree_ids, node_ids)):
            if t not in self.trees and (t, n) not in children:
                self.trees[t] = Tree(k)
        for k, (t, n) in enumerate(zip(tree_ids, node_ids)):
            if t not in self.trees:
                raise NotImplementedError(f"{op_type} with a tree that has no root")
            if modes[k] != "LEAF":
                try:
                    self.trees[t].branches[k] = (int(features[k]), modes[k], float(values[k]), index[(t, trues[k])],
                                                 index[(t, falses[k])], bool(missing[k]))
                except KeyError:
                    raise NotImplementedError(f"{op_type} with a branch to a node that does not exist") from None
        weights = _ml.floats(a, f"{prefix}_weights")
        for t, n, target, w in zip(a.get(f"{prefix}_treeids", []), a.get(f"{prefix}_nodeids", []),
                                   a.get(f"{prefix}_ids", []), [] if weights is None else weights):
            if (t, n) not in index or t not in self.trees:
                raise NotImplementedError(f"{op_type} with a weight on a node that does not exist")
            self.trees[t].leaves[index[(t, n)]].append((int(target), float(w)))
        self.targets = sorted({target for tree in self.trees.values() for ws in tree.leaves.values() for target, _ in ws})
        self.aggregate = _ml.text(a.get("aggregate_function"), "SUM")
        if self.aggregate not in ("SUM", "AVERAGE"):
            raise NotImplementedError(f"{op_type} with aggregate_function {self.aggregate}")
        self.base = _ml.floats(a, "base_values")
        self.features = sorted({b[0] for tree in self.trees.values() for b in tree.branches.values()})

    @property
    def n_nodes(self) -> int:
        return sum(len(t.branches) + len(t.leaves) for t in self.trees.values())

    # -- numpy ---------------------------------------------------------------------------------

    def scores(self, x: np.ndarray, n_targets: int) -> np.ndarray:
        """(batch, n_targets) aggregated leaf weights (base values not added)."""
        x = x.astype(np.float32).reshape(len(x), -1).astype(np.float64)
        out = np.zeros((len(x), n_targets))
        rows = np.arange(len(x))
        for tree in self.trees.values():
            at = np.full(len(x), tree.root)
            for _ in range(len(tree.branches) + 1):
                todo = np.array([a in tree.branches for a in at])
                if not todo.any():
                    break
                for node in set(at[todo].tolist()):
                    f, mode, th, t, fl, mvtt = tree.branches[node]
                    sel = at == node
                    v = x[sel, f]
                    with np.errstate(invalid="ignore"):
                        cond = {"BRANCH_LEQ": v <= th, "BRANCH_LT": v < th, "BRANCH_GTE": v >= th,
                                "BRANCH_GT": v > th, "BRANCH_EQ": v == th, "BRANCH_NEQ": v != th}[mode]
                    if mvtt:
                        cond = cond | np.isnan(v)
                    at[sel] = np.where(cond, t, fl)
            for leaf in set(at.tolist()):
                sel = rows[at == leaf]
                for target, w in tree.leaves.get(leaf, []):
                    out[sel, target] += w
        if self.aggregate == "AVERAGE":
            out /= max(1, len(self.trees))
        return out

    # -- SQL -----------------------------------------------------------------------------------

    def _case(self, tree: Tree, node: int, target: int) -> str:
        b = tree.branches.get(node)
        if b is None:
            return _number(sum(w for t, w in tree.leaves.get(node, []) if t == target))
        f, mode, th, t, fl, mvtt = b
        yes, no = self._case(tree, t, target), self._case(tree, fl, target)
        if yes == no:  # both ways give the same value
            return yes
        col, cmp, lit = f"f{f}", _CMP[mode], _number(th)
        cond = f"{col} {cmp} {lit}"
        if mode in ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_EQ") and mvtt:
            cond = f"({cond} OR {col} = {_NAN})"
        elif mode in ("BRANCH_GTE", "BRANCH_GT") and not mvtt:
            cond = f"({cond} AND {col} <> {_NAN})"
        return f"CASE WHEN {cond} THEN {yes} ELSE {no} END"

    @property
    def form(self) -> str:
        """How the forest is compiled to SQL: "case" or "walk" (see the module's docstring)."""
        thresholds = [b[2] for t in self.trees.values() for b in t.branches.values()]
        if self.n_nodes <= CASE_NODES or not np.isfinite(thresholds).all():
            return "case"
        return "walk"

    @property
    def depth(self) -> int:
        return max((t.depth() for t in self.trees.values()), default=0)

    def scores_sql(self, sql, x, targets: list[tuple[int, float]]):
        """(rid, j, score) for each (target, base value) of ``targets`` at position j, in the
        forest's SQL form, over the input relation ``x`` (rid, i, v)."""
        form = self.form if self.form == "case" or sql.tree_form is None else sql.tree_form(self)
        if form == "case":
            table = sql.columns(x, self.features)
            return sql.from_columns(table, [self.sql(target, base) for target, base in targets])
        return self._walk_sql(sql, x, targets)

    def _walk_sql(self, sql, x, targets: list[tuple[int, float]]):
        k, f, th, yes, no, miss, mode = [], [], [], [], [], [], []
        ends = set()
        for tree in self.trees.values():
            for node, (feature, m, threshold, t, fl, mvtt) in tree.branches.items():
                k.append(node), f.append(feature), th.append(threshold), yes.append(t), no.append(fl)
                miss.append(int(mvtt)), mode.append(MODES.index(m))
                ends.update(c for c in (t, fl) if c not in tree.branches)
            if tree.root not in tree.branches:
                ends.add(tree.root)
        for leaf in sorted(ends):  # a leaf steps to itself: every level is one inner join
            k.append(leaf), f.append(0), th.append(0.0), yes.append(leaf), no.append(leaf), miss.append(0)
            mode.append(0)
        nodes = {"k": np.array(k), "f": np.array(f), "th": np.array(th, dtype=np.float64), "yes": np.array(yes),
                 "no": np.array(no), "m": np.array(miss), "c": np.array(mode)}
        used = sorted(set(mode[:len(mode) - len(ends)])) or [0]
        tests = {c: _WALK[MODES[c]].format(v="x.v", t="n.th") for c in used}
        if any(miss):
            tests = {c: t if MODES[c] == "BRANCH_NEQ" else f"({t} OR n.m = 1 AND x.v = {_NAN})" for c, t in tests.items()}
        cond = tests[used[0]] if len(used) == 1 else \
            "CASE n.c " + " ".join(f"WHEN {c} THEN {t}" for c, t in tests.items()) + " END"
        index = {target: j for j, (target, _) in enumerate(targets)}
        weights = [(leaf, index[target], w) for tree in self.trees.values() for leaf, ws in tree.leaves.items()
                   for target, w in ws if target in index]
        leaves = {"k": np.array([w[0] for w in weights], dtype=np.int64),
                  "j": np.array([w[1] for w in weights], dtype=np.int64),
                  "w": np.array([w[2] for w in weights], dtype=np.float64)}
        roots = {"k": np.array([t.root for t in self.trees.values()])}
        bases = {"j": np.arange(len(targets)), "b": np.array([b for _, b in targets], dtype=np.float64)}
        divisor = float(max(1, len(self.trees))) if self.aggregate == "AVERAGE" else 1.0
        return sql.tree_walk(x, nodes, roots, leaves, bases, self.depth, cond, divisor)

    def sql(self, target: int, base: float) -> str:
        """The aggregated score of ``target``: one CASE per tree, summed (with the base value)."""
        terms = []
        for tree in self.trees.values():
            if any(t == target for ws in tree.leaves.values() for t, _ in ws):
                term = self._case(tree, tree.root, target)
                if term not in ("0.0", "-0.0"):
                    terms.append(f"({term})" if term.startswith("CASE") else term)
        total = " + ".join(terms) or "0.0"
        if self.aggregate == "AVERAGE":
            total = f"({total}) / {float(max(1, len(self.trees)))!r}"
        return f"{_number(base)} + {total}" if base else total

