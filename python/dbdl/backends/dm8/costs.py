"""The cost model's constants on DM8 until `dbdl calibrate` measures them (table dbdl.calibration).

No DM8 server was at hand when these were written: they are PostgreSQL's (a server reached over a
socket, rows moved by the driver), with the transfer cost raised for dmPython's row tuples (one
Python object per value, where PostgreSQL's binary COPY moves raw bytes). Run `dbdl calibrate
dm://…` on the server at hand. There are no udf_* constants: DM8 runs no Python (UDF-centric is
ruled out; the udf_* below are there only for estimates that name them beside others, and are
never the ones chosen), and no cache_*: DM8 has no result cache.
"""

COSTS: dict[str, float] = {
    "udf_setup_s": 5.0e-2,        # (UDF-centric is ruled out on DM8)
    "udf_row_s": 1.0e-5,
    "udf_param_byte_s": 0.0,
    "udf_flops_per_s": 6.0e10,
    "dl_setup_s": 5.0e-2,         # the source query, the temporary table's DDL (committed), the join back
    "dl_byte_s": 6.0e-8,          # array fetch out, executemany of a list back, per feature byte
    "dl_flops_per_s": 6.0e10,     # onnxruntime / torch in the client
    "rel_setup_s": 5.0e-2,        # building and optimizing the compiled statement
    "rel_weight_s": 5.3e-7,       # one joined (input value × weight) row, aggregated
    "rel_value_s": 1.1e-6,        # one activation value through a scalar step
}
