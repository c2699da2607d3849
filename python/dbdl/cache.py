"""The result cache: predictions kept in an index table and reused (docs/cache.md).

A model with the option ``cache=true`` gets one *entry* per (version, output) in
``dbdl.cache_entries``; its rows live in ``dbdl.result_cache`` keyed by (entry, digest of the input
tensor's bytes) and hold the output row and its arg-max. A new version is a new entry, so it never
sees an older version's results; dropping a model or a version drops its entries.

For a predict call in ``SELECT … FROM …`` the planner runs, before the statement itself:

1. the keys of the rows the SELECT scores into a temporary table (with the row identity —
   DuckDB's rowid, PostgreSQL's ctid — when it reads one base table, else per distinct vector);
2. one join of those keys with the cache: the hits, copied into a temporary result table;
3. the misses (one per distinct key), scored by the chosen strategy (udf, relation or dl) and
   added to the result table and, with ``ON CONFLICT DO NOTHING``, to the cache;
4. the bookkeeping: refreshed generations of old hits, counters, eviction.

The statement then reads its predictions from the temporary result table, never from the shared
cache, so a concurrent eviction or a concurrent insert of the same keys cannot change its rows.

Eviction is least-recently-hit at the granularity of generations: an entry's generation advances
by one for each eighth of its bound written or refreshed; a hit on a row older than the previous
generation moves it to the current one (so a hot set is rewritten at most once per generation, not
once per query), and over the bound the oldest generations go first.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlglot
import sqlglot.expressions as exp

from dbdl_udf import catalog

from .strategies.common import distinct_features, enclosing_select, source_rows

if TYPE_CHECKING:
    from .backends.base import Backend
    from .registry import ResolvedModel

#: bytes counted per cached row besides the key and the output values (label, generation, entry id,
#: the database's row and index overhead, roughly)
ROW_OVERHEAD = 48
#: key bytes per backend (BLAKE2b-128 on DuckDB, SHA-256 on PostgreSQL)
KEY_BYTES = {"duckdb": 16, "postgres": 32}
#: generations per bound: the eviction granularity
GENERATIONS = 8

_tables = itertools.count()


@dataclass
class Entry:
    cache_id: int
    gen: int
    row_bytes: int
    hits: int
    misses: int
    max_bytes: int

    @property
    def max_rows(self) -> int:
        return max(1, self.max_bytes // self.row_bytes)

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None


def enabled(backend: "Backend", model: "ResolvedModel") -> dict[str, Any] | None:
    """The model's options when its cache is on, else None. Read through dbdl.model_catalog, which
    every role that may predict may read (on PostgreSQL dbdl_user cannot read dbdl.models)."""
    import json

    if backend.name not in KEY_BYTES:
        return None
    row = backend.fetchone("SELECT options FROM dbdl.model_catalog WHERE name = ? AND version = ?",
                           (model.name, model.version))
    stored = json.loads(row[0] or "{}") if row else {}
    options = {key: stored.get(key, default) for key, (_, default, _) in catalog.OPTIONS.items()}
    return options if options["cache"] else None


def find_entry(backend: "Backend", model: "ResolvedModel", options: dict[str, Any], create: bool = True
               ) -> Entry | None:
    key = (model.name, model.version, model.sha256, model.output_index)
    sql = ("SELECT cache_id, gen, row_bytes, hits, misses FROM dbdl.cache_entries "
           "WHERE name = ? AND version = ? AND sha256 = ? AND output = ?")
    row = backend.fetchone(sql, key)
    if row is None and create:
        width = model.output_spec.per_row
        row_bytes = KEY_BYTES.get(backend.name, 32) + 4 * (width or 1) + ROW_OVERHEAD
        backend.execute("INSERT INTO dbdl.cache_entries (name, version, sha256, output, width, row_bytes) "
                        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", (*key, width, row_bytes))
        row = backend.fetchone(sql, key)
    if row is None:
        return None
    return Entry(int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]), int(options["cache_max_bytes"]))


def expected_hit_rate(backend: "Backend", model: "ResolvedModel", options: dict[str, Any]) -> float:
    """What the cost model assumes: the entry's hit rate so far (0 for a version not yet cached)."""
    entry = find_entry(backend, model, options, create=False)
    rate = entry.hit_rate if entry is not None else None
    return 0.0 if rate is None else rate


