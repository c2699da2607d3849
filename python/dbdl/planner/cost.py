"""Choosing among the strategies' estimates, and what EXPLAIN shows of the choice.

Each strategy estimates its own time (strategies/udf.py, relation.py, dl.py, from the constants
the backend declares and `dbdl calibrate` measures: strategies.base.constants); here the result
cache's share is added (``with_cache``) and the candidates of one call are kept with the choice
(``CallPlan``, printed by ``db.explain``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..strategies.base import Estimate


def with_cache(costs: dict[str, float], estimates: list[Estimate], rows: int, computed: int) -> list[Estimate]:
    """Estimates made for the ``computed`` misses, plus what the cache costs: a key and one join per
    row, an insert per miss."""
    for e in estimates:
        if e.feasible:
            e.terms["cache look-up"] = rows * costs["cache_lookup_row_s"]
            e.terms["cache insert"] = computed * costs["cache_insert_row_s"]
            e.seconds = sum(e.terms.values())
    return estimates


def cheapest(candidates: list[Estimate]) -> Estimate | None:
    feasible = [e for e in candidates if e.feasible]
    return min(feasible, key=lambda e: e.seconds) if feasible else None


@dataclass
class CallPlan:
    """The candidates for one predict call and the one chosen."""

    call: str
    model: str
    rows: int
    flops_per_row: int
    param_bytes: int
    candidates: list[Estimate]
    choice: str
    forced: bool = False
    cache: str = ""  # how the result cache takes part, if the model has it on

    def describe(self) -> str:
        lines = [f"{self.call}: model {self.model}, ~{self.rows:,} rows, {self.flops_per_row:,} FLOPs/row, "
                 f"{self.param_bytes:,} parameter bytes"]
        for e in self.candidates:
            mark = "→" if e.strategy == self.choice else " "
            cost = f"{e.seconds * 1e3:12.3f} ms" if e.feasible else "   ruled out"
            detail = e.reason or ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in e.terms.items())
            if e.layout and e.feasible:
                detail += f" ({e.layout} layout)"
            lines.append(f"  {mark} {e.strategy:<9}{cost}   {detail}")
            if e.placement and e.feasible:  # a hybrid plan: where each operator runs, and why
                lines.extend(f"        {line}" for line in e.placement)
        how = "forced by the caller" if self.forced else "lowest estimate"
        if self.cache:
            lines.append(f"  {self.cache}")
        lines.append(f"  chosen: {self.choice} ({how})")
        return "\n".join(lines)


class Explain(list):
    """The per-call plans of one query; prints as text."""

    def __str__(self) -> str:
        if not self:
            return "no predict calls with a literal model reference: nothing for dbdl to plan"
        return "\n\n".join(plan.describe() for plan in self)

    def choices(self) -> list[str]:
        return [plan.choice for plan in self]
