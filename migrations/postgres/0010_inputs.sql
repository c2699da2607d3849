-- dbdl 0010 (PostgreSQL): every input a table holds (issue 11, "Input types").
--
-- The single-column functions of 0007 stay as they are: their bytes (array_send() of any array,
-- or a bytea) are now decoded in the array's own element type, so bigint[] token ids reach an int64
-- input exactly, double precision[] a float64 input, boolean[] a bool input, multi-dimensional
-- arrays keep their dimensions, and a bytea holds 4 bytes per value (little-endian float32, as
-- before) or 1 byte per value (uint8 pixels). What is new here:
--   (1) exact boolean[] overloads beside the other common array types (predict_text, 0009, too);
--   (2) several columns in one call, one per model input, in the model's input order:
--       dbdl.predict('m', ROW(a, b, …)) for any number and mix of types, and the shorthands
--       dbdl.predict('m', a, b) (any two types) and dbdl.predict('m', a, b, c[, d]) (one type);
--       all of them hand record_send() bytes to the definer functions predict_*_fields;
--   (3) result-cache keys in each array's own element type (a key through real[] would give two
--       token lists that differ above 2^24 one key). The cache keys one argument (db.sql runs a
--       call of several arguments uncached), so there is no key for a ROW: a record's bytes could
--       have the length of a bytea input and so two meanings.
-- Every name in a body is schema-qualified: SQL bodies are inlined, and plpgsql parses its
-- expressions, in the caller's query, through the caller's search_path (docs/security.md).

-- (1) boolean[]: until now only the anyarray overload took it
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT * FROM (VALUES ('predict', 'pg_catalog.float4', 'predict_scalar'),
                                   ('predict_array', 'pg_catalog.float4[]', 'predict_vector'),
                                   ('predict_class', 'pg_catalog.int8', 'predict_argmax'),
                                   ('predict_text', 'pg_catalog.text', 'predict_label')) AS v(name, returns, impl) LOOP
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE FUNCTION dbdl.%I(model pg_catalog.text, features pg_catalog.bool[]) RETURNS %s '
            'LANGUAGE sql STABLE PARALLEL UNSAFE RETURN dbdl.%I(model, pg_catalog.array_send(features), true)',
            f.name, f.returns, f.impl);
    END LOOP;
END
$$;

-- (2) the definer functions behind every form of several columns: ``fields`` is record_send() of
-- the row of inputs (per field: its type oid and its binary form)
CREATE OR REPLACE FUNCTION dbdl.predict_scalar_fields(model text, fields bytea) RETURNS real
LANGUAGE plpython3u STABLE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
return GD["dbdl"].predict_fields(plpy, model, fields, "scalar")
$$;

CREATE OR REPLACE FUNCTION dbdl.predict_vector_fields(model text, fields bytea) RETURNS real[]
LANGUAGE plpython3u STABLE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
return GD["dbdl"].predict_fields(plpy, model, fields, "array")
$$;

CREATE OR REPLACE FUNCTION dbdl.predict_argmax_fields(model text, fields bytea) RETURNS bigint
LANGUAGE plpython3u STABLE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
return GD["dbdl"].predict_fields(plpy, model, fields, "class")
$$;

CREATE OR REPLACE FUNCTION dbdl.predict_label_fields(model text, fields bytea) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
return GD["dbdl"].predict_fields(plpy, model, fields, "text")
$$;

DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT * FROM (VALUES ('predict', 'pg_catalog.float4', 'predict_scalar_fields'),
                                   ('predict_array', 'pg_catalog.float4[]', 'predict_vector_fields'),
                                   ('predict_class', 'pg_catalog.int8', 'predict_argmax_fields'),
                                   ('predict_text', 'pg_catalog.text', 'predict_label_fields')) AS v(name, returns, impl) LOOP
        -- ROW(a, b, …), or a table's row: SQL functions cannot take a record, plpgsql can (not
        -- inlined; its one expression is fully qualified, so the caller's path finds nothing in it)
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE FUNCTION dbdl.%I(model pg_catalog.text, features record) RETURNS %s '
            'LANGUAGE plpgsql STABLE PARALLEL UNSAFE AS '
            '$body$ BEGIN RETURN dbdl.%I(model, pg_catalog.record_send(features)); END $body$',
            f.name, f.returns, f.impl);
        -- two columns of any two types: anyelement and anycompatible are independent families
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE FUNCTION dbdl.%I(model pg_catalog.text, a anyelement, b anycompatible) RETURNS %s '
            'LANGUAGE sql STABLE PARALLEL UNSAFE AS '
            '$body$ SELECT dbdl.%I(model, pg_catalog.record_send(ROW(a, b))) $body$', f.name, f.returns, f.impl);
        -- three or four columns of one type (anyelement never coerces: mixed types are refused
        -- rather than silently converted; ROW(…) takes any mix)
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE FUNCTION dbdl.%I(model pg_catalog.text, a anyelement, b anyelement, c anyelement) '
            'RETURNS %s LANGUAGE sql STABLE PARALLEL UNSAFE AS '
            '$body$ SELECT dbdl.%I(model, pg_catalog.record_send(ROW(a, b, c))) $body$', f.name, f.returns, f.impl);
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE FUNCTION dbdl.%I(model pg_catalog.text, a anyelement, b anyelement, c anyelement, '
            'd anyelement) RETURNS %s LANGUAGE sql STABLE PARALLEL UNSAFE AS '
            '$body$ SELECT dbdl.%I(model, pg_catalog.record_send(ROW(a, b, c, d))) $body$', f.name, f.returns, f.impl);
    END LOOP;
