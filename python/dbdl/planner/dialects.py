"""sqlglot dialects as dbdl reads them.

Only difference from the stock dialects: ``PREDICT(...)`` is an ordinary function call. sqlglot
parses it as BigQuery's ``ML.PREDICT(MODEL m, ...)``, which would mangle ``predict('m', feats)``.
"""

from __future__ import annotations

from sqlglot.dialects.duckdb import DuckDB
from sqlglot.dialects.postgres import Postgres


def _without_predict(functions: dict) -> dict:
    return {name: fn for name, fn in functions.items() if name != "PREDICT"}


class DbdlDuckDB(DuckDB):
    class Parser(DuckDB.Parser):
        FUNCTIONS = _without_predict(DuckDB.Parser.FUNCTIONS)


class DbdlPostgres(Postgres):
    class Parser(Postgres.Parser):
        FUNCTIONS = _without_predict(Postgres.Parser.FUNCTIONS)
