-- dbdl 0003 (DM8): training datasets made by train_export (one row per dataset: its current
-- version). The rows live in dbdl_data.ds_<name>_v<version>; the view dbdl_data.ds_<name> points
-- at the current one. block_rows: 0 for one row per sample, R > 0 for blocks of R samples
-- (dbdl_udf.datasets.DatasetInfo). Re-runnable, like every DM8 migration (0001_registry.sql).
DECLARE
    already_exists EXCEPTION;
    PRAGMA EXCEPTION_INIT(already_exists, -2124);
BEGIN
    EXECUTE IMMEDIATE 'CREATE TABLE dbdl.datasets (
        name                 VARCHAR(128)  NOT NULL,
        version              BIGINT        NOT NULL,
        table_name           VARCHAR(256)  NOT NULL,
        shape                VARCHAR(1024) NOT NULL,
        dtype                VARCHAR(32)   NOT NULL,
        label_dtype          VARCHAR(32)   NOT NULL,
        n_rows               BIGINT        NOT NULL,
        n_train              BIGINT        NOT NULL,
        n_validation         BIGINT        NOT NULL,
        n_test               BIGINT        NOT NULL,
        train_fraction       DOUBLE        NOT NULL,
        validation_fraction  DOUBLE        NOT NULL,
        seed                 BIGINT        NOT NULL,
        features             CLOB          NOT NULL,
        label_column         VARCHAR(128)  NOT NULL,
        source_query         CLOB          NOT NULL,
        "UID"                VARCHAR(64)   NOT NULL,
        created_at           TIMESTAMP     DEFAULT SYSDATE NOT NULL,
        block_rows           BIGINT        DEFAULT 0 NOT NULL,
        PRIMARY KEY (name)
    )';
EXCEPTION
    WHEN already_exists THEN
        NULL;
END;
/
