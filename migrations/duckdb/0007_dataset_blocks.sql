-- dbdl 0007 (DuckDB): the dataset catalog records its table's layout (issue 14). DuckDB's dataset tables
-- keep one row per sample (block_rows = 0); the column is there so that one catalog row reads alike on
-- both backends (PostgreSQL's blocked tables: migrations/postgres/0014_dataset_blocks.sql).
ALTER TABLE dbdl.datasets ADD COLUMN block_rows INTEGER DEFAULT 0;
