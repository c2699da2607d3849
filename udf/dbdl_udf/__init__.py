"""Code that runs inside the database: the bodies of dbdl's external functions.

This package is imported by the database server's Python (PL/Python on PostgreSQL) as well as
by the client (DuckDB registers these bodies as UDFs on connect). It must stay importable with
only numpy and onnxruntime installed: it never imports torch or the ``dbdl`` client package.
"""

from .errors import *  # noqa: F401,F403
