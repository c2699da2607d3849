-- dbdl 0007 (PostgreSQL): privilege boundaries (docs/security.md).
--
-- Every caller is hostile: it controls its search_path and pg_temp, and may own schemas other
-- roles search. So (1) the user-facing functions move from public into schema dbdl, where only the
-- owner creates objects, with exact overloads for the common feature types so that no function of
-- an identical signature elsewhere can win; (2) every name in a body is schema-qualified
-- (pg_catalog.…, dbdl.…), since SQL bodies that are inlined, and every invoker body, resolve names
-- through the caller's path; (3) dbdl_admin loses CREATE on dbdl, which is on every definer's path,
-- and gets schema dbdl_data for the tables it makes; (4) dbdl_admin writes the registry only through
-- definer functions that check what they store.

-- (3) only the owner creates objects in dbdl; dbdl_admin's tables go to dbdl_data, which no
-- definer function searches
REVOKE CREATE ON SCHEMA dbdl FROM dbdl_admin;
REVOKE CREATE ON SCHEMA dbdl FROM PUBLIC;
CREATE SCHEMA IF NOT EXISTS dbdl_data;
REVOKE ALL ON SCHEMA dbdl_data FROM PUBLIC;
GRANT USAGE ON SCHEMA dbdl_data TO dbdl_user;
GRANT USAGE, CREATE ON SCHEMA dbdl_data TO dbdl_admin;

DO $$
DECLARE
    r record;
BEGIN
    -- views first: a dataset's view must move before the table it reads, or both keep working anyway
    -- (views reference tables by oid); tables of relation-centric weights and dataset versions
    FOR r IN SELECT c.relname, c.relkind FROM pg_catalog.pg_class c
             WHERE c.relnamespace OPERATOR(pg_catalog.=) 'dbdl'::pg_catalog.regnamespace
               AND c.relkind OPERATOR(pg_catalog.=) ANY (ARRAY['r', 'v']::pg_catalog."char"[])
               AND (c.relname OPERATOR(pg_catalog.~) '^rel_[0-9a-f]{16}_'
                    OR c.relname OPERATOR(pg_catalog.~) '^ds_[a-z0-9_]+$')
             ORDER BY c.relkind DESC LOOP
        EXECUTE pg_catalog.format('ALTER %s dbdl.%I SET SCHEMA dbdl_data',
                                  CASE WHEN r.relkind OPERATOR(pg_catalog.=) 'v' THEN 'VIEW' ELSE 'TABLE' END,
                                  r.relname);
    END LOOP;
END
$$;
UPDATE dbdl.datasets SET table_name = pg_catalog.regexp_replace(table_name, '^dbdl\.', 'dbdl_data.');

-- (1) the user-facing functions, in dbdl. predict_scalar/vector/argmax are the definer functions
-- they call. Exact overloads: PostgreSQL prefers an exact-type match in any schema of the path to
-- a polymorphic one, and among identical signatures the earliest schema; with these, a
-- public.predict(text, real[]) of someone else's can neither shadow nor break dbdl.predict.
DO $$
DECLARE
    f record;
    t text;
BEGIN
    FOR f IN SELECT * FROM (VALUES ('predict', 'pg_catalog.float4', 'predict_scalar'),
                                   ('predict_array', 'pg_catalog.float4[]', 'predict_vector'),
                                   ('predict_class', 'pg_catalog.int8', 'predict_argmax')) AS v(name, returns, impl) LOOP
        -- bytea: little-endian float32 as it is
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE FUNCTION dbdl.%I(model pg_catalog.text, features pg_catalog.bytea) RETURNS %s '
            'LANGUAGE sql STABLE PARALLEL UNSAFE RETURN dbdl.%I(model, features, false)', f.name, f.returns, f.impl);
        -- standard-SQL bodies (RETURN …) are resolved once, here, and still inlined
        FOREACH t IN ARRAY ARRAY['pg_catalog.float4[]', 'pg_catalog.float8[]', 'pg_catalog.int4[]', 'pg_catalog.int8[]',
                                 'pg_catalog.int2[]', 'pg_catalog.numeric[]'] LOOP
            EXECUTE pg_catalog.format(
                'CREATE OR REPLACE FUNCTION dbdl.%I(model pg_catalog.text, features %s) RETURNS %s '
                'LANGUAGE sql STABLE PARALLEL UNSAFE RETURN dbdl.%I(model, pg_catalog.array_send(features), true)',
                f.name, t, f.returns, f.impl);
        END LOOP;
        -- any other array type: a polymorphic body must be text, parsed where it is inlined, so
        -- every name in it is qualified
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE FUNCTION dbdl.%I(model pg_catalog.text, features anyarray) RETURNS %s '
            'LANGUAGE sql STABLE PARALLEL UNSAFE AS '
            '$body$ SELECT dbdl.%I(model, pg_catalog.array_send(features), true) $body$', f.name, f.returns, f.impl);
    END LOOP;
END
$$;

-- The batched path and the training export. SECURITY INVOKER: they run the caller's own query
-- with the caller's rights; what dbdl adds to it is qualified (dbdl_udf.postgres).
CREATE OR REPLACE PROCEDURE dbdl.predict_into(model pg_catalog.text, query pg_catalog.text, target pg_catalog.text,
                                              kind pg_catalog.text DEFAULT 'array',
                                              batch_rows pg_catalog.int4 DEFAULT 8192)
LANGUAGE plpython3u AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
GD["dbdl"].predict_into(plpy, model, query, target, kind, batch_rows)
$$;

