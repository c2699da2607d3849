"""Execution strategies for predict calls: UDF-centric (the backends' in-database functions),
relation-centric (the model compiled to SQL joins) and DL-centric (tensors streamed out to the DL
runtime and the predictions streamed back)."""

STRATEGIES = ("udf", "relation", "dl")
