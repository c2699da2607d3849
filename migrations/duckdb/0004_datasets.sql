-- dbdl 0004: training datasets made by train_export (one row per dataset: its current version).
-- The rows live in dbdl.ds_<name>_v<version>; the view dbdl.ds_<name> points at the current one.
CREATE TABLE IF NOT EXISTS dbdl.datasets (
    name                 VARCHAR   PRIMARY KEY,
    version              INTEGER   NOT NULL,
    table_name           VARCHAR   NOT NULL,
    shape                VARCHAR   NOT NULL,   -- JSON list: the per-row tensor shape
    dtype                VARCHAR   NOT NULL,   -- the features' numpy dtype (stored little-endian)
    label_dtype          VARCHAR   NOT NULL,
    n_rows               BIGINT    NOT NULL,
    n_train              BIGINT    NOT NULL,
    n_validation         BIGINT    NOT NULL,
    n_test               BIGINT    NOT NULL,
    train_fraction       DOUBLE    NOT NULL,
    validation_fraction  DOUBLE    NOT NULL,
    seed                 BIGINT    NOT NULL,
    features             VARCHAR   NOT NULL,   -- JSON list of the source columns
    label_column         VARCHAR   NOT NULL,
    source_query         VARCHAR   NOT NULL,
    uid                  VARCHAR   NOT NULL,   -- unique per export: keys local caches
    created_at           TIMESTAMP NOT NULL DEFAULT current_timestamp
);
