"""``dbdl.connect()``: one database, its registry, and SQL with predict.

``Database`` is a thin facade: each of its parts takes the backend (and what else it needs), not
the facade — ``ModelRegistry`` and ``DatasetRegistry``, the planner (``planner.run_sql``,
``planner.explain``), the client-side procedures (``calls``), the training readers.
"""

from __future__ import annotations

import os

from typing import TYPE_CHECKING, Any, Sequence

from . import calls
from . import migrate as migrations
from .backends.base import Backend
from .data import DatasetRegistry
from .names import check_name
from .planner import Explain, explain, run_sql
from .registry import ModelRegistry
from .result import Result
from .strategies.base import memory_budget

if TYPE_CHECKING:
    import pyarrow as pa

    from dbdl_udf.datasets import DatasetInfo


class Database:
    """A connection to one database with dbdl installed.

    ``db.models`` is the registry; ``db.sql(query)`` runs SQL in which ``predict``,
    ``predict_array`` and ``predict_class`` score rows with registered models.
    """

    def __init__(self, backend: Backend, *, migrate: bool | None = None) -> None:
        self.backend = backend
        #: the model registry
        self.models = ModelRegistry(backend)
        #: the training datasets made by train_export
        self.datasets = DatasetRegistry(backend)
        #: bytes a strategy that loads the whole model may use (DBDL_MEMORY_BUDGET, else half the RAM);
        #: models over it run relation-centric
        self.memory_budget = memory_budget()
        try:
            migrations.ensure(backend, migrate)
            backend.on_connect()
        except BaseException:
            backend.close()
            raise

    @property
    def url(self) -> str:
        return self.backend.url

    def sql(self, query: str, params: Sequence[Any] | None = None, *, strategy: str | None = None) -> Result:
        """Run SQL (one statement, or several separated by ``;`` — the last one's rows are returned).

        ``?`` placeholders are bound to ``params``. Calls of predict/predict_array/predict_class
        that name their model with a literal are pinned to the serving version before the query
        runs, so an unknown model fails before a row is read. ``strategy`` forces how: "udf" (the
        in-database function), "relation" (the model compiled to SQL joins) or "dl" (the rows
        streamed out to torch/onnxruntime and the predictions streamed back); without it (or a
        ``/*+ dbdl strategy=… */`` hint) the planner chooses per call by estimated cost.
        """
        params = tuple(params or ())
        if not self.backend.has_procedures:
            # DuckDB's CALL takes only table functions: dbdl carries out its own procedures
            found = calls.parse_call(query, self.backend.dialect, params)
            if found is not None:
                return Result(calls.run(self.backend, self.models, *found))
        return Result(run_sql(self.backend, query, params, strategy=strategy, memory_budget=self.memory_budget))

    execute = sql

    def explain(self, query: str, *, strategy: str | None = None) -> "Explain":
        """Every predict call's candidates (estimated time, or why ruled out) and the choice,
        without running the query. ``print(db.explain(sql))`` shows them as a table."""
        return explain(self.backend, query, strategy=strategy, memory_budget=self.memory_budget)

    def calibrate(self, rows: int = 20000, progress: bool = True) -> dict[str, float]:
        """Measure the cost model's constants on this machine and store them (dbdl.calibration)."""
        from .calibrate import calibrate

        return calibrate(self, rows=rows, progress=progress)

    def create_table(self, name: str, data: Any, *, replace: bool = False) -> int:
        """Create table ``name`` from an Arrow table, a pandas DataFrame or a dict of arrays.

        A 2-D numpy array becomes a tensor column (``FLOAT[n]`` on DuckDB, ``real[]`` on
        PostgreSQL), ready for ``predict``. Returns the number of rows written.
        """
        table = to_arrow(data)
        self.backend.write_arrow(check_name(name, "table"), table, replace=replace)
        return table.num_rows

    def train_export(self, source_query: str, dataset_name: str, *, label_column: str = "label",
                     features: "Sequence[str] | str | None" = None, shape: "Sequence[int] | None" = None,
                     dtype: str | None = None, train_fraction: float = 0.8, validation_fraction: float = 0.1,
                     seed: int = 0, ragged: bool = False, progress: bool | None = None) -> "DatasetInfo":
        """Materialize ``source_query`` as a training dataset (``CALL train_export`` from Python).

        Features are the column(s) ``features`` names — one numeric array column, or several
        numeric columns stacked in order — or, by default, every column except ``label_column``.
        ``shape`` gives the per-row tensor shape (e.g. ``(1, 8, 8)``; default: a nested array's own
        dimensions, else flat), ``dtype`` their stored type (default: uint8 for uint8/bytes
        columns, the integer type of ragged token lists, else float32). ``ragged=True`` stores
        rows of different lengths (token lists) exactly, for the padded/offsets readers. Rows are split train/validation/test by a permutation seeded with
        ``seed`` (test gets ``1 - train_fraction - validation_fraction``); row ids number the
        splits one after another, so each split is one contiguous row-id range. Re-exporting a
        name replaces the dataset atomically (version + 1); a failed export leaves nothing.
        """
        from .data.export import train_export

        return train_export(self.backend, source_query, dataset_name, label_column=label_column, features=features,
                            shape=shape, dtype=dtype, train_fraction=train_fraction,
                            validation_fraction=validation_fraction, seed=seed, ragged=ragged, progress=progress)

    def training_set(self, name: str, split: str | None = "train", *, batch_size: int | None = None,
                     shuffle: bool = False, seed: int = 0, cache: "bool | str | os.PathLike" = True,
                     block_rows: int | None = None, prefetch: int = 0, drop_last: bool = False,
                     buffer_blocks: int = 4, cache_map_size: int | None = None, dtype: str | None = None,
                     collate: str | None = None, pad_id: int = 0):
        """A PyTorch dataset over one split of an exported dataset (see docs/training.md).

        * default: map-style, ``ds[i] -> (features, label)``; DataLoader batches are gathered
          whole (``__getitems__``);
        * ``batch_size=B``: map-style over batches of B consecutive rows (``DataLoader(ds,
          batch_size=None)``), each one range read;
        * ``shuffle=True``: an IterableDataset shuffled per epoch from ``(seed, epoch)``
          (``set_epoch``), blocks dealt to the DataLoader workers.

        ``cache=True`` (default: $DBDL_CACHE_DIR or ~/.cache/dbdl/datasets) or a folder keeps the
        rows read in a local LMDB so later epochs never query the database; ``cache=False`` reads
        the database every time. ``prefetch``: blocks read ahead (in one range query for the
        map-style forms, by a background thread for the shuffled stream).

        ``dtype`` converts the features as they come out (e.g. uint8 images as ``"float32"``;
        only lossless conversions). A ragged dataset (token lists) needs ``collate`` for its
        batches: ``"padded"`` gives ``(labels [B], tokens [B, L], lengths [B])`` padded with
        ``pad_id``; ``"offsets"`` gives the AG News tutorial's ``(labels, text, offsets)``.
        """
        from .data.reader import training_set

        return training_set(self.backend, name, split, batch_size=batch_size, shuffle=shuffle, seed=seed, cache=cache,
                            block_rows=block_rows, prefetch=prefetch, drop_last=drop_last,
                            buffer_blocks=buffer_blocks, cache_map_size=cache_map_size, dtype=dtype,
                            collate=collate, pad_id=pad_id)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<dbdl.Database {self.backend.url}>"

