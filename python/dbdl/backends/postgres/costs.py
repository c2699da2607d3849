"""The cost model's constants on PostgreSQL until `dbdl calibrate` measures them (table
dbdl.calibration): seconds, FLOP/s and bytes, as measured on a 2-core x86 machine without a GPU.
The strategies' estimates (strategies/udf.py, relation.py, dl.py) and the result cache's
(planner/cachejoin.py) name them."""

COSTS: dict[str, float] = {
    "udf_setup_s": 5.0e-2,        # PL/Python bootstrap and session build in a new server process
    "udf_row_s": 1.0e-5,          # a PL/Python call per row (0013: ~4 µs of call, decode and return + onnxruntime's per-call cost)
    "udf_param_byte_s": 4.4e-11,  # one row per call: every row reads all the weights again
    "udf_flops_per_s": 8.0e10,    # onnxruntime, one thread
    "dl_setup_s": 1.8e-2,
    "dl_byte_s": 3.0e-8,          # binary COPY out and back
    "dl_flops_per_s": 6.0e10,
    "rel_setup_s": 4.0e-2,
    "rel_weight_s": 5.3e-7,
    "rel_value_s": 1.1e-6,
    "cache_lookup_row_s": 4.0e-6,
    "cache_insert_row_s": 1.5e-5,
}
