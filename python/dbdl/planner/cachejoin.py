"""The result cache in a query: for a predict call of a model whose cache is on, in ``SELECT … FROM …``,
the planner runs, before the statement itself:

1. the keys of the rows the SELECT scores into a temporary table (with the backend's row identity —
   DuckDB's rowid, PostgreSQL's ctid — when it reads one base table, else per distinct vector);
2. one join of those keys with the cache: the hits, copied into a temporary result table;
3. the misses (one per distinct key), scored by the chosen strategy (udf, relation or dl) and
   added to the result table and to the cache (only the keys it does not hold yet);
4. the bookkeeping: refreshed generations of old hits, counters, eviction.

The statement then reads its predictions from the temporary result table, never from the shared
cache, so a concurrent eviction or a concurrent insert of the same keys cannot change its rows.

Eviction is least-recently-hit at the granularity of generations: an entry's generation advances
by one for each eighth of its bound written or refreshed; a hit on a row older than the previous
generation moves it to the current one (so a hot set is rewritten at most once per generation, not
once per query), and over the bound the oldest generations go first. The store (entries, stats) is
``dbdl.cachestore``; docs/cache.md.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
import sqlglot.expressions as exp

from dbdl_udf.resultcache import count_fill, record

from ..cachestore import find_entry
from ..names import ResolvedModel
from ..query import distinct_features, enclosing_select, row_identity, source_rows

if TYPE_CHECKING:
    from ..backends.base import Backend

#: missed rows per call of dbdl.cache_fill (PostgreSQL): each call is one transaction
FILL_ROWS = 8192

_tables = itertools.count()


def cached_call(backend: "Backend", model: ResolvedModel, call: exp.Anonymous,
                features: exp.Expression, strategy: str | None, options: dict[str, Any], cleanup: list[str],
                compute, chosen: str | None = None) -> tuple[str, ...]:
    """Look up, compute the misses of, and fill the cache for the features of one predict call;
    joins the statement's own result tables (hits, scored misses) into the SELECT and returns their
    names (see output_expression for what replaces the call).

    ``compute(sql, strategy)`` plans and runs a statement holding a predict_array call with the
    cache off (the planner's own entry point); ``strategy`` None lets it choose for the misses.
    ``chosen``: the strategy the planner chose for the whole call; where that scores in this
    process (dl, or DuckDB's udf) and nothing else was forced, the misses stream from the source
    straight into the model, keyed by their cache keys (``_score_streamed``).

    Where the backend's cache is shared by roles that do not trust each other (PostgreSQL:
    ``backend.cache_filled_in_server``), only the server's own code writes the cache: the misses
    go to ``dbdl.cache_fill``, which keys and scores them itself. A strategy forced to anything
    else there scores its misses for this statement only and leaves the cache as it was."""
    select = enclosing_select(call)
    entry = find_entry(backend, model, options)
    n = next(_tables)
    keys, results, misses, scored = (f"dbdl_ck_{n}", f"dbdl_cr_{n}", f"dbdl_cm_{n}", f"dbdl_cs_{n}")
    dialect = backend.dialect
    identity = row_identity(select, backend.row_identity, backend.is_base_table, dialect)
    if identity is not None and backend.cache_streams and _streams(strategy, chosen) \
            and model.output_spec.per_row is not None:
        return _cached_stream(backend, model, select, identity, features, options, entry, cleanup, n)

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

    # 2. the one join with the cache: the hits (an entry that does not exist yet has none)
    cleanup.append(results)
    cid, gen = (entry.cache_id, entry.gen) if entry is not None else (-1, 0)
    backend.execute(backend.own_sql(
        f"CREATE TEMP TABLE {results} AS SELECT c.key AS dbdl_k, c.output AS dbdl_out, c.label AS dbdl_label, "
        f"c.gen AS dbdl_gen FROM dbdl.result_cache AS c WHERE c.cache_id = {cid:d} "
        f"AND c.key IN (SELECT dbdl_k FROM {keys})"))
    hits = backend.fetchone(backend.own_sql(f"SELECT count(*) FROM {results}"))[0]
    backend.analyze(results, ("dbdl_k",))  # the join key: the outputs' array statistics cost most

    # 3. the misses, one per key, scored by the chosen strategy (the features are joined only to
    # the keys that missed: with none, the hash join's build side is empty and the table is not read)
    cleanup.append(misses)
    if identity is not None:
        # one row per missed key (the first row holding it: a narrow hash aggregate, not a sort of
        # the features), joined back to its features by row identity
        missing = backend.own_sql(sqlglot.parse_one(
            f"SELECT min(k.dbdl_j) AS dbdl_j, k.dbdl_k FROM {keys} AS k WHERE k.dbdl_k IS NOT NULL AND NOT EXISTS "
            f"(SELECT 1 FROM {results} AS r WHERE r.dbdl_k = k.dbdl_k) GROUP BY k.dbdl_k", read=dialect))
        rows = source_rows(select)
        rows.set("expressions", [exp.column("dbdl_k", table="dbdl_mk"), exp.alias_(features.copy(), "dbdl_f")])
        rows.join(exp.alias_(exp.Subquery(this=missing), "dbdl_mk", table=True),
                  on=backend.equals(exp.column("dbdl_j", table="dbdl_mk"), identity.copy()), copy=False)
        miss_source = rows.sql(dialect=dialect)
    else:  # distinct vectors that are equal as float32 (DOUBLE[] input) share a key: one per key
        miss_source = backend.own_sql(
            f"SELECT DISTINCT ON (k.dbdl_k) k.dbdl_k, k.dbdl_f FROM {keys} AS k WHERE k.dbdl_k IS NOT NULL "
            f"AND NOT EXISTS (SELECT 1 FROM {results} AS r WHERE r.dbdl_k = k.dbdl_k)")
    in_server = backend.cache_filled_in_server
    fills = not in_server or strategy in (None, "udf")
    ref = exp.Literal.string(model.ref).sql(dialect=dialect)
    if not in_server and _streams(strategy, chosen):
        # the misses' features stream straight out of the source into the model (dl), keyed by
        # their cache key: no copy of the features into a table of misses first
        streamed = True
        cleanup.append(scored)
        missed = _score_streamed(backend, model, miss_source, scored)
    else:
        streamed = False
        if in_server and fills:  # numbered, so that dbdl.cache_fill takes them a block at a time
            miss_source = f"SELECT q.*, pg_catalog.row_number() OVER () AS dbdl_n FROM ({miss_source}) AS q"
        backend.execute(f"CREATE TEMP TABLE {misses} AS {miss_source}")
        missed = backend.fetchone(backend.own_sql(f"SELECT count(*) FROM {misses}"))[0]
    if missed and not streamed:
        cleanup.append(scored)
        if in_server and fills:
            _fill_in_server(backend, ref, misses, scored, missed)
        else:
            width = model.output_spec.per_row
            label = backend.argmax_sql("p.dbdl_out") if width != 1 else "NULL"
            # REAL[] (a list on DuckDB, not the UDF's fixed-size array): the type the cache holds
            compute(f"CREATE TEMP TABLE {scored} AS SELECT p.dbdl_k, CAST(p.dbdl_out AS REAL[]) AS dbdl_out, "
                    f"CAST({label} AS BIGINT) AS dbdl_label "
                    f"FROM (SELECT m.dbdl_k, predict_array({ref}, m.dbdl_f) AS dbdl_out FROM {misses} AS m) AS p",
                    strategy)
        backend.analyze(scored, ("dbdl_k",))

    # 4. the writes and the bookkeeping, each step in one transaction with its counters
    if in_server:
        unfilled = 0 if fills else missed
        if hits or missed:  # also after a fill: the generation advances and the bound holds
            backend.execute(f"SELECT dbdl.cache_record({ref}, ?, ?, ARRAY(SELECT dbdl_k FROM {results} "
                            f"WHERE dbdl_gen OPERATOR(pg_catalog.<) {gen - 1:d}))", (hits, unfilled))
    elif missed or hits:
        _write_client(backend, model, options, scored, results, hits, missed)

    # the statement reads its own results: keys joined to the result table
    if identity is not None:
        on = backend.equals(exp.column("dbdl_j", table=keys), identity.copy())
    else:
        on = backend.equals(exp.column("dbdl_f", table=keys), features.copy())
    select.join(exp.to_table(keys), on=on, join_type="left", copy=False)
    select.args["joins"][-1].meta["dbdl_added"] = True
    # the hits and the scored misses: two tables joined, rather than one more copy of either
    tables = (results, scored) if missed else (results,)
    for table in tables:
        select.join(exp.to_table(table), on=backend.equals(exp.column("dbdl_k", table=table),
                                                           exp.column("dbdl_k", table=keys)),
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
    return backend.array_result(out, model.output_spec.per_row)


def _write_client(backend: "Backend", model: ResolvedModel, options: dict[str, Any], scored: str, results: str,
                  hits: int, missed: int) -> None:
    """Where the client writes the cache (DuckDB): add the scored misses (``scored``: dbdl_k,
    dbdl_out, dbdl_label) the entry does not hold, refresh the generation of the old hits
    (``results``: dbdl_k, dbdl_gen), count both; one transaction."""
    with backend.transaction():
        entry = find_entry(backend, model, options, create=True)
        cid, gen = entry.cache_id, entry.gen
        inserted = 0
        if missed:
            # no index (DuckDB migration 0006): the keys the entry holds are left out by an
            # anti-join, in the transaction that counts them (a concurrent writer of the entry
            # conflicts on its counters' row)
            inserted = backend.execute_count(
                f"INSERT INTO dbdl.result_cache (cache_id, key, output, label, gen) SELECT {cid:d}, s.dbdl_k, "
                f"CAST(s.dbdl_out AS REAL[]), s.dbdl_label, {gen:d} FROM {scored} AS s WHERE s.dbdl_out IS NOT NULL "
                f"AND NOT EXISTS (SELECT 1 FROM dbdl.result_cache AS c WHERE c.cache_id = {cid:d} AND c.key = s.dbdl_k)")
            count_fill(backend, entry, misses=missed, inserted=inserted)
        refreshed = 0
        if hits:
            refreshed = backend.execute_count(
                f"UPDATE dbdl.result_cache SET gen = {gen:d} WHERE cache_id = {cid:d} AND gen < {gen - 1:d} "
                f"AND key IN (SELECT dbdl_k FROM {results} WHERE dbdl_gen < {gen - 1:d})")
        record(backend, entry, hits=hits, refreshed=refreshed)
    if inserted > 1000 and inserted * 10 > hits:
        backend.analyze("dbdl.result_cache")  # the next look-up plans on the grown table


def _cached_stream(backend: "Backend", model: ResolvedModel, select: exp.Select, identity: exp.Expression,
                   features: exp.Expression, options: dict[str, Any], entry: Any, cleanup: list[str], n: int
                   ) -> tuple[str, ...]:
    """The cached call in one pass over its rows (``backend.cache_streams``: DuckDB, a SELECT of
    one base table whose strategy scores in this process). The rows stream out as the DL-centric
    strategy reads them; each batch's keys are digested, looked up in the entry, and the rows whose
    key is neither cached nor scored earlier in the statement are scored from the same batch, one
    per key. The statement joins one table, every row's output by row identity; then the misses
    are added to the cache and the hits counted and refreshed (``_write_client``). Returns the
    statement's result table (dbdl_out, dbdl_label), joined into ``select``."""
    from ..strategies.dl import BATCH_ROWS, scorer

    rows_t, raw, hits_t, scored = f"dbdl_cr_{n}", f"dbdl_cr_{n}_raw", f"dbdl_ch_{n}", f"dbdl_cs_{n}"
    width = int(model.output_spec.per_row)
    key_type = np.dtype(f"V{backend.cache_key_bytes:d}")  # the keys as numpy sees them: fixed-width bytes
    source = source_rows(select)
    source.set("expressions", [exp.alias_(identity.copy(), "dbdl_k"),
                               exp.alias_(backend.cache_input(model, features.copy()), "dbdl_f")])
    source.where(exp.Not(this=exp.Is(this=features.copy(), expression=exp.Null())), copy=False)
    run = scorer(backend, model, "array")
    lookup = backend.cache_lookup(entry.cache_id) if entry is not None and entry.gen >= 0 else None
    scored_at: dict[bytes, int] = {}  # key of a miss → its row among the statement's misses
    miss_keys: list[np.ndarray] = []
    miss_out: list[np.ndarray] = []
    hit_keys: set[bytes] = set()  # the distinct inputs found in the cache (the hits counted)
    stale: list[tuple[np.ndarray, np.ndarray]] = []  # hits of old generations: (keys, generations)
    refresh_below = (entry.gen - 1) if entry is not None else 0

    def score(columns) -> np.ndarray:
        column = columns[0]
        matrix = column.values.reshape(-1, column.width)
        if not column.valid.all():
            matrix = matrix[column.valid]
        out = np.empty((len(matrix), width), np.float32)
        if not len(matrix):
            return out
        keys = backend.cache_digests(matrix)
        digests = np.frombuffer(keys.buffers()[2], dtype=key_type, count=len(matrix))
        todo = np.ones(len(matrix), dtype=bool)
        if lookup is not None:
            hits = lookup(keys)
            if hits.num_rows:
                at = hits.column("i").to_numpy()
                hit_keys.update(digests[at].tolist())
                # rows of a generation before the previous one get refreshed (_write_client)
                gens = hits.column("gen").to_numpy()
                old = gens < refresh_below
                stale.append((digests[at][old], gens[old]))
                out[at] = np.asarray(pc.list_flatten(hits.column("output")).to_numpy(zero_copy_only=False),
                                     dtype=np.float32).reshape(-1, width)
                todo[at] = False
        rest = np.flatnonzero(todo)
        if len(rest):
            unique, first, inverse = np.unique(digests[rest], return_index=True, return_inverse=True)
            at = np.fromiter((scored_at.get(k, -1) for k in unique.tolist()), dtype=np.int64, count=len(unique))
            new = at < 0
            base = sum(len(o) for o in miss_out)
            if new.any():
                picked = rest[first[new]]
                miss_out.append(np.asarray(run(matrix[picked]), dtype=np.float32).reshape(-1, width))
                miss_keys.append(digests[picked])
                at[new] = base + np.arange(int(new.sum()))
                scored_at.update(zip(unique[new].tolist(), at[new].tolist()))
            rows = at[inverse.reshape(-1)]
            outputs = np.concatenate(miss_out) if len(miss_out) > 1 else miss_out[0]
            out[rest] = outputs[rows]
        return out

    cleanup += [raw, rows_t]
    try:
        backend.score_into_temp_table(source.sql(dialect=backend.dialect), score, "array", raw,
                                      signature=model.signature, keyed=True, batch_rows=BATCH_ROWS)
    finally:
        if lookup is not None:
            lookup.close()
    label = backend.argmax_sql("r.dbdl_prediction") if width != 1 else "NULL"
    backend.execute(f"CREATE TEMP TABLE {rows_t} AS SELECT r.dbdl_k AS dbdl_j, r.dbdl_prediction AS dbdl_out, "
                    f"CAST({label} AS BIGINT) AS dbdl_label FROM {raw} AS r")
    backend.drop_temp_table(raw)

    missed = int(sum(len(k) for k in miss_keys))
    hits = len(hit_keys)
    if hits:
        cleanup.append(hits_t)
        backend.arrow_temp_table(hits_t, pa.table({"dbdl_k": _binary(np.concatenate([k for k, _ in stale])),
                                              "dbdl_gen": pa.array(np.concatenate([g for _, g in stale]), pa.int64())}))
    if missed:
        outputs = np.concatenate(miss_out)
        labels = pa.nulls(missed, pa.int64()) if width == 1 else pa.array(np.argmax(outputs, axis=1), pa.int64())
        cleanup.append(scored)
        backend.arrow_temp_table(scored, pa.table({
            "dbdl_k": _binary(np.concatenate(miss_keys)),
            "dbdl_out": pa.FixedSizeListArray.from_arrays(pa.array(outputs.reshape(-1)), width),
            "dbdl_label": labels}))
    if missed or hits:
        _write_client(backend, model, options, scored, hits_t, hits, missed)
    select.join(exp.to_table(rows_t), on=backend.equals(exp.column("dbdl_j", table=rows_t), identity.copy()),
                join_type="left", copy=False)
    select.args["joins"][-1].meta["dbdl_added"] = True
    return (rows_t,)


def _binary(digests: np.ndarray) -> pa.Array:
    """A binary Arrow array of the fixed-width keys held in a numpy ``V<bytes>`` array."""
    n, size = len(digests), digests.dtype.itemsize
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(np.arange(0, size * n + 1, size, dtype=np.int32)),
                                                  pa.py_buffer(np.ascontiguousarray(digests).tobytes())])


