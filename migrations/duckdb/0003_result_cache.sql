-- dbdl 0003: the result cache (docs/cache.md).
-- One entry per (model version, output) whose model has the option cache=true; its rows are keyed
-- by the digest of the input tensor's float32 bytes and hold the output row and its arg-max.

CREATE SEQUENCE IF NOT EXISTS dbdl.cache_entry_ids START 1;

CREATE TABLE IF NOT EXISTS dbdl.cache_entries (
    cache_id     INTEGER   PRIMARY KEY DEFAULT nextval('dbdl.cache_entry_ids'),
    name         VARCHAR   NOT NULL,
    version      INTEGER   NOT NULL,
    sha256       VARCHAR   NOT NULL,
    output       INTEGER   NOT NULL,            -- index of the model output cached
    width        INTEGER,                       -- values per output row
    row_bytes    BIGINT    NOT NULL,            -- what one cached row counts against the bound
    gen          BIGINT    NOT NULL DEFAULT 0,  -- current generation (least-recently-hit eviction)
    gen_rows     BIGINT    NOT NULL DEFAULT 0,  -- rows written or refreshed in it
    hits         BIGINT    NOT NULL DEFAULT 0,
    misses       BIGINT    NOT NULL DEFAULT 0,
    "rows"       BIGINT    NOT NULL DEFAULT 0,
    evicted      BIGINT    NOT NULL DEFAULT 0,
    created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp,
    used_at      TIMESTAMP,
    UNIQUE (name, version, sha256, output)
);

CREATE TABLE IF NOT EXISTS dbdl.result_cache (
    cache_id  INTEGER NOT NULL,
    key       BLOB    NOT NULL,
    output    FLOAT[] NOT NULL,
    label     BIGINT,
    gen       BIGINT  NOT NULL,
    PRIMARY KEY (cache_id, key)
);

-- What SQL users read: one row per cached model version and output. The bound (cache_max_bytes,
-- default 512 MiB) is the model's option; bytes counts row_bytes per cached row.
CREATE OR REPLACE VIEW dbdl.cache_stats AS
SELECT e.name,
       e.version,
       e.output,
       e.hits,
       e.misses,
       CASE WHEN e.hits + e.misses > 0 THEN e.hits / (e.hits + e.misses) END AS hit_rate,
       e."rows",
       e."rows" * e.row_bytes AS bytes,
       coalesce(TRY_CAST(json_extract_string(m.options, '$.cache_max_bytes') AS BIGINT), 536870912) AS max_bytes,
       e.evicted,
       e.created_at,
       e.used_at
FROM dbdl.cache_entries e
LEFT JOIN dbdl.models m ON m.name = e.name;
