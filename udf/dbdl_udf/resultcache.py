"""The result cache's bookkeeping rules, shared by the client and the database server.

The same functions serve DuckDB (through the client's Backend, inside one transaction the client
opens) and PostgreSQL (inside dbdl's SECURITY DEFINER functions ``dbdl.cache_fill`` and
``dbdl.cache_record``, through PL/Python's ``plpy``): anything with ``fetchall(sql, params)`` and
``execute(sql, params)`` taking ``?`` placeholders, as in :mod:`dbdl_udf.catalog`.

Every change of ``dbdl.result_cache`` happens in the same transaction as the change of its entry's
counters, so a client or server killed half way leaves ``cache_entries."rows"`` equal to the rows
it counts. An entry is created only together with its first rows, so a cached query that fails
before anything was scored leaves no entry behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .catalog import OPTIONS, SQLRunner

#: bytes counted per cached row besides the key and the output values (label, generation, entry id,
#: the database's row and index overhead, roughly)
ROW_OVERHEAD = 48
#: key bytes of the server's own keys (SHA-256); each client backend declares its own (Backend.cache_key_bytes)
SERVER_KEY_BYTES = 32
#: generations per bound: the eviction granularity
GENERATIONS = 8

_ENTRY = ("SELECT cache_id, gen, row_bytes, hits, misses FROM dbdl.cache_entries "
          "WHERE name = ? AND version = ? AND sha256 = ? AND output = ?")


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


def options_from_json(text: str | None) -> dict[str, Any]:
    stored = json.loads(text or "{}")
    return {key: stored.get(key, default) for key, (_, default, _) in OPTIONS.items()}


def find_entry(db: SQLRunner, key: tuple[str, int, str, int], max_bytes: int, *, key_bytes: int = SERVER_KEY_BYTES,
               width: int | None = None, create: bool = False) -> Entry | None:
    """The entry of (name, version, sha256, output); with ``create``, made when missing (call it
    in the transaction that writes the entry's first rows)."""
    rows = db.fetchall(_ENTRY, key)
    if not rows and create:
        row_bytes = key_bytes + 4 * (width or 1) + ROW_OVERHEAD
        db.execute("INSERT INTO dbdl.cache_entries (name, version, sha256, output, width, row_bytes) "
                   "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", (*key, width, row_bytes))
        rows = db.fetchall(_ENTRY, key)
    if not rows:
        return None
    r = rows[0]
    return Entry(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(max_bytes))


def count_fill(db: SQLRunner, entry: Entry, *, misses: int, inserted: int) -> None:
    """Count the misses scored and the rows they added (in the transaction that added them)."""
    db.execute('UPDATE dbdl.cache_entries SET misses = misses + ?, "rows" = "rows" + ?, gen_rows = gen_rows + ?, '
               "used_at = current_timestamp WHERE cache_id = ?", (misses, inserted, inserted, entry.cache_id))


def record(db: SQLRunner, entry: Entry, *, hits: int, refreshed: int, misses: int = 0) -> None:
    """Count the hits (and misses scored without filling the cache) and the refreshed rows,
    advance the generation, and evict down to the bound."""
    cid = entry.cache_id
    db.execute("UPDATE dbdl.cache_entries SET hits = hits + ?, misses = misses + ?, gen_rows = gen_rows + ?, "
               "used_at = current_timestamp WHERE cache_id = ?", (hits, misses, refreshed, cid))
    # one generation per eighth of the bound written or refreshed (several, after a big statement)
    step = max(1, entry.max_rows // GENERATIONS)
    db.execute("UPDATE dbdl.cache_entries SET gen = gen + CAST(floor(gen_rows / ?) AS BIGINT), "
               "gen_rows = gen_rows % ? WHERE cache_id = ? AND gen_rows >= ?", (step, step, cid, step))
    rows = db.fetchall('SELECT "rows" FROM dbdl.cache_entries WHERE cache_id = ?', (cid,))
    if rows and rows[0][0] > entry.max_rows:
        evict(db, cid, int(rows[0][0]) - entry.max_rows)


def evict(db: SQLRunner, cache_id: int, count: int) -> int:
    """Delete ``count`` rows of an entry, oldest generations first; returns how many went."""
    deleted = 0
    for gen, size in db.fetchall("SELECT gen, count(*) FROM dbdl.result_cache WHERE cache_id = ? "
                                 "GROUP BY gen ORDER BY gen", (cache_id,)):
        if deleted >= count:
            break
        take = min(int(size), count - deleted)
        # RETURNING counts what this transaction deleted (a concurrent eviction may have taken some)
        if take == size:
            gone = db.fetchall("DELETE FROM dbdl.result_cache WHERE cache_id = ? AND gen = ? RETURNING 1",
                               (cache_id, gen))
        else:  # part of a generation: any of its rows are as old as each other
            gone = db.fetchall("DELETE FROM dbdl.result_cache WHERE cache_id = ? AND gen = ? AND key IN (SELECT key "
                               "FROM dbdl.result_cache WHERE cache_id = ? AND gen = ? ORDER BY key LIMIT ?) RETURNING 1",
                               (cache_id, gen, cache_id, gen, take))
        deleted += len(gone)
    db.execute('UPDATE dbdl.cache_entries SET "rows" = "rows" - ?, evicted = evicted + ? WHERE cache_id = ?',
               (deleted, deleted, cache_id))
    return deleted

