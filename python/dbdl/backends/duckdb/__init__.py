"""The DuckDB backend (the embedded default): one module per concern.

- ``backend.py``  the ``Backend``: the connection, transactions, tables from Arrow, DL-centric Arrow batches
- ``dialect.py``  its sqlglot dialect and relation-centric spellings
- ``udf.py``      the Python UDFs predict calls are planned into, and the result cache's key digest
- ``arrow.py``    the Arrow codec: chunks to the runtime's Columns, predictions back to Arrow
- ``costs.py``    the cost model's constants here until `dbdl calibrate` measures them
- ``files.py``    where a duckdb:// URL's database file is
- ``export.py``   ``train_export`` in the client (DuckDB has no procedures): the dataset sink
- ``reader.py``   the range reader of dataset tables for the training readers
"""

from .backend import DuckDBBackend
from .files import path_from_url

__all__ = ["DuckDBBackend", "path_from_url"]
