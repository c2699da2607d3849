-- dbdl 0012 (PostgreSQL): CALL dbdl.predict_into in blocks (docs/postgres.md, "The C helper").
--
-- dbdl.score_block scores one block of float32 features — what the C helper dbdl.predict_rows
-- packs from the caller's rows — and returns the block of predictions it unpacks into rows.
-- SECURITY DEFINER like predict_scalar (it reads the registry and runs no SQL of the caller's), its
-- path pinned; inside a predict_into call it scores with the model that call resolved.
--
-- dbdl.predict_rows and dbdl.native_version are C functions (native/postgres/dbdl_native.c). A C
-- function names a library file on the server, which a migration file cannot know, and only a
-- superuser may create one: the installer creates them after the migrations, when it runs as a
-- superuser and the library loads (python/dbdl/backends/postgres/native.py); otherwise they do not
-- exist and predict_into takes its row-batch path, which gives the same values.
CREATE FUNCTION dbdl.score_block(model pg_catalog.text, kind pg_catalog.text, n_rows pg_catalog.int4,
                                 block pg_catalog.bytea) RETURNS pg_catalog.bytea
LANGUAGE plpython3u VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
return GD["dbdl"].score_block(plpy, model, kind, n_rows, block)
$$;

REVOKE ALL ON FUNCTION dbdl.score_block(pg_catalog.text, pg_catalog.text, pg_catalog.int4, pg_catalog.bytea)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbdl.score_block(pg_catalog.text, pg_catalog.text, pg_catalog.int4, pg_catalog.bytea)
    TO dbdl_user;