CREATE OR REPLACE PROCEDURE dbdl.train_export(
    source_query pg_catalog.text, dataset_name pg_catalog.text, label_column pg_catalog.text DEFAULT 'label',
    features pg_catalog.text[] DEFAULT NULL, shape pg_catalog.int4[] DEFAULT NULL,
    dtype pg_catalog.text DEFAULT 'float32', train_fraction pg_catalog.float8 DEFAULT 0.8,
    validation_fraction pg_catalog.float8 DEFAULT 0.1, seed pg_catalog.int8 DEFAULT 0)
LANGUAGE plpython3u AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
GD["dbdl"].train_export(plpy, source_query, dataset_name, label_column, features, shape, dtype, train_fraction,
                        validation_fraction, seed)
$$;

DROP FUNCTION IF EXISTS public.predict(text, anyarray), public.predict(text, bytea),
    public.predict_array(text, anyarray), public.predict_array(text, bytea),
    public.predict_class(text, anyarray), public.predict_class(text, bytea);
DROP PROCEDURE IF EXISTS public.predict_into(text, text, text, text, integer);
DROP PROCEDURE IF EXISTS public.train_export(text, text, text, text[], integer[], text, double precision,
    double precision, bigint);

-- (2) bodies of earlier migrations that resolved names through the caller's path. dbdl.fail is
-- invoker code with nothing to look up; its path is pinned so that nothing ever is.
ALTER FUNCTION dbdl.fail(text, anyelement) SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION dbdl.cache_key(features anyarray) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT pg_catalog.sha256(pg_catalog.array_send(features::pg_catalog.float4[])) $$;
CREATE OR REPLACE FUNCTION dbdl.cache_key(features bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN pg_catalog.sha256(features);

-- plpgsql parses its expressions where it first runs, through the caller's path: every function
-- and operator is qualified (a SET search_path would cost a GUC change on every row)
CREATE OR REPLACE FUNCTION dbdl.argmax(v real[]) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    best pg_catalog.int4 := pg_catalog.array_lower(v, 1);
BEGIN
    IF best IS NULL THEN
        RETURN NULL;
    END IF;
    FOR i IN (best OPERATOR(pg_catalog.+) 1) .. pg_catalog.array_upper(v, 1) LOOP
        IF v[i] OPERATOR(pg_catalog.>) v[best] THEN
            best := i;
        END IF;
    END LOOP;
    RETURN best OPERATOR(pg_catalog.-) pg_catalog.array_lower(v, 1);
END
$$;

-- (4) the registry is written only by dbdl's definer functions, which compute what they store
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON dbdl.models, dbdl.model_versions, dbdl.blobs, dbdl.alias_history,
    dbdl.datasets, dbdl.calibration FROM dbdl_admin;

-- What the Python client registers: the server recomputes sha256, signature, parameters and
-- FLOPs from the bytes; source says where the bytes came from ('onnx' or 'torch'), torch_program
-- is the TorchScript program db.models.load() returns beside the session.
CREATE OR REPLACE FUNCTION dbdl.register_model(name text, onnx bytea, description text, promote boolean,
                                               source text, torch_program bytea) RETURNS integer
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
return GD["dbdl"].register_model(plpy, name, onnx, description, promote, source, torch_program)
$$;

-- dbdl calibrate's constants
CREATE OR REPLACE FUNCTION dbdl.set_calibration(key text, value double precision) RETURNS void
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
GD["dbdl"].set_calibration(plpy, key, value)
$$;

-- The dataset catalog, for train_export (which runs as the caller) and db.datasets.drop
CREATE OR REPLACE FUNCTION dbdl.dataset_info(name text) RETURNS SETOF dbdl.datasets
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
    SELECT * FROM dbdl.datasets d WHERE d.name = dataset_info.name
$$;

CREATE OR REPLACE FUNCTION dbdl.record_dataset(row_json text) RETURNS void
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
GD["dbdl"].record_dataset(plpy, row_json)
$$;

CREATE OR REPLACE FUNCTION dbdl.forget_dataset(name text) RETURNS void
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
GD["dbdl"].forget_dataset(plpy, name)
$$;

-- Who may call what. New functions start executable by PUBLIC: take that back from all of dbdl's.
REVOKE ALL ON ALL ROUTINES IN SCHEMA dbdl FROM PUBLIC;
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['pg_catalog.bytea', 'pg_catalog.float4[]', 'pg_catalog.float8[]', 'pg_catalog.int4[]',
                             'pg_catalog.int8[]', 'pg_catalog.int2[]', 'pg_catalog.numeric[]', 'anyarray'] LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION dbdl.predict(pg_catalog.text, %1$s), '
                                  'dbdl.predict_array(pg_catalog.text, %1$s), dbdl.predict_class(pg_catalog.text, %1$s) '
                                  'TO dbdl_user', t);
    END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION dbdl.dataset_info(text) TO dbdl_user;
GRANT EXECUTE ON PROCEDURE dbdl.predict_into(text, text, text, text, integer) TO dbdl_user;
GRANT EXECUTE ON FUNCTION dbdl.register_model(text, bytea, text, boolean, text, bytea),
    dbdl.set_calibration(text, double precision), dbdl.record_dataset(text), dbdl.forget_dataset(text) TO dbdl_admin;
GRANT EXECUTE ON PROCEDURE dbdl.train_export(text, text, text, text[], integer[], text, double precision,
    double precision, bigint) TO dbdl_admin;
-- the grants of 0002-0006 on the other functions stand (a REVOKE … FROM PUBLIC leaves them)
