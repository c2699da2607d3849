-- Placeholder: migration 0012 belongs to the pgbulk branch (0012_predict_blocks.sql, issue 14).
-- This file only keeps the numbering without gaps on the pgrow branch; delete it when merging pgbulk.
SELECT 1;
