"""The Spark SQL backend (scale-out): one module per concern.

- ``backend.py``  the ``Backend``: Spark SQL statements, tables from Arrow, the catalog database
- ``session.py``  the URL and options → a SparkSession (local mode, a cluster, or the user's own)
- ``dialect.py``  its sqlglot dialect and relation-centric spellings
- ``udf.py``      the Arrow UDFs predict calls are planned into (the model broadcast to the executors)
- ``dl.py``       DL-centric execution: partitions streamed through the model with mapInArrow
- ``costs.py``    the cost model's constants here until `dbdl calibrate` measures them
- ``export.py``   ``train_export``: the dataset table written as parquet by Spark
- ``reader.py``   the range reader of dataset tables for the training readers (pyarrow on the files)
"""

from .backend import SparkBackend

__all__ = ["SparkBackend"]
