-- dbdl 0006 (DuckDB): the result cache without an index (docs/cache.md#duckdb-keeps-no-index).
-- A look-up is one hash join of a statement's keys with the entry's rows, which never used the
-- primary key's ART index; but every miss written paid for it: 6-12 µs a row inserted and
-- committed, growing with the cache, against 0.5 µs without it (a 2 MFLOP model scores a row in
-- ~35 µs here). The writer keeps an entry's keys unique itself: it inserts only keys the entry does
-- not hold (an anti-join, planner/cachejoin.py), in the transaction that updates the entry's
-- counters, so two connections of one process filling the same entry at once conflict on that
-- row and one of them rolls back (as they did before). The rows move as they are: same keys,
-- outputs, labels and generations.

CREATE TABLE dbdl.result_cache_0006 (
    cache_id  INTEGER NOT NULL,
    key       BLOB    NOT NULL,
    output    FLOAT[] NOT NULL,
    label     BIGINT,
    gen       BIGINT  NOT NULL
);
INSERT INTO dbdl.result_cache_0006 SELECT cache_id, key, output, label, gen FROM dbdl.result_cache ORDER BY cache_id, key;
DROP TABLE dbdl.result_cache;
ALTER TABLE dbdl.result_cache_0006 RENAME TO result_cache;