def cached_call(backend: "Backend", model: "ResolvedModel", call: exp.Anonymous,
                features: exp.Expression, strategy: str | None, options: dict[str, Any], cleanup: list[str],
                compute) -> tuple[str, ...]:
    """Look up, compute the misses of, and fill the cache for the features of one predict call;
    joins the statement's own result tables (hits, scored misses) into the SELECT and returns their
    names (see output_expression for what replaces the call).

    ``compute(sql, strategy)`` plans and runs a statement holding a predict_array call with the
    cache off (the planner's own entry point); ``strategy`` None lets it choose for the misses."""
    from .strategies.dl import row_identity

    select = enclosing_select(call)
    entry = find_entry(backend, model, options)
    n = next(_tables)
    keys, results, misses, scored = (f"dbdl_ck_{n}", f"dbdl_cr_{n}", f"dbdl_cm_{n}", f"dbdl_cs_{n}")
    dialect = backend.dialect
    identity_column = getattr(backend, "cache_identity", None)
    identity = row_identity(backend, select, identity_column) if identity_column else None

    # 1. the keys of the rows this SELECT scores
    cleanup.append(keys)
    if identity is not None:
        source = source_rows(select)
        source.set("expressions", [exp.alias_(identity.copy(), "dbdl_j"),
                                   exp.alias_(backend.cache_key(model, features.copy()), "dbdl_k")])
        source.where(exp.Not(this=exp.Is(this=features.copy(), expression=exp.Null())), copy=False)
    else:
        source = exp.select(exp.column("dbdl_f", table="d"),
                            exp.alias_(backend.cache_key(model, exp.column("dbdl_f", table="d")), "dbdl_k")).from_(
            exp.alias_(exp.Subquery(this=distinct_features(select, features)), "d", table=True))
    backend.execute(f"CREATE TEMP TABLE {keys} AS {source.sql(dialect=dialect)}")
    backend.analyze(keys)

    # 2. the one join with the cache: the hits
    cleanup.append(results)
    cid, gen = entry.cache_id, entry.gen
    backend.execute(
        f"CREATE TEMP TABLE {results} AS SELECT c.key AS dbdl_k, c.output AS dbdl_out, c.label AS dbdl_label, "
        f"c.gen AS dbdl_gen FROM dbdl.result_cache AS c WHERE c.cache_id = {cid:d} "
        f"AND c.key IN (SELECT dbdl_k FROM {keys})")
    hits = backend.fetchone(f"SELECT count(*) FROM {results}")[0]
    backend.analyze(results)

    # 3. the misses, one per key, scored by the chosen strategy (the features are joined only to
    # the keys that missed: with none, the hash join's build side is empty and the table is not read)
    cleanup.append(misses)
    if identity is not None:
        # one row per missed key (the first row holding it: a narrow hash aggregate, not a sort of
        # the features), joined back to its features by row identity
        missing = sqlglot.parse_one(
            f"SELECT min(k.dbdl_j) AS dbdl_j, k.dbdl_k FROM {keys} AS k WHERE k.dbdl_k IS NOT NULL AND NOT EXISTS "
            f"(SELECT 1 FROM {results} AS r WHERE r.dbdl_k = k.dbdl_k) GROUP BY k.dbdl_k", read=dialect)
        rows = source_rows(select)
        rows.set("expressions", [exp.column("dbdl_k", table="dbdl_mk"), exp.alias_(features.copy(), "dbdl_f")])
        rows.join(exp.alias_(exp.Subquery(this=missing), "dbdl_mk", table=True),
                  on=exp.EQ(this=exp.column("dbdl_j", table="dbdl_mk"), expression=identity.copy()), copy=False)
        miss_source = rows.sql(dialect=dialect)
    else:  # distinct vectors that are equal as float32 (DOUBLE[] input) share a key: one per key
        miss_source = (f"SELECT DISTINCT ON (k.dbdl_k) k.dbdl_k, k.dbdl_f FROM {keys} AS k WHERE k.dbdl_k IS NOT NULL "
                       f"AND NOT EXISTS (SELECT 1 FROM {results} AS r WHERE r.dbdl_k = k.dbdl_k)")
    backend.execute(f"CREATE TEMP TABLE {misses} AS {miss_source}")
    missed = backend.fetchone(f"SELECT count(*) FROM {misses}")[0]
    inserted = 0
    if missed:
        cleanup.append(scored)
        width = model.output_spec.per_row
        label = backend.argmax_sql("p.dbdl_out") if width != 1 else "NULL"
        ref = exp.Literal.string(model.ref).sql(dialect=dialect)
        # REAL[] (a list on DuckDB, not the UDF's fixed-size array): the type the cache holds
        compute(f"CREATE TEMP TABLE {scored} AS SELECT p.dbdl_k, CAST(p.dbdl_out AS REAL[]) AS dbdl_out, "
                f"CAST({label} AS BIGINT) AS dbdl_label "
                f"FROM (SELECT m.dbdl_k, predict_array({ref}, m.dbdl_f) AS dbdl_out FROM {misses} AS m) AS p",
                strategy)
        backend.analyze(scored)
        inserted = backend.execute_count(
            f"INSERT INTO dbdl.result_cache (cache_id, key, output, label, gen) SELECT {cid:d}, dbdl_k, dbdl_out, "
            f"dbdl_label, {gen:d} FROM {scored} WHERE dbdl_out IS NOT NULL ON CONFLICT DO NOTHING")
        if inserted > 1000 and inserted * 10 > hits:
            backend.analyze("dbdl.result_cache")  # the next look-up plans on the grown table

    # 4. bookkeeping: refresh old hits, count, advance the generation, evict
    refreshed = 0
    if hits:
        refreshed = backend.execute_count(
            f"UPDATE dbdl.result_cache SET gen = {gen:d} WHERE cache_id = {cid:d} AND gen < {gen - 1:d} "
            f"AND key IN (SELECT dbdl_k FROM {results} WHERE dbdl_gen < {gen - 1:d})")
    _account(backend, entry, hits=hits, misses=missed, inserted=inserted, refreshed=refreshed)

    # the statement reads its own results: keys joined to the result table
    if identity is not None:
        on = exp.EQ(this=exp.column("dbdl_j", table=keys), expression=identity.copy())
    else:
        on = exp.EQ(this=exp.column("dbdl_f", table=keys), expression=features.copy())
    select.join(exp.to_table(keys), on=on, join_type="left", copy=False)
    select.args["joins"][-1].meta["dbdl_added"] = True
    # the hits and the scored misses: two tables joined, rather than one more copy of either
    tables = (results, scored) if missed else (results,)
    for table in tables:
        select.join(exp.to_table(table), on=exp.EQ(this=exp.column("dbdl_k", table=table),
                                                   expression=exp.column("dbdl_k", table=keys)),
                    join_type="left", copy=False)
        select.args["joins"][-1].meta["dbdl_added"] = True
    return tables


