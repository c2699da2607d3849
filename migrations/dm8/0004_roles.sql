-- dbdl 0004 (DM8): the roles DBDL_USER and DBDL_ADMIN (docs/dm8.md, "Roles and grants"), in the
-- intent of migrations/postgres/0007_security.sql. Grant them to login users:
--   GRANT DBDL_USER TO analyst;   GRANT DBDL_ADMIN TO ml_engineer;
-- Roles are the instance's, not a schema's: created only when missing (CREATE ROLE needs DBA or
-- the CREATE ROLE privilege). Re-runnable, like every DM8 migration (0001_registry.sql).
--
-- What differs from PostgreSQL, by what DM8 offers: dbdl runs no code inside DM8 (no definer
-- functions check what is stored), so DBDL_ADMIN writes the registry tables itself, through the
-- client's rules (dbdl_udf.catalog), and is trusted to; and DM8 grants table creation per user
-- (CREATE TABLE: in the user's own schemas; CREATE ANY TABLE: in every schema), not per schema,
-- so no role is given tables in dbdl_data: the owner (the user that ran `dbdl migrate`) creates
-- them. predict reads the registry's rows and the model bytes in the client, so DBDL_USER reads
-- what PostgreSQL's dbdl_user reads through dbdl.resolve_model and dbdl.model_bytes.
DECLARE
    already_exists EXCEPTION;
    PRAGMA EXCEPTION_INIT(already_exists, -2124);
BEGIN
    EXECUTE IMMEDIATE 'CREATE ROLE DBDL_USER';
EXCEPTION
    WHEN already_exists THEN
        NULL;
END;
/

DECLARE
    already_exists EXCEPTION;
    PRAGMA EXCEPTION_INIT(already_exists, -2124);
BEGIN
    EXECUTE IMMEDIATE 'CREATE ROLE DBDL_ADMIN';
EXCEPTION
    WHEN already_exists THEN
        NULL;
END;
/

GRANT DBDL_USER TO DBDL_ADMIN;

-- Anyone may read which migrations are applied (clients check that on connect).
GRANT SELECT ON dbdl.schema_migrations TO PUBLIC;

-- DBDL_USER: predict and read the catalog (the serving version, the signature, the bytes that
-- relation-centric and DL-centric plans run in the client; dataset rows for the readers).
GRANT SELECT ON dbdl.model_catalog TO DBDL_USER;
GRANT SELECT ON dbdl.models TO DBDL_USER;
GRANT SELECT ON dbdl.model_versions TO DBDL_USER;
GRANT SELECT ON dbdl.blobs TO DBDL_USER;
GRANT SELECT ON dbdl.datasets TO DBDL_USER;
GRANT SELECT ON dbdl.calibration TO DBDL_USER;

-- DBDL_ADMIN: register, promote, roll back and drop models (a drop clears the model's empty
-- result cache rows too), set model options, `dbdl calibrate`, the dataset catalog.
GRANT SELECT, INSERT, UPDATE, DELETE ON dbdl.models TO DBDL_ADMIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON dbdl.model_versions TO DBDL_ADMIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON dbdl.blobs TO DBDL_ADMIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON dbdl.alias_history TO DBDL_ADMIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON dbdl.datasets TO DBDL_ADMIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON dbdl.calibration TO DBDL_ADMIN;
GRANT SELECT, DELETE ON dbdl.cache_entries TO DBDL_ADMIN;
GRANT SELECT, DELETE ON dbdl.result_cache TO DBDL_ADMIN;
