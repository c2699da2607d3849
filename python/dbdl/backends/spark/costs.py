"""The cost model's constants on Spark until `dbdl calibrate` measures them on the cluster at hand
(table dbdl.calibration in the catalog database): seconds, FLOP/s and bytes of a whole statement,
as measured in ``local[2]`` on a 2-core x86 machine without a GPU. A cluster's throughput differs
by its executors: calibrate there (docs/spark.md)."""

COSTS: dict[str, float] = {
    "udf_setup_s": 0.3,           # registering the UDF, broadcasting the model, first Python worker
    "udf_row_s": 1.0e-6,          # JVM -> Arrow -> Python and back, per row
    "udf_param_byte_s": 0.0,      # the session is loaded once per Python worker
    "udf_flops_per_s": 4.0e10,    # onnxruntime, one thread per task, all tasks
    "dl_setup_s": 0.5,            # the side job, its temp view, the join back
    "dl_byte_s": 2.0e-8,          # Arrow out of the JVM and back, per feature byte
    "dl_flops_per_s": 4.0e10,     # onnxruntime / torch per partition
    "rel_setup_s": 0.5,           # planning the compiled statement, broadcasting the weights
    "rel_weight_s": 2.0e-7,       # one joined (input value x weight) row, aggregated
    "rel_value_s": 2.0e-7,        # one activation value through a scalar step
    "rel_dot_s": 5.0e-7,          # blocked layout: one (row, output unit) dot product...
    "rel_dot_elem_s": 5.0e-9,     # ...plus this per element of it
}
