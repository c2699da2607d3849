"""``train_export`` on PostgreSQL: the server's procedure (``dbdl.train_export``, whose body is
``dbdl_udf.postgres.train_export``) runs the export where the data is, called with bound parameters."""

from __future__ import annotations

from typing import Any

from dbdl_udf import datasets
from dbdl_udf.datasets import DatasetInfo, ExportSpec


def train_export(backend: Any, spec: ExportSpec) -> DatasetInfo:
    backend.execute(
        "CALL dbdl.train_export(?, ?, ?, CAST(? AS pg_catalog.text[]), CAST(? AS pg_catalog.int4[]), "
        "CAST(? AS pg_catalog.text), ?, ?, ?, ?)",
        (spec.query, spec.name, spec.label, list(spec.features) if spec.features else None,
         list(spec.shape) if spec.shape else None, spec.dtype, spec.train_fraction, spec.validation_fraction,
         spec.seed, spec.ragged))
    return datasets.get(backend, spec.name)
