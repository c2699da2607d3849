-- dbdl 0001 (DM8): schemas dbdl and dbdl_data, the model registry and the catalog view.
-- Applied by `dbdl migrate dm://...` and recorded in dbdl.schema_migrations once it finished.
-- Never edit a released migration: add a new numbered file instead.
--
-- The file convention (dbdl.backends.dm8.dialect.split_script): a statement ends with `;` at the
-- end of a line; a PL/SQL block (BEGIN/DECLARE ... END;) ends with a line holding only `/`, as in
-- DM's disql. Blocks are sent to the server as written; the other statements go through the DM8
-- dialect's render() like everything else dbdl sends.
--
-- RE-RUNNABLE, NOT ALL-OR-NOTHING. DM8 commits every DDL statement on its own (DDL_AUTO_COMMIT=1,
-- the default), so a migration that fails half way cannot be rolled back: what ran before the
-- failure stays. Every migration of migrations/dm8 is therefore written so that running it again
-- completes it: each CREATE of an object that has a name (schema, table, role) runs in a PL/SQL
-- block that ignores exactly one error, "the object already exists" (an exception bound to its
-- code with PRAGMA EXCEPTION_INIT; never WHEN OTHERS), views and functions are CREATE OR REPLACE,
-- and GRANTs may be repeated. dbdl records a migration only after its last statement ran, so the
-- next `dbdl migrate` runs an interrupted one again from the top.
--
-- What these files rely on (DM8 SQL and DMSQL as documented by Dameng and its users; none of it
-- has run against a live DM8 server, see docs/dm8.md):
--   * CREATE SCHEMA <name> AUTHORIZATION <user>: a schema belongs to a user; USER is the user
--     running the migration (the owner of dbdl's objects). Unquoted names fold to upper case.
--   * types: BIGINT (64-bit; DM8's INT is 32-bit), VARCHAR(n) (n in bytes under DM8's default
--     LENGTH_IN_CHAR=0; every key stored here is ASCII: names, sha256 hex, dtypes), CLOB for JSON
--     and text of any length (never a key), BLOB for model bytes and torch programs, DOUBLE,
--     TIMESTAMP DEFAULT SYSDATE.
--   * PRIMARY KEY and FOREIGN KEY ... REFERENCES as in Oracle; DM8's tables are index-organized on
--     their primary key by default.
--   * EXECUTE IMMEDIATE '<DDL>' inside BEGIN ... END, DECLARE e EXCEPTION; PRAGMA EXCEPTION_INIT,
--     and a user exception handler, as in Oracle's PL/SQL.
-- What could not be confirmed without a server (listed in docs/dm8.md, "Limits"):
--   * the error code of "object already exists": -2124 is the code other DM8 tooling treats as
--     such; if a server reports another one, a second run fails loudly on the first CREATE
--     (nothing is ignored that should not be) and the code here must be corrected in a new file;
--   * whether KEY, VALUE, LABEL, SEED or OUTPUT are reserved in a given DM8 build (the catalog's
--     SQL, shared with the other backends, names them unquoted; V$RESERVED_WORDS says);
--   * that a repeated GRANT of a privilege already held is accepted without an error;
--   * that CREATE SCHEMA runs through EXECUTE IMMEDIATE (Dameng documents it as a statement of its
--     own), that a CLOB column takes DEFAULT '{}', and CAST(... AS BIT) in a view's select list.

-- dbdl: the registry, owned by the user running the migration (migrate has created it already
-- when it made dbdl.schema_migrations; said here so that the file stands on its own).
DECLARE
    already_exists EXCEPTION;
    PRAGMA EXCEPTION_INIT(already_exists, -2124);
BEGIN
    EXECUTE IMMEDIATE 'CREATE SCHEMA dbdl AUTHORIZATION ' || USER;
EXCEPTION
    WHEN already_exists THEN
        NULL;
END;
/

-- dbdl_data: the tables dbdl makes (relation-centric weights, dataset tables), as on PostgreSQL.
DECLARE
    already_exists EXCEPTION;
    PRAGMA EXCEPTION_INIT(already_exists, -2124);
BEGIN
    EXECUTE IMMEDIATE 'CREATE SCHEMA dbdl_data AUTHORIZATION ' || USER;
EXCEPTION
    WHEN already_exists THEN
        NULL;
END;
/

-- ONNX bytes, stored once per distinct content.
DECLARE
    already_exists EXCEPTION;
    PRAGMA EXCEPTION_INIT(already_exists, -2124);
BEGIN
    EXECUTE IMMEDIATE 'CREATE TABLE dbdl.blobs (
        sha256      VARCHAR(64) NOT NULL,
        bytes       BLOB        NOT NULL,
        size_bytes  BIGINT      NOT NULL,
        PRIMARY KEY (sha256)
    )';
EXCEPTION
    WHEN already_exists THEN
        NULL;
