"""Training data on Spark (docs/spark.md, "Training data on Spark"): the parquet layout train_export
writes (files of contiguous, sorted row ids; row groups a range read prunes to), DataLoader workers
that read the files with pyarrow and no Spark, and exports that fail half-way leaving nothing."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

import dbdl
from dbdl_udf import datasets
from dbdl_udf.datasets import assign_splits

spark_only = pytest.mark.parametrize("url", ["spark"], indirect=True)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


def in_row_id_order(x, y, seed=0):
    row_ids, _, _ = assign_splits(len(y), 0.8, 0.1, seed)
    position = np.empty(len(y), np.int64)
    position[row_ids] = np.arange(len(y))
    return x[position], y[position]


def folder(db, table: str) -> str:
    from dbdl.backends.spark import reader

    schema, _, name = table.partition(".")
    location = reader.table_location(reader.database_location(db.backend.spark, schema), name)
    return reader.filesystem(location)[1]


@spark_only
def test_parquet_layout_prunes_range_reads_and_workers_read_every_row(url, digits, monkeypatch, tmp_path):
    from dbdl.backends.spark import export, reader

    # small files and row groups, so that 1,797 rows of 64 floats make several of each
    monkeypatch.setattr(export, "FILE_BYTES", 128 << 10)
    monkeypatch.setattr(export, "ROW_GROUP_BYTES", 16 << 10)
    db = dbdl.connect(url)
    x, y = digits
    db.create_table("digits", {"id": np.arange(len(y)), "pixels": x, "label": y})
    info = db.train_export("SELECT pixels, label FROM digits ORDER BY id", "digits", shape=(1, 8, 8))
    want_x, want_y = in_row_id_order(x, y)

    # the files: each one contiguous run of row ids, sorted, the runs covering 0..n-1 once
    path = folder(db, info.table)
    with open(os.path.join(path, reader.MANIFEST)) as stream:
        manifest = json.load(stream)
    assert manifest["uid"] == info.uid and manifest["n_rows"] == 1797
    files = manifest["files"]
    assert len(files) >= 3 and sum(len(f["groups"]) for f in files) > len(files)
    assert sorted(f["file"] for f in files) == sorted(n for n in os.listdir(path) if n.endswith(".parquet"))
    expect = 0
    for entry in files:
        table = pq.read_table(os.path.join(path, entry["file"]), columns=["row_id", "label"])
        ids = table.column("row_id").to_numpy()
        assert np.array_equal(ids, np.arange(entry["first"], entry["stop"])) and entry["first"] == expect
        assert np.array_equal(table.column("label").to_numpy(), want_y[entry["first"]:entry["stop"]])
        meta = pq.ParquetFile(os.path.join(path, entry["file"])).metadata
        assert [[meta.row_group(g).column(0).statistics.min, meta.row_group(g).column(0).statistics.max + 1]
                for g in range(meta.num_row_groups)] == entry["groups"]
        expect = entry["stop"]
    assert expect == 1797

    # a range read opens the one file and reads the row groups that overlap the range, no more
    read = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                        lambda self, groups, **kw: read.append(list(groups)) or real(self, groups, **kw))
    inside = next(f for f in files[:-1] if len(f["groups"]) >= 2)
    a, b = inside["groups"][1]
    lo, hi = a + 1, min(b, a + 5)
    worker = reader.SparkRangeReader(url)  # as a DataLoader worker opens it: no Spark session
    got_x, got_y = worker.read(info, lo, hi)
    assert read == [[1]]
    assert np.array_equal(got_x, want_x[lo:hi]) and np.array_equal(got_y, want_y[lo:hi])
    read.clear()
    edge = inside["stop"]  # across two files: a row group of each
    got_x, got_y = worker.read(info, edge - 2, edge + 2)
    assert len(read) == 2 and all(len(groups) == 1 for groups in read)
    assert np.array_equal(got_x, want_x[edge - 2:edge + 2]) and np.array_equal(got_y, want_y[edge - 2:edge + 2])
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", real)

    # two DataLoader workers (forked, no Spark) read exactly the exported rows, in row-id order
    ds = db.training_set("digits", None, cache=False)
    batches = list(DataLoader(ds, batch_size=100, num_workers=2))
    assert torch.equal(torch.cat([bx for bx, _ in batches]).reshape(-1, 64), torch.from_numpy(want_x))
    assert torch.equal(torch.cat([by for _, by in batches]), torch.from_numpy(want_y))

    # a worker of a process that learned nothing from Spark: the warehouse in the URL, else a clear error
    monkeypatch.setattr(reader, "_LOCATIONS", {})
    warehouse = db.backend.spark.conf.get("spark.sql.warehouse.dir")
    got_x, got_y = reader.SparkRangeReader(f"{url}&warehouse={warehouse}").read(info, 1700, 1797)
    assert np.array_equal(got_x, want_x[1700:]) and np.array_equal(got_y, want_y[1700:])
    monkeypatch.chdir(tmp_path)  # no ./spark-warehouse here
    with pytest.raises(dbdl.ConfigurationError, match="warehouse=DIR"):
        reader.SparkRangeReader(url).read(info, 0, 10)
    db.close()


@spark_only
def test_a_failed_export_leaves_no_table_folder_or_catalog_row(url, monkeypatch):
    from dbdl.backends.spark import export

    db = dbdl.connect(url)
    rng = np.random.default_rng(0)
    db.create_table("pts", {"id": np.arange(40), "f": rng.standard_normal((40, 4)).astype(np.float32),
                            "label": np.arange(40) % 3, "txt": ["7"] * 39 + ["seven"]})
    v1 = db.train_export("SELECT f, label FROM pts ORDER BY id", "pts")
    schema = db.backend.data_schema

    def unchanged():
        assert db.datasets.names() == ["pts"] and db.datasets.get("pts") == v1
        assert sorted(t for t in db.backend.tables_in(schema) if t.startswith("ds")) == ["ds_pts", "ds_pts_v1"]
        assert not os.path.exists(folder(db, f"{schema}.ds_pts_v2"))
        assert db.sql(f"SELECT count(*) FROM {v1.view}").fetchall() == [(40,)]
        _, labels = db.training_set("pts", None, cache=False).arrays()
        assert len(labels) == 40 and np.array_equal(np.sort(labels), np.sort(np.arange(40) % 3))

    # the label's cast fails in Spark, on the last row
    with pytest.raises(dbdl.QueryError, match="CAST_INVALID_INPUT|cast"):
        db.train_export("SELECT f, CAST(txt AS INT) AS label FROM pts ORDER BY id", "pts")
    unchanged()

    # a failure once the new table is written and the view points at it: both undone
    def fail(*args, **kwargs):
        assert db.backend.spark.catalog.tableExists("ds_pts_v2", schema)  # it got that far
        raise dbdl.QueryError("the catalog database went away")

    monkeypatch.setattr(export.datasets, "record", fail)
    with pytest.raises(dbdl.QueryError, match="went away"):
        db.train_export("SELECT f, label FROM pts WHERE id < 30 ORDER BY id", "pts")
    monkeypatch.undo()
    assert export.datasets.record is datasets.record
    unchanged()

    # and the next export that works is version 2, the old one gone with its folder
    v2 = db.train_export("SELECT f, label FROM pts WHERE id < 30 ORDER BY id", "pts")
    assert (v2.version, v2.n_rows) == (2, 30) and not os.path.exists(folder(db, v1.table))
    assert db.sql(f"SELECT count(*) FROM {v2.view}").fetchall() == [(30,)]
    db.close()
