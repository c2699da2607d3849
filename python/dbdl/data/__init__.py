"""Training data: ``train_export`` (SQL → a dataset table), the PyTorch datasets that read it, and
their local LMDB cache. ``db.datasets`` lists, shows and drops datasets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dbdl_udf import datasets as _rules
from dbdl_udf.datasets import DatasetInfo

if TYPE_CHECKING:
    from ..database import Database
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

    def __init__(self, db: "Database") -> None:
        self._db = db

    def list(self) -> list[DatasetInfo]:
        return _rules.list_all(self._db.backend)

    def names(self) -> list[str]:
        return [info.name for info in self.list()]

    def get(self, name: str) -> DatasetInfo:
        return _rules.get(self._db.backend, name)

    def drop(self, name: str, *, cache: bool = True) -> DatasetInfo:
        """Delete the dataset's table, view and catalog row (and its local caches under the default
        cache folder); returns what was dropped."""
        backend = self._db.backend
        with backend.transaction():
            info = _rules.drop(backend, name, forget_row=backend.forget_dataset)
        if cache:
            from . import cache as cache_mod

            cache_mod.remove_all(cache_mod.default_root(), self._db.url, info.name)
        return info

    def __contains__(self, name: str) -> bool:
        return _rules.check_dataset_name(name) in self.names()
