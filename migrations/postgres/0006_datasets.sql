-- dbdl 0006 (PostgreSQL): training datasets and CALL train_export.
-- The rows live in dbdl.ds_<name>_v<version>; the view dbdl.ds_<name> points at the current one.
CREATE TABLE IF NOT EXISTS dbdl.datasets (
    name                 text             PRIMARY KEY,
    version              integer          NOT NULL,
    table_name           text             NOT NULL,
    shape                text             NOT NULL,   -- JSON list: the per-row tensor shape
    dtype                text             NOT NULL,   -- the features' numpy dtype (bytea, little-endian)
    label_dtype          text             NOT NULL,
    n_rows               bigint           NOT NULL,
    n_train              bigint           NOT NULL,
    n_validation         bigint           NOT NULL,
    n_test               bigint           NOT NULL,
    train_fraction       double precision NOT NULL,
    validation_fraction  double precision NOT NULL,
    seed                 bigint           NOT NULL,
    features             text             NOT NULL,   -- JSON list of the source columns
    label_column         text             NOT NULL,
    source_query         text             NOT NULL,
    uid                  text             NOT NULL,   -- unique per export: keys local caches
    created_at           timestamptz      NOT NULL DEFAULT now()
);
REVOKE ALL ON dbdl.datasets FROM PUBLIC;
GRANT SELECT ON dbdl.datasets TO dbdl_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON dbdl.datasets TO dbdl_admin;

-- CALL train_export('SELECT feats, label FROM t', 'name', ...): materialize a dataset table.
-- SECURITY INVOKER (a procedure's default): the source query runs with the caller's rights, and
-- the caller needs dbdl_admin to create dbdl.ds_* tables and write the catalog. Features: one
-- numeric array column or several numeric columns (features => ARRAY['a', 'b'] picks them);
-- shape => ARRAY[1, 8, 8] gives the per-row tensor shape; test gets 1 - train - validation.
CREATE OR REPLACE PROCEDURE public.train_export(
    source_query text, dataset_name text, label_column text DEFAULT 'label', features text[] DEFAULT NULL,
    shape integer[] DEFAULT NULL, dtype text DEFAULT 'float32', train_fraction double precision DEFAULT 0.8,
    validation_fraction double precision DEFAULT 0.1, seed bigint DEFAULT 0)
LANGUAGE plpython3u AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
GD["dbdl"].train_export(plpy, source_query, dataset_name, label_column, features, shape, dtype, train_fraction,
                        validation_fraction, seed)
$$;
REVOKE ALL ON PROCEDURE public.train_export(text, text, text, text[], integer[], text, double precision,
    double precision, bigint) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE public.train_export(text, text, text, text[], integer[], text, double precision,
    double precision, bigint) TO dbdl_admin;
