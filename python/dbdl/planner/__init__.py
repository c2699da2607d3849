"""From a user's SQL to what runs: find the predict calls, pin their models, choose how to run them."""

from .dialects import DbdlDuckDB, DbdlPostgres
from .rewrite import PREDICT_FUNCTIONS, parse, plan_statement

__all__ = ["DbdlDuckDB", "DbdlPostgres", "PREDICT_FUNCTIONS", "parse", "plan_statement"]
