"""The result cache's store: which models have it on, their entries, the expected hit rate, stats.

A model with the option ``cache=true`` gets one *entry* per (version, output) in
``dbdl.cache_entries``; its rows live in ``dbdl.result_cache`` keyed by (entry, digest of the input
tensor's bytes) and hold the output row and its arg-max. A new version is a new entry, so it never
sees an older version's results; dropping a model or a version drops its entries. The bookkeeping
rules (entries made with their first rows, counters, generations, eviction) are
``dbdl_udf.resultcache``'s, shared with PostgreSQL's ``dbdl.cache_fill``; the query rewrite that reads
and fills the cache is the planner's (planner/cachejoin.py). See docs/cache.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbdl_udf.resultcache import GENERATIONS, ROW_OVERHEAD, Entry, options_from_json
from dbdl_udf.resultcache import find_entry as _find

from .names import ResolvedModel

if TYPE_CHECKING:
    from .backends.base import Backend

__all__ = ["GENERATIONS", "ROW_OVERHEAD", "CacheStats", "Entry", "enabled", "expected_hit_rate", "find_entry",
           "stats"]


def enabled(backend: "Backend", model: ResolvedModel) -> dict[str, Any] | None:
    """The model's options when its cache is on, else None (also where the backend has no result cache)."""
    if backend.cache_key_bytes is None:
        return None
    options = options_from_json(backend.version_options(model.name, model.version))
    return options if options["cache"] else None


def find_entry(backend: "Backend", model: ResolvedModel, options: dict[str, Any], create: bool = False
               ) -> Entry | None:
    return _find(backend, (model.name, model.version, model.sha256, model.output_index),
                 int(options["cache_max_bytes"]), key_bytes=backend.cache_key_bytes,
                 width=model.output_spec.per_row, create=create)


def expected_hit_rate(backend: "Backend", model: ResolvedModel, options: dict[str, Any]) -> float:
    """What the cost model assumes: the entry's hit rate so far (0 for a version not yet cached)."""
    entry = find_entry(backend, model, options)
    rate = entry.hit_rate if entry is not None else None
    return 0.0 if rate is None else rate


@dataclass(frozen=True)
class CacheStats:
    """One cached model version and output, as ``dbdl.cache_stats`` shows it."""

    name: str
    version: int
    output: int
    hits: int
    misses: int
    hit_rate: float | None
    rows: int
    bytes: int
    max_bytes: int
    evicted: int


def stats(backend: "Backend", name: str | None = None) -> list[CacheStats]:
    sql = ('SELECT name, version, output, hits, misses, hit_rate, "rows", bytes, max_bytes, evicted '
           "FROM dbdl.cache_stats")
    rows = backend.catalog.fetchall(sql + (" WHERE name = ?" if name else "") + " ORDER BY name, version, output",
                            (name,) if name else ())
    return [CacheStats(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4]), None if r[5] is None else float(r[5]),
                       int(r[6]), int(r[7]), int(r[8]), int(r[9])) for r in rows]
