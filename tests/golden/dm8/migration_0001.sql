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
CREATE OR REPLACE VIEW dbdl.model_catalog AS SELECT v.name, v.version, CAST(CASE WHEN v.version = m.serving_version THEN 1 ELSE 0 END AS BIT) AS serving, v.source, v.n_features, v.n_params, v.flops_per_row, b.size_bytes, v.sha256, v.description, v.created_at, v.signature, v.opset, m.options, v.original_sha256, v.rewrites FROM dbdl.model_versions v JOIN dbdl.models m ON m.name = v.name JOIN dbdl.blobs b ON b.sha256 = v.sha256;
