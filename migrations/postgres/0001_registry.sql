-- dbdl 0001 (PostgreSQL): schema, registry tables, settings, roles.
-- Applied by `dbdl migrate postgresql://...` inside one transaction and recorded in
-- dbdl.schema_migrations. Never edit a released migration: add a new numbered file instead.

CREATE SCHEMA IF NOT EXISTS dbdl;

CREATE TABLE IF NOT EXISTS dbdl.blobs (
    sha256      text   PRIMARY KEY,
    bytes       bytea  NOT NULL,
    size_bytes  bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS dbdl.models (
    name             text        PRIMARY KEY,
    serving_version  integer,
    next_version     integer     NOT NULL DEFAULT 1,
    options          text        NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS dbdl.model_versions (
    name           text        NOT NULL REFERENCES dbdl.models (name),
    version        integer     NOT NULL,
    sha256         text        NOT NULL REFERENCES dbdl.blobs (sha256),
    source         text        NOT NULL,
    signature      text        NOT NULL,
    n_features     integer     NOT NULL,
    n_params       bigint      NOT NULL,
    flops_per_row  bigint      NOT NULL,
    opset          integer,
    torch_program  bytea,
    description    text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE IF NOT EXISTS dbdl.alias_history (
    name         text        NOT NULL,
    seq          integer     NOT NULL,
    version      integer     NOT NULL,
    promoted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, seq)
);

-- Where the server's Python finds dbdl_udf, numpy and onnxruntime: set by `dbdl migrate`
-- (--python-path), read by dbdl._bootstrap(). Never a path written into function bodies.
CREATE TABLE IF NOT EXISTS dbdl.settings (
    key    text PRIMARY KEY,
    value  text NOT NULL
);

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

-- Roles (cluster-wide, so created only when missing). Grant them to login roles:
--   GRANT dbdl_user TO analyst;   GRANT dbdl_admin TO ml_engineer;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dbdl_user') THEN
        CREATE ROLE dbdl_user NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dbdl_admin') THEN
        CREATE ROLE dbdl_admin NOLOGIN;
    END IF;
END
$$;
GRANT dbdl_user TO dbdl_admin;

-- Anyone may look into the schema and read which migrations are applied (clients check that on
-- connect); everything else needs dbdl_user or dbdl_admin.
REVOKE ALL ON SCHEMA dbdl FROM PUBLIC;
GRANT USAGE ON SCHEMA dbdl TO PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA dbdl FROM PUBLIC;
GRANT SELECT ON dbdl.schema_migrations TO PUBLIC;
GRANT SELECT ON dbdl.model_catalog TO dbdl_user;
-- dbdl_admin manages the registry: db.models.register/promote/drop and the CLI write these tables
GRANT SELECT, INSERT, UPDATE, DELETE ON dbdl.models, dbdl.model_versions, dbdl.blobs, dbdl.alias_history
    TO dbdl_admin;
-- dbdl_admin may also create the weight tables of relation-centric execution (dbdl.rel_*)
GRANT CREATE ON SCHEMA dbdl TO dbdl_admin;
