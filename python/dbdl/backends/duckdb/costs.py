"""The cost model's constants on DuckDB until `dbdl calibrate` measures them (table
dbdl.calibration): seconds, FLOP/s and bytes, as measured on a 2-core x86 machine without a GPU.
The strategies' estimates (strategies/udf.py, relation.py, dl.py) and the result cache's
(planner/cachejoin.py) name them."""

COSTS: dict[str, float] = {
    "udf_setup_s": 5.0e-3,        # registering the UDF, building the session (first use)
    "udf_row_s": 1.5e-7,          # Arrow chunk conversion per row, both ways
    "udf_param_byte_s": 0.0,      # 2,048-row chunks: weights are read once per chunk
    "udf_flops_per_s": 8.0e10,    # onnxruntime, one thread per DuckDB thread, all threads
    "udf_row_group_rows": 122880,  # DuckDB scans a table on one thread per row group: fewer
                                   # rows than threads × this leave cores idle
    "dl_setup_s": 1.5e-2,         # planning the side query, loading the model
    "dl_byte_s": 8.5e-9,          # Arrow out and back, per feature byte
    "dl_flops_per_s": 8.0e10,     # onnxruntime / torch on all cores
    "rel_setup_s": 3.0e-2,        # building and optimizing the compiled statement
    "rel_weight_s": 5.5e-8,       # one joined (input value × weight) row, aggregated
    "rel_value_s": 1.1e-7,        # one activation value through a scalar step
    "rel_dot_s": 1.5e-7,          # blocked layout: one (row, output unit) dot product...
    "rel_dot_elem_s": 1.0e-9,     # ...plus this per element of it
    "cache_lookup_row_s": 1.6e-6,  # key digest, the join with the cache, the join back
    "cache_insert_row_s": 1.5e-6,  # one miss: grouping, the streamed join back, the insert (no index: 0006)
}
