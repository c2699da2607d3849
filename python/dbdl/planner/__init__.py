"""From a user's SQL to what runs: find the predict calls, pin their models, let each call's
strategy rewrite it, and run the statement (``rewrite.run_sql``, ``rewrite.explain``)."""

from .cost import CallPlan, Explain
from .rewrite import PlannedStatement, check_output_kind, explain, plan_statement, run_sql

__all__ = ["CallPlan", "Explain", "PlannedStatement", "check_output_kind", "explain", "plan_statement", "run_sql"]
