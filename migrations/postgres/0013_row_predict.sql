-- dbdl 0013 (PostgreSQL): row-at-a-time predict without per-row lookups (issue 14).
--
-- dbdl.predict / predict_array / predict_class on a real[] or a bytea (the forms of 0007) now call
-- dbdl.predict_*_row, which keeps the model reference's resolution for as long as the caller's
-- registry view stays the same, instead of querying the registry on every row, and runs the
-- common model through a bound onnxruntime call (dbdl_udf.pgrow). The view is named by a token
-- the wrapper computes in the caller's query: the current snapshot (pg_snapshot_send: xmin, xmax
-- and the transactions in progress) and the transaction's start. Same token, same committed
-- transactions visible, same registry rows: the semantics of 0007 (a STABLE function reads the
-- registry as of its statement's snapshot) are kept exactly. This transaction's own writes to the
-- registry do not change the snapshot, so the registry's triggers drop the process's resolutions
-- and none is cached again in that transaction.
--
-- The _row functions are SECURITY INVOKER without a SET clause (a SET costs a setting change on
-- every row): they read the registry through dbdl.resolve_model and dbdl.model_bytes (definer
-- functions dbdl_user may call), in plans that name every function with its schema. The wrappers'
-- standard-SQL bodies are bound here, once, and still inlined into the caller's query.

-- predict_vector_row returns the output vector as a real[] literal, which its wrapper casts: one
-- format call in Python and array_in cost less than PL/Python's conversion of a list (str() and
-- float4in per element); 9 significant digits give each float32 back exactly
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT * FROM (VALUES ('predict_scalar_row', 'pg_catalog.float4', 'scalar'),
                                   ('predict_vector_row', 'pg_catalog.text', 'array'),
                                   ('predict_argmax_row', 'pg_catalog.int8', 'class')) AS v(name, returns, kind) LOOP
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE FUNCTION dbdl.%I(model pg_catalog.text, data pg_catalog.bytea, packed pg_catalog.bool, '
            'token pg_catalog.bytea) RETURNS %s LANGUAGE plpython3u STABLE PARALLEL UNSAFE AS %L', f.name, f.returns,
            pg_catalog.format(E'\nif "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")\n'
                              'return GD["dbdl"].predict_row(plpy, model, data, packed, token, "%s")\n', f.kind));
    END LOOP;
END
$$;

DO $$
DECLARE
    f record;
    token pg_catalog.text := 'pg_catalog.byteacat(pg_catalog.pg_snapshot_send(pg_catalog.pg_current_snapshot()), '
                             'pg_catalog.timestamptz_send(pg_catalog.transaction_timestamp()))';
BEGIN
    FOR f IN SELECT * FROM (VALUES ('predict', 'pg_catalog.float4', 'predict_scalar_row', '%s'),
                                   ('predict_array', 'pg_catalog.float4[]', 'predict_vector_row',
                                    'CAST(%s AS pg_catalog.float4[])'),
                                   ('predict_class', 'pg_catalog.int8', 'predict_argmax_row', '%s'))
             AS v(name, returns, impl, result) LOOP
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE FUNCTION dbdl.%I(model pg_catalog.text, features pg_catalog.float4[]) RETURNS %s '
            'LANGUAGE sql STABLE PARALLEL UNSAFE RETURN %s', f.name, f.returns,
            pg_catalog.format(f.result, pg_catalog.format('dbdl.%I(model, pg_catalog.array_send(features), true, %s)',
                                                          f.impl, token)));
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE FUNCTION dbdl.%I(model pg_catalog.text, features pg_catalog.bytea) RETURNS %s '
            'LANGUAGE sql STABLE PARALLEL UNSAFE RETURN %s', f.name, f.returns,
            pg_catalog.format(f.result, pg_catalog.format('dbdl.%I(model, features, false, %s)', f.impl, token)));
    END LOOP;
END
$$;

-- This process's own registry writes (dbdl's functions, or the owner's SQL): forget the resolutions
CREATE OR REPLACE FUNCTION dbdl.registry_changed() RETURNS trigger
LANGUAGE plpython3u SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" in GD:
    GD["dbdl"].registry_changed(plpy)
return None
$$;

DROP TRIGGER IF EXISTS row_resolutions ON dbdl.models;
CREATE TRIGGER row_resolutions AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dbdl.models
    FOR EACH STATEMENT EXECUTE FUNCTION dbdl.registry_changed();
DROP TRIGGER IF EXISTS row_resolutions ON dbdl.model_versions;
CREATE TRIGGER row_resolutions AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dbdl.model_versions
    FOR EACH STATEMENT EXECUTE FUNCTION dbdl.registry_changed();

-- Who may call what: new functions start executable by PUBLIC
REVOKE ALL ON FUNCTION dbdl.predict_scalar_row(text, bytea, boolean, bytea),
    dbdl.predict_vector_row(text, bytea, boolean, bytea), dbdl.predict_argmax_row(text, bytea, boolean, bytea),
    dbdl.registry_changed() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbdl.predict_scalar_row(text, bytea, boolean, bytea),
    dbdl.predict_vector_row(text, bytea, boolean, bytea), dbdl.predict_argmax_row(text, bytea, boolean, bytea)
    TO dbdl_user;
-- the wrappers were replaced in place and keep 0007's grants; said again, so that they hold whatever came before
REVOKE ALL ON FUNCTION dbdl.predict(text, real[]), dbdl.predict(text, bytea), dbdl.predict_array(text, real[]),
    dbdl.predict_array(text, bytea), dbdl.predict_class(text, real[]), dbdl.predict_class(text, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbdl.predict(text, real[]), dbdl.predict(text, bytea), dbdl.predict_array(text, real[]),
    dbdl.predict_array(text, bytea), dbdl.predict_class(text, real[]), dbdl.predict_class(text, bytea) TO dbdl_user;
