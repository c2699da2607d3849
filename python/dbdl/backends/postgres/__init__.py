"""The PostgreSQL backend (15+, with PL/Python): one module per concern.

- ``backend.py``  the ``Backend``: psycopg 3, transactions, the registry's definer functions, DL-centric COPY
- ``dialect.py``  its sqlglot dialect, relation-centric spellings, built-ins named with pg_catalog, ``?`` → ``%s``
- ``copy.py``     the binary COPY codec (tables in, features out, predictions back; arrays by dbdl_udf.pgarray)
- ``costs.py``    the cost model's constants here until `dbdl calibrate` measures them
- ``export.py``   ``train_export``: the server's procedure, called with bound parameters
- ``reader.py``   the range reader of dataset tables for the training readers
"""

from .backend import PostgresBackend, default_python_path

__all__ = ["PostgresBackend", "default_python_path"]
