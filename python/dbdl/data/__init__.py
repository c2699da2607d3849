"""Training data: ``train_export`` (SQL → a dataset table), the PyTorch datasets that read it, and
their local LMDB cache. ``db.datasets`` lists, shows and drops datasets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dbdl_udf import datasets as _rules
from dbdl_udf.datasets import DatasetInfo

from . import lmdb_cache

if TYPE_CHECKING:
    from ..backends.base import Backend
    from .reader import BatchSet, ShuffledSet, TrainingSet


def __getattr__(name: str):
    # the readers are torch datasets: torch is imported when one is asked for, not by ``import dbdl``
    if name in ("BatchSet", "ShuffledSet", "TrainingSet"):
        from . import reader

        return getattr(reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["BatchSet", "DatasetInfo", "DatasetRegistry", "ShuffledSet", "TrainingSet"]


class DatasetRegistry:
    """``db.datasets``: the datasets train_export made (catalog table dbdl.datasets)."""

    def __init__(self, backend: "Backend") -> None:
        self._backend = backend

    def list(self) -> list[DatasetInfo]:
        return _rules.list_all(self._backend.catalog)

    def names(self) -> list[str]:
        return [info.name for info in self.list()]

    def get(self, name: str) -> DatasetInfo:
        return _rules.get(self._backend.catalog, name)

    def drop(self, name: str, *, cache: bool = True) -> DatasetInfo:
        """Delete the dataset's table, view and catalog row (and its local caches under the default
        cache folder); returns what was dropped."""
        backend = self._backend
        with backend.catalog.transaction():
            info = backend.drop_dataset(name)
        if cache:
            lmdb_cache.remove_all(lmdb_cache.default_root(), backend.url, info.name)
        return info

    def __contains__(self, name: str) -> bool:
        return _rules.check_dataset_name(name) in self.names()
