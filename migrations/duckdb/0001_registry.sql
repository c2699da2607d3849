-- dbdl 0001: the model registry.
-- Applied once by `dbdl migrate` (or by dbdl.connect() on a new database) and recorded in
-- dbdl.schema_migrations. Never edit a released migration: add a new numbered file instead.

CREATE SCHEMA IF NOT EXISTS dbdl;

-- ONNX bytes, stored once per distinct content.
CREATE TABLE IF NOT EXISTS dbdl.blobs (
    sha256      VARCHAR PRIMARY KEY,
    bytes       BLOB    NOT NULL,
    size_bytes  BIGINT  NOT NULL
);

-- One row per model name: which version serves, and the next version number (numbers are
-- never reused while the model exists, so 'fraud@3' always means the same bytes).
CREATE TABLE IF NOT EXISTS dbdl.models (
    name             VARCHAR   PRIMARY KEY,
    serving_version  INTEGER,
    next_version     INTEGER   NOT NULL DEFAULT 1,
    options          VARCHAR   NOT NULL DEFAULT '{}',
    created_at       TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS dbdl.model_versions (
    name           VARCHAR   NOT NULL,
    version        INTEGER   NOT NULL,
    sha256         VARCHAR   NOT NULL,
    source         VARCHAR   NOT NULL,           -- 'torch' or 'onnx'
    signature      VARCHAR   NOT NULL,           -- JSON: inputs and outputs with dtypes and per-row shapes
    n_features     INTEGER   NOT NULL,
    n_params       BIGINT    NOT NULL,
    flops_per_row  BIGINT    NOT NULL,
    opset          INTEGER,
    torch_program  BLOB,                         -- torch.export program when registered from torch
    description    VARCHAR,
    created_at     TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (name, version)
);

-- Every promotion in order; rollback() steps back through it.
CREATE TABLE IF NOT EXISTS dbdl.alias_history (
    name         VARCHAR   NOT NULL,
    seq          INTEGER   NOT NULL,
    version      INTEGER   NOT NULL,
    promoted_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (name, seq)
);

-- What SQL users read to see the registry.
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
       m.options
FROM dbdl.model_versions v
JOIN dbdl.models m ON m.name = v.name
JOIN dbdl.blobs b ON b.sha256 = v.sha256;