def _streams(strategy: str | None, chosen: str | None) -> bool:
    """Whether the misses are scored by ``_score_streamed``: the statement's own choice runs the
    model in this process (dl, or a Python UDF — the same onnxruntime session either way) and the
    caller forced no other strategy."""
    return strategy == "dl" or strategy is None and chosen in ("dl", "udf")


def _score_streamed(backend: "Backend", model: ResolvedModel, miss_source: str, scored: str) -> int:
    """Score the rows of ``miss_source`` (dbdl_k, the cache key; dbdl_f, the features) as the
    DL-centric strategy does, Arrow batches out and back, into ``scored`` (dbdl_k, dbdl_out REAL[],
    dbdl_label); returns its rows (with none, ``scored`` is not made). The features are read once,
    from the source, never copied."""
    from ..strategies.dl import BATCH_ROWS, scorer

    raw = f"{scored}_raw"
    try:
        backend.score_into_temp_table(miss_source, scorer(backend, model, "array"), "array", raw,
                                      signature=model.signature, keyed=True, batch_rows=BATCH_ROWS)
        if not backend.fetchone(f"SELECT count(*) FROM {raw}")[0]:  # every row hit: nothing to add
            return 0
        width = model.output_spec.per_row
        label = backend.argmax_sql("p.dbdl_prediction") if width != 1 else "NULL"
        backend.execute(f"CREATE TEMP TABLE {scored} AS SELECT p.dbdl_k, CAST(p.dbdl_prediction AS REAL[]) AS dbdl_out, "
                        f"CAST({label} AS BIGINT) AS dbdl_label FROM {raw} AS p")
    finally:
        backend.drop_temp_table(raw)
    return int(backend.fetchone(f"SELECT count(*) FROM {scored}")[0])


def _fill_in_server(backend: "Backend", ref: str, misses: str, scored: str, missed: int) -> None:
    """Score the misses with dbdl.cache_fill, a block of FILL_ROWS per call: the server keys each
    input by the digest of its own bytes, scores it, adds it to the cache and counts it in one
    transaction, and returns what it added for this statement's result table."""
    for lo in range(0, missed, FILL_ROWS):
        block = (f"SELECT f.key AS dbdl_k, CAST(f.output AS REAL[]) AS dbdl_out, f.label AS dbdl_label "
                 f"FROM dbdl.cache_fill({ref}, ARRAY(SELECT dbdl.cache_input(m.dbdl_f) FROM {misses} AS m "
                 f"WHERE m.dbdl_n OPERATOR(pg_catalog.>) {lo:d} AND m.dbdl_n OPERATOR(pg_catalog.<=) "
                 f"{lo + FILL_ROWS:d})) AS f")
        backend.execute(f"CREATE TEMP TABLE {scored} AS {block}" if lo == 0 else f"INSERT INTO {scored} {block}")
