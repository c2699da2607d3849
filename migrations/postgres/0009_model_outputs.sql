-- dbdl 0009 (PostgreSQL): what registration rewrote in a model, and text outputs
-- (docs/reference.md#what-registration-rewrites, docs/postgres.md#text-outputs).
--
-- original_sha256: the bytes as given, kept in dbdl.blobs beside the rewritten bytes that run
-- (NULL when nothing was rewritten); rewrites: JSON list of {"kind", "note"}. Both are computed by
-- dbdl.register_model from the bytes it is given (dbdl_udf.adapt), never taken from the caller.

ALTER TABLE dbdl.model_versions ADD COLUMN IF NOT EXISTS original_sha256 text REFERENCES dbdl.blobs (sha256);
ALTER TABLE dbdl.model_versions ADD COLUMN IF NOT EXISTS rewrites text;

CREATE OR REPLACE VIEW dbdl.model_catalog AS
SELECT v.name,
       v.version,
       v.version = m.serving_version AS serving,
       v.source,
       v.n_features,
       v.n_params,
       v.flops_per_row,
       b.size_bytes,
       v.sha256,
       v.description,
       v.created_at,
       v.signature,
       v.opset,
       m.options,
       v.original_sha256,
       v.rewrites
FROM dbdl.model_versions v
JOIN dbdl.models m ON m.name = v.name
JOIN dbdl.blobs b ON b.sha256 = v.sha256;

-- predict_text: predict() for an output that holds text (a scikit-learn classifier's class names).
-- The planner rewrites a pinned predict('clf', x) on such an output to it; SQL written by hand calls
-- it directly. Same overloads and the same definer body rules as predict (0007).
CREATE OR REPLACE FUNCTION dbdl.predict_label(model text, data bytea, packed boolean) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
return GD["dbdl"].predict(plpy, model, data, packed, "text")
$$;

DO $$
DECLARE
    t text;
BEGIN
    EXECUTE 'CREATE OR REPLACE FUNCTION dbdl.predict_text(model pg_catalog.text, features pg_catalog.bytea) '
            'RETURNS pg_catalog.text LANGUAGE sql STABLE PARALLEL UNSAFE RETURN dbdl.predict_label(model, features, false)';
    FOREACH t IN ARRAY ARRAY['pg_catalog.float4[]', 'pg_catalog.float8[]', 'pg_catalog.int4[]', 'pg_catalog.int8[]',
                             'pg_catalog.int2[]', 'pg_catalog.numeric[]'] LOOP
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE FUNCTION dbdl.predict_text(model pg_catalog.text, features %s) RETURNS pg_catalog.text '
            'LANGUAGE sql STABLE PARALLEL UNSAFE RETURN dbdl.predict_label(model, pg_catalog.array_send(features), true)',
            t);
    END LOOP;
    EXECUTE 'CREATE OR REPLACE FUNCTION dbdl.predict_text(model pg_catalog.text, features anyarray) '
            'RETURNS pg_catalog.text LANGUAGE sql STABLE PARALLEL UNSAFE AS '
            '$body$ SELECT dbdl.predict_label(model, pg_catalog.array_send(features), true) $body$';
END
$$;

REVOKE ALL ON FUNCTION dbdl.predict_label(text, bytea, boolean) FROM PUBLIC;
-- the SQL wrappers run as the caller and call the definer function, as predict does predict_scalar
GRANT EXECUTE ON FUNCTION dbdl.predict_label(text, bytea, boolean) TO dbdl_user;
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['pg_catalog.bytea', 'pg_catalog.float4[]', 'pg_catalog.float8[]', 'pg_catalog.int4[]',
                             'pg_catalog.int8[]', 'pg_catalog.int2[]', 'pg_catalog.numeric[]', 'anyarray'] LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION dbdl.predict_text(pg_catalog.text, %1$s) FROM PUBLIC', t);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION dbdl.predict_text(pg_catalog.text, %1$s) TO dbdl_user', t);
    END LOOP;
END
$$;
