-- dbdl 0005 (DuckDB): what registration rewrote in a model (docs/reference.md#what-registration-rewrites).
-- original_sha256: the bytes as the user gave them, kept in dbdl.blobs beside the rewritten bytes
-- that run (NULL when nothing was rewritten); rewrites: JSON list of {"kind", "note"}.

ALTER TABLE dbdl.model_versions ADD COLUMN original_sha256 VARCHAR;
ALTER TABLE dbdl.model_versions ADD COLUMN rewrites VARCHAR;

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
       m.options,
       v.original_sha256,
       v.rewrites
FROM dbdl.model_versions v
JOIN dbdl.models m ON m.name = v.name
JOIN dbdl.blobs b ON b.sha256 = v.sha256;