def connect(url: str | None = None, *, migrate: bool | None = None, **options: Any) -> Database:
    """Open a database and make sure dbdl's schema is installed.

    ``url`` is ``duckdb:///path.db`` (relative), ``duckdb:////abs/path.db``, ``duckdb:///:memory:``,
    a bare file path, ``postgresql://user@host/db``, or ``spark://local[2]`` / ``spark://host:7077``
    (or ``spark=session``, a SparkSession you have; options in docs/spark.md); without it, ``$DBDL_URL`` or
    ``duckdb:///dbdl_data.duckdb`` in the current folder. A new database gets dbdl's migrations;
    ``migrate=False`` refuses to change the schema, ``migrate=True`` always brings it up to date.
    """
    if migrate is False:
        options.setdefault("create", False)  # refusing to migrate must not leave an empty file behind
    if url is None and options.get("spark") is not None:
        url = "spark://"  # a SparkSession the user already has (docs/spark.md)
    backend = Backend.open(url, **options)
    return Database(backend, migrate=migrate)


def to_arrow(data: Any) -> "pa.Table":
    """Arrow table from an Arrow table, a DataFrame or a mapping of column -> array (2-D = tensor)."""
    import numpy as np
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data
    if hasattr(data, "to_dict") and hasattr(data, "columns") and not isinstance(data, dict):
        return pa.Table.from_pandas(data, preserve_index=False)
    columns = {}
    for name, values in dict(data).items():
        if isinstance(values, (list, tuple)) and values and isinstance(values[0], (bytes, bytearray, str)):
            columns[name] = pa.array(values)  # numpy's fixed-width bytes would drop trailing NUL bytes
            continue
        arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else np.asarray(values)
        if isinstance(arr, np.ndarray) and arr.ndim == 2:
            flat = pa.array(np.ascontiguousarray(arr, dtype=np.float32).ravel())
            arr = pa.FixedSizeListArray.from_arrays(flat, arr.shape[1])
        columns[name] = arr
    return pa.table(columns)
