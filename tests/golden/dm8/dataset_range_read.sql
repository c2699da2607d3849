SELECT row_id, features, label FROM dbdl_data.ds_digits_v3 WHERE row_id >= ? AND row_id < ? ORDER BY row_id
