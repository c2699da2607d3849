-- dbdl 0014 (PostgreSQL): blocked dataset tables (format 2, issue 14).
-- block_rows = 0: the dataset's table holds one row per sample (row_id, features, label, split), as every
-- dataset exported before this migration does; R > 0: one row per block of R samples (block_id, features
-- bytea of the R samples' values, labels int8[] / real[]), which readers take whole. train_export writes
-- the column through dbdl.record_dataset, which checks it against the table (dbdl_udf.datasets.record).
ALTER TABLE dbdl.datasets ADD COLUMN IF NOT EXISTS block_rows integer NOT NULL DEFAULT 0;