END
$$;

-- (3) the result cache: the bytes dbdl.cache_fill is handed, and their digest, in each array's own
-- element type (real[] and bytea keep 0007/0008's forms, so their cached rows stay valid)
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['pg_catalog.float8[]', 'pg_catalog.int4[]', 'pg_catalog.int8[]', 'pg_catalog.int2[]',
                             'pg_catalog.bool[]'] LOOP
        EXECUTE pg_catalog.format('CREATE OR REPLACE FUNCTION dbdl.cache_input(features %s) RETURNS pg_catalog.bytea '
                                  'LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN pg_catalog.array_send(features)', t);
        EXECUTE pg_catalog.format('CREATE OR REPLACE FUNCTION dbdl.cache_key(features %s) RETURNS pg_catalog.bytea '
                                  'LANGUAGE sql IMMUTABLE PARALLEL SAFE '
                                  'RETURN pg_catalog.sha256(pg_catalog.array_send(features))', t);
    END LOOP;
END
$$;
-- real[] and numeric[] keep 0007/0008's keys, now as exact overloads: beside the new ones the
-- polymorphic anyarray and an implicit cast to double precision[] would tie
CREATE OR REPLACE FUNCTION dbdl.cache_input(features pg_catalog.float4[]) RETURNS pg_catalog.bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN pg_catalog.array_send(features);
CREATE OR REPLACE FUNCTION dbdl.cache_key(features pg_catalog.float4[]) RETURNS pg_catalog.bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN pg_catalog.sha256(pg_catalog.array_send(features));
CREATE OR REPLACE FUNCTION dbdl.cache_input(features pg_catalog.numeric[]) RETURNS pg_catalog.bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN pg_catalog.array_send(features::pg_catalog.float4[]);
CREATE OR REPLACE FUNCTION dbdl.cache_key(features pg_catalog.numeric[]) RETURNS pg_catalog.bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN pg_catalog.sha256(pg_catalog.array_send(features::pg_catalog.float4[]));

-- Who may call what: new functions start executable by PUBLIC
DO $$
DECLARE
    f text;
    sig text;
BEGIN
    FOREACH f IN ARRAY ARRAY['predict', 'predict_array', 'predict_class', 'predict_text'] LOOP
        FOREACH sig IN ARRAY ARRAY['pg_catalog.text, pg_catalog.bool[]', 'pg_catalog.text, record',
                                   'pg_catalog.text, anyelement, anycompatible',
                                   'pg_catalog.text, anyelement, anyelement, anyelement',
                                   'pg_catalog.text, anyelement, anyelement, anyelement, anyelement'] LOOP
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION dbdl.%I(%s) FROM PUBLIC', f, sig);
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION dbdl.%I(%s) TO dbdl_user', f, sig);
        END LOOP;
    END LOOP;
    FOREACH sig IN ARRAY ARRAY['pg_catalog.float4[]', 'pg_catalog.numeric[]', 'pg_catalog.float8[]', 'pg_catalog.int4[]',
                               'pg_catalog.int8[]', 'pg_catalog.int2[]', 'pg_catalog.bool[]'] LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION dbdl.cache_input(%1$s), dbdl.cache_key(%1$s) FROM PUBLIC', sig);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION dbdl.cache_input(%1$s), dbdl.cache_key(%1$s) TO dbdl_user',
                                  sig);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION dbdl.predict_scalar_fields(text, bytea), dbdl.predict_vector_fields(text, bytea),
    dbdl.predict_argmax_fields(text, bytea), dbdl.predict_label_fields(text, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbdl.predict_scalar_fields(text, bytea), dbdl.predict_vector_fields(text, bytea),
    dbdl.predict_argmax_fields(text, bytea), dbdl.predict_label_fields(text, bytea) TO dbdl_user;