END;
/

-- One row per model name: which version serves, and the next version number (numbers are never
-- reused while the model exists, so 'fraud@3' always means the same bytes).
DECLARE
    already_exists EXCEPTION;
    PRAGMA EXCEPTION_INIT(already_exists, -2124);
BEGIN
    EXECUTE IMMEDIATE 'CREATE TABLE dbdl.models (
        name             VARCHAR(128) NOT NULL,
        serving_version  BIGINT,
        next_version     BIGINT       DEFAULT 1 NOT NULL,
        options          CLOB         DEFAULT ''{}'' NOT NULL,
        created_at       TIMESTAMP    DEFAULT SYSDATE NOT NULL,
        PRIMARY KEY (name)
    )';
EXCEPTION
    WHEN already_exists THEN
        NULL;
END;
/

-- source: 'torch' or 'onnx'; signature: JSON of the inputs and outputs (dtypes, per-row shapes);
-- torch_program: the torch.export program when registered from torch; original_sha256: the bytes
-- as given, kept in dbdl.blobs beside the rewritten ones that run (NULL when nothing was
-- rewritten); rewrites: JSON list of {"kind", "note"}.
DECLARE
    already_exists EXCEPTION;
    PRAGMA EXCEPTION_INIT(already_exists, -2124);
BEGIN
    EXECUTE IMMEDIATE 'CREATE TABLE dbdl.model_versions (
        name             VARCHAR(128) NOT NULL,
        version          BIGINT       NOT NULL,
        sha256           VARCHAR(64)  NOT NULL,
        source           VARCHAR(32)  NOT NULL,
        signature        CLOB         NOT NULL,
        n_features       BIGINT       NOT NULL,
        n_params         BIGINT       NOT NULL,
        flops_per_row    BIGINT       NOT NULL,
        opset            BIGINT,
        torch_program    BLOB,
        description      CLOB,
        created_at       TIMESTAMP    DEFAULT SYSDATE NOT NULL,
        original_sha256  VARCHAR(64),
        rewrites         CLOB,
        PRIMARY KEY (name, version),
        FOREIGN KEY (name) REFERENCES dbdl.models (name),
        FOREIGN KEY (sha256) REFERENCES dbdl.blobs (sha256),
        FOREIGN KEY (original_sha256) REFERENCES dbdl.blobs (sha256)
    )';
EXCEPTION
    WHEN already_exists THEN
        NULL;
END;
/

-- Every promotion in order; rollback() steps back through it.
DECLARE
    already_exists EXCEPTION;
    PRAGMA EXCEPTION_INIT(already_exists, -2124);
BEGIN
    EXECUTE IMMEDIATE 'CREATE TABLE dbdl.alias_history (
        name         VARCHAR(128) NOT NULL,
        seq          BIGINT       NOT NULL,
        version      BIGINT       NOT NULL,
        promoted_at  TIMESTAMP    DEFAULT SYSDATE NOT NULL,
        PRIMARY KEY (name, seq)
    )';
EXCEPTION
    WHEN already_exists THEN
        NULL;
END;
/

-- The result cache is not available on DM8 (docs/dm8.md): these two tables stay empty. They
-- exist because the registry's shared rules (dbdl_udf.catalog.clear_cache, called when a model or
-- a version is dropped and when the cache option is switched off) delete a model's cached rows.
DECLARE
    already_exists EXCEPTION;
    PRAGMA EXCEPTION_INIT(already_exists, -2124);
BEGIN
    EXECUTE IMMEDIATE 'CREATE TABLE dbdl.cache_entries (
        cache_id  BIGINT       NOT NULL,
        name      VARCHAR(128) NOT NULL,
        version   BIGINT       NOT NULL,
        sha256    VARCHAR(64)  NOT NULL,
        output    BIGINT       NOT NULL,
        PRIMARY KEY (cache_id)
    )';
EXCEPTION
    WHEN already_exists THEN
        NULL;
END;
/

DECLARE
    already_exists EXCEPTION;
    PRAGMA EXCEPTION_INIT(already_exists, -2124);
BEGIN
    EXECUTE IMMEDIATE 'CREATE TABLE dbdl.result_cache (
        cache_id  BIGINT      NOT NULL,
        key       VARCHAR(64) NOT NULL,
        output    BLOB        NOT NULL,
        label     BIGINT,
        gen       BIGINT      NOT NULL,
        PRIMARY KEY (cache_id, key)
    )';
EXCEPTION
    WHEN already_exists THEN
        NULL;
END;
/

-- What SQL users read to see the registry. DM8 has no boolean expressions in a select list:
-- serving is 1 or 0 (a BIT).
CREATE OR REPLACE VIEW dbdl.model_catalog AS
SELECT v.name,
       v.version,
       CAST(CASE WHEN v.version = m.serving_version THEN 1 ELSE 0 END AS BIT) AS serving,
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
