-- dbdl 0008 (PostgreSQL): only dbdl's own code writes the result cache (docs/security.md).
-- Until now every dbdl_user could INSERT/UPDATE/DELETE dbdl.result_cache, so one user could
-- change the predictions another role reads. Now callers only read it; the misses of a query go to
-- dbdl.cache_fill, which keys each input by the SHA-256 of its own bytes, scores it with the
-- server's session and inserts it, counting it in the same transaction; dbdl.cache_record counts
-- hits (and misses scored without filling), refreshes the generation of rows hit and evicts. Entries are made by cache_fill, together
-- with their first rows, so a query that fails leaves no entry.

REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON dbdl.cache_entries, dbdl.result_cache FROM dbdl_user;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON dbdl.cache_entries, dbdl.result_cache FROM dbdl_admin;
GRANT SELECT ON dbdl.cache_entries, dbdl.result_cache TO dbdl_user;
-- dropping models and clearing caches delete cached rows through dbdl's definer functions (0007)

-- What dbdl.cache_fill is handed for one input: the bytes dbdl.cache_key digests.
CREATE OR REPLACE FUNCTION dbdl.cache_input(features anyarray) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT pg_catalog.array_send(features::real[]) $$;
CREATE OR REPLACE FUNCTION dbdl.cache_input(features bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT features $$;

CREATE OR REPLACE FUNCTION dbdl.cache_fill(ref text, inputs bytea[])
RETURNS TABLE (key bytea, output text, label bigint)
LANGUAGE plpython3u VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
return GD["dbdl"].cache_fill(plpy, ref, inputs)
$$;

CREATE OR REPLACE FUNCTION dbdl.cache_record(ref text, hits bigint, misses bigint, refresh bytea[]) RETURNS void
LANGUAGE plpython3u VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
GD["dbdl"].cache_record(plpy, ref, hits, misses, refresh)
$$;

REVOKE ALL ON FUNCTION dbdl.cache_input(anyarray), dbdl.cache_input(bytea), dbdl.cache_fill(text, bytea[]),
    dbdl.cache_record(text, bigint, bigint, bytea[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbdl.cache_input(anyarray), dbdl.cache_input(bytea), dbdl.cache_fill(text, bytea[]),
    dbdl.cache_record(text, bigint, bigint, bytea[]) TO dbdl_user;

-- A bound stored before options were range-checked (cache_max_bytes above 1 PiB, e.g. 10^23) made
-- the view's bigint cast fail for everyone: bring such values into range.
UPDATE dbdl.models
SET options = pg_catalog.jsonb_set(options::pg_catalog.jsonb, '{cache_max_bytes}', '1125899906842624'::pg_catalog.jsonb)::pg_catalog.text
WHERE pg_catalog.jsonb_typeof(options::pg_catalog.jsonb OPERATOR(pg_catalog.->) 'cache_max_bytes') OPERATOR(pg_catalog.=) 'number'
  AND (options::pg_catalog.jsonb OPERATOR(pg_catalog.->>) 'cache_max_bytes')::pg_catalog.numeric
      OPERATOR(pg_catalog.>) 1125899906842624;
