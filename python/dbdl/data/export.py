"""``db.train_export`` and ``CALL dbdl.train_export(...)`` from the client: the request checked by
``dbdl_udf.datasets.check_spec``, carried out by the backend (``Backend.train_export``: PostgreSQL's
server procedure, DuckDB's client-side sink), with a progress line on a terminal."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import pyarrow as pa

from dbdl_udf import datasets
from dbdl_udf.datasets import DatasetInfo

if TYPE_CHECKING:
    from ..backends.base import Backend

#: the procedure's parameters, in order (as declared in migrations/postgres/0011_train_export_inputs.sql)
PARAMETERS = ("source_query", "dataset_name", "label_column", "features", "shape", "dtype", "train_fraction",
              "validation_fraction", "seed", "ragged")


def train_export(backend: "Backend", source_query: str, dataset_name: str, *, label_column: str = "label",
                 features: Sequence[str] | str | None = None, shape: Sequence[int] | None = None,
                 dtype: str | None = None, train_fraction: float = 0.8, validation_fraction: float = 0.1,
                 seed: int = 0, ragged: bool = False, progress: bool | None = None) -> DatasetInfo:
    spec = datasets.check_spec(source_query, dataset_name, label_column, features, shape, dtype, train_fraction,
                               validation_fraction, seed, ragged)
    with _progress(progress, f"exporting {spec.name}") as tick:
        return backend.train_export(spec, tick)


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(enabled: bool | None, label: str):
    """A rich progress line (rows done) when on a terminal; nothing otherwise."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _Null()
    import contextlib

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    @contextlib.contextmanager
    def bar() -> Iterator[Any]:
        with Progress(SpinnerColumn(), TextColumn("{task.description}: {task.completed:,} rows"),
                      TimeElapsedColumn(), transient=True) as p:
            task = p.add_task(label, total=None)
            yield lambda done: p.update(task, completed=done)

    return bar()



def summary(infos: Sequence[DatasetInfo]) -> pa.Table:
    return pa.table({
        "name": [i.name for i in infos], "version": [i.version for i in infos],
        "table_name": [i.table for i in infos], "shape": [list(i.shape) for i in infos],
        "dtype": [i.dtype for i in infos], "n_rows": [i.n_rows for i in infos],
        "n_train": [i.n_train for i in infos], "n_validation": [i.n_validation for i in infos],
        "n_test": [i.n_test for i in infos]})