def output_expression(backend: "Backend", kind: str, model: "ResolvedModel", tables: tuple[str, ...]
                      ) -> exp.Expression:
    """What predict / predict_array / predict_class return, read from a statement's result tables."""
    def column(name: str) -> exp.Expression:
        cols = [exp.column(name, table=t) for t in tables]
        return cols[0] if len(cols) == 1 else exp.Coalesce(this=cols[0], expressions=cols[1:])

    out = column("dbdl_out")
    if kind == "class":
        return column("dbdl_label")
    if kind == "scalar":
        # PostgreSQL subscripts only a column or a parenthesized expression
        return exp.Bracket(this=exp.Paren(this=out) if isinstance(out, exp.Coalesce) else out,
                           expressions=[exp.Literal.number(1)], offset=1)
    width = model.output_spec.per_row
    if backend.name == "duckdb" and width is not None:
        return exp.Cast(this=out, to=exp.DataType.build(f"FLOAT[{width}]", dialect="duckdb"))
    return out


def _account(backend: "Backend", entry: Entry, *, hits: int, misses: int, inserted: int, refreshed: int) -> None:
    """Counters, the generation, and eviction down to the bound."""
    cid = entry.cache_id
    backend.execute(
        'UPDATE dbdl.cache_entries SET hits = hits + ?, misses = misses + ?, "rows" = "rows" + ?, '
        "gen_rows = gen_rows + ?, used_at = current_timestamp WHERE cache_id = ?",
        (hits, misses, inserted, inserted + refreshed, cid))
    # one generation per eighth of the bound written or refreshed (several, after a big statement)
    step = max(1, entry.max_rows // GENERATIONS)
    backend.execute("UPDATE dbdl.cache_entries SET gen = gen + CAST(floor(gen_rows / ?) AS BIGINT), "
                    "gen_rows = gen_rows % ? WHERE cache_id = ? AND gen_rows >= ?", (step, step, cid, step))
    row = backend.fetchone('SELECT "rows" FROM dbdl.cache_entries WHERE cache_id = ?', (cid,))
    if row is None or row[0] <= entry.max_rows:
        return
    evict(backend, cid, int(row[0]) - entry.max_rows)


def evict(backend: "Backend", cache_id: int, count: int) -> int:
    """Delete ``count`` rows of an entry, oldest generations first; returns how many went."""
    deleted = 0
    for gen, size in backend.fetchall("SELECT gen, count(*) FROM dbdl.result_cache WHERE cache_id = ? "
                                      "GROUP BY gen ORDER BY gen", (cache_id,)):
        if deleted >= count:
            break
        if size <= count - deleted:
            deleted += backend.execute_count("DELETE FROM dbdl.result_cache WHERE cache_id = ? AND gen = ?",
                                             (cache_id, gen))
        else:  # part of a generation: any of its rows are as old as each other
            deleted += backend.execute_count(
                "DELETE FROM dbdl.result_cache WHERE cache_id = ? AND gen = ? AND key IN (SELECT key FROM "
                "dbdl.result_cache WHERE cache_id = ? AND gen = ? ORDER BY key LIMIT ?)",
                (cache_id, gen, cache_id, gen, count - deleted))
    backend.execute('UPDATE dbdl.cache_entries SET "rows" = "rows" - ?, evicted = evicted + ? WHERE cache_id = ?',
                    (deleted, deleted, cache_id))
    return deleted


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
    rows = backend.fetchall(sql + (" WHERE name = ?" if name else "") + " ORDER BY name, version, output",
                            (name,) if name else ())
    return [CacheStats(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4]), None if r[5] is None else float(r[5]),
                       int(r[6]), int(r[7]), int(r[8]), int(r[9])) for r in rows]
