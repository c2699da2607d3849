"""Execution strategies for predict calls: UDF-centric (the backends' in-database functions) and
relation-centric (the model compiled to SQL joins); DL-centric comes with the planner."""

STRATEGIES = ("udf", "relation")
