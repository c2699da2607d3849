-- dbdl 0011 (PostgreSQL): train_export takes variable-length rows (token lists) and uint8 bytes.
-- ragged => true stores int[] / int8[] / real[] rows of different lengths exactly (a bytea of
-- little-endian values per row; the catalog's shape is [-1]); bytea columns are uint8 images;
-- dtype defaults to NULL: chosen from the source column (uint8 stays uint8, token ids keep their
-- integer type, everything else float32). Still SECURITY INVOKER: the caller's query, the
-- caller's rights; the body qualifies everything it adds (docs/security.md).
DROP PROCEDURE IF EXISTS dbdl.train_export(pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.text[],
    pg_catalog.int4[], pg_catalog.text, pg_catalog.float8, pg_catalog.float8, pg_catalog.int8);

CREATE PROCEDURE dbdl.train_export(
    source_query pg_catalog.text, dataset_name pg_catalog.text, label_column pg_catalog.text DEFAULT 'label',
    features pg_catalog.text[] DEFAULT NULL, shape pg_catalog.int4[] DEFAULT NULL,
    dtype pg_catalog.text DEFAULT NULL, train_fraction pg_catalog.float8 DEFAULT 0.8,
    validation_fraction pg_catalog.float8 DEFAULT 0.1, seed pg_catalog.int8 DEFAULT 0,
    ragged pg_catalog.bool DEFAULT false)
LANGUAGE plpython3u AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
GD["dbdl"].train_export(plpy, source_query, dataset_name, label_column, features, shape, dtype, train_fraction,
                        validation_fraction, seed, ragged)
$$;

REVOKE ALL ON PROCEDURE dbdl.train_export(pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.text[],
    pg_catalog.int4[], pg_catalog.text, pg_catalog.float8, pg_catalog.float8, pg_catalog.int8, pg_catalog.bool)
    FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE dbdl.train_export(pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.text[],
    pg_catalog.int4[], pg_catalog.text, pg_catalog.float8, pg_catalog.float8, pg_catalog.int8, pg_catalog.bool)
    TO dbdl_admin;
