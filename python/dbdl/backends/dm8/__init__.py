"""The DM8 (Dameng) backend through dmPython: one module per concern.

- ``backend.py``  the ``Backend``: statements rendered through the DM8 dialect, dmPython's array
                  fetch and executemany, transactions, the catalog views DM8 has
- ``driver.py``   the URL → dmPython.connect arguments, cursor description types, LOBs, errors
- ``dialect.py``  its sqlglot dialect (on Oracle's) and relation-centric spellings
- ``costs.py``    the cost model's constants here until `dbdl calibrate` measures them
- ``export.py``   ``train_export``: the dataset table written with executemany
- ``reader.py``   the range reader of dataset tables for the training readers

No DM8 server can be had where dbdl is developed: docs/dm8.md says what has run against one.
"""

from .backend import DM8Backend

__all__ = ["DM8Backend"]
