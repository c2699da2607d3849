"""The training readers' range reads on Spark: pyarrow on the dataset table's parquet files, never
Spark itself (DataLoader workers have no SparkSession, and a range of a few hundred rows is a few
milliseconds of file reading against a Spark job's tenths of a second).

A dataset table is written by ``export.py``: files that each hold one contiguous run of row ids,
sorted, in row groups of bounded size, and beside them :data:`MANIFEST` — the export's uid and every
file's and row group's ``[first, stop)`` row ids. A read of rows ``[start, stop)`` opens the
manifest (a stat and a few hundred bytes), picks the row groups that overlap the range and reads
only those (the files' footers are parsed once per reader).

Where the files are: the table ``<data_database>.ds_<name>_v<k>`` is a managed table, so its folder
is ``<the data database's location>/ds_<name>_v<k>``. The training process asks its Spark session
for that location; a DataLoader worker (``owner`` None) takes it from what its parent learned before
the fork (the export, or a read), else from the URL's ``warehouse=`` (``<warehouse>/<data_database>.db``,
where Spark puts the databases it creates), else Spark's default warehouse, ``./spark-warehouse``.
The catalog database is not opened in a worker: the reader is handed the dataset's catalog entry,
and an embedded DuckDB catalog is held for writing by the training process anyway. A re-export or a
drop deletes the old table's folder, and a table of the same name made later carries another uid,
so a reader of the old version gets DatasetNotFound instead of other rows.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any
from urllib.parse import parse_qsl, unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dbdl_udf.datasets import DatasetInfo, Ragged

from ...errors import ConfigurationError, QueryError
from ..base import RangeReader

#: the file beside a dataset table's parquet files: the export's uid and the files' row-id ranges
MANIFEST = "_dbdl_dataset.json"
MANIFEST_FORMAT = 1

# the data databases' locations this process learned from Spark (by name): a SparkContext is one per
# process, so a name means one location here; DataLoader workers forked later inherit it
_LOCATIONS: dict[str, str] = {}
_LOCK = threading.Lock()


class SparkRangeReader(RangeReader):
    def __init__(self, url: str, owner: Any = None) -> None:
        self.url = url
        self._owner = owner
        self._tables: dict[str, _Table] = {}

    def read(self, info: DatasetInfo, start: int, stop: int) -> tuple[np.ndarray | Ragged, np.ndarray]:
        table = self._table(info)
        row_ids, features, labels = table.read(start, stop)
        if len(row_ids) != stop - start or (len(row_ids) and (row_ids[0] != start or row_ids[-1] != stop - 1)):
            raise QueryError(f"dataset table {info.table} returned {len(row_ids)} rows for row ids [{start}, {stop}); "
                             "its files were changed outside dbdl — re-export the dataset")
        return _rows(features, labels, info)

    def _table(self, info: DatasetInfo) -> _Table:
        table = self._tables.get(info.table)
        if table is None or table.uid != info.uid:
            schema, _, name = info.table.partition(".")
            database, guessed = self._database_location(schema)
            table = _Table(info, table_location(database, name), guessed)
            self._tables[info.table] = table
        table.check()
        return table

    def _database_location(self, schema: str) -> tuple[str, bool]:
        """The data database's location, and whether it is a guess (from the URL, not Spark)."""
        if self._owner is not None:
            try:
                return database_location(self._owner.spark, schema), False
            except Exception:  # noqa: BLE001 - the session is gone: read like a worker does
                self._owner = None
        with _LOCK:
            known = _LOCATIONS.get(schema)
        if known is not None:
            return known, False
        warehouse = _warehouse(self.url)
        return warehouse.rstrip("/") + f"/{schema}.db", True

    def close(self) -> None:
        self._tables.clear()


class _Table:
    """One dataset version's files: its manifest, the row groups' ranges, the open files."""

    def __init__(self, info: DatasetInfo, location: str, guessed: bool) -> None:
        self.info = info
        self.uid = info.uid
        self.location = location
        self.fs, self.path = filesystem(location)
        self.guessed = guessed
        self.manifest_path = f"{self.path}/{MANIFEST}"
        self._mtime: int | None = None
        self._files: list[dict] = []
        self._open: dict[str, pq.ParquetFile] = {}

    def check(self) -> None:
        """The manifest is still the one of this export (a stat per read: the old version's folder
        goes when it is re-exported or dropped)."""
        found = self.fs.get_file_info(self.manifest_path)
        if found.type == pafs.FileType.NotFound:
            if self.guessed and self.fs.get_file_info(self.path.rsplit("/", 1)[0]).type == pafs.FileType.NotFound:
                raise ConfigurationError(
                    f"a DataLoader worker cannot find the files of dataset {self.info.name!r}: there is no folder "
                    f"{self.path.rsplit('/', 1)[0]!r}. Name the Spark warehouse in the URL (spark://…?warehouse=DIR), "
                    "read the dataset once in the training process first (ds.fill_cache()), or use num_workers=0")
            raise RangeReader.gone(self.info)
        if found.mtime_ns != self._mtime:
            try:
                with self.fs.open_input_stream(self.manifest_path) as stream:
                    manifest = json.loads(stream.read())
            except FileNotFoundError as exc:
                raise RangeReader.gone(self.info) from exc
            if manifest.get("uid") != self.uid or manifest.get("format") != MANIFEST_FORMAT:
                raise RangeReader.gone(self.info)
            self._files = manifest["files"]
            self._open.clear()
            self._mtime = found.mtime_ns

    def read(self, start: int, stop: int) -> tuple[np.ndarray, pa.ChunkedArray, np.ndarray]:
        parts = []
        for entry in self._files:
            if entry["stop"] <= start or entry["first"] >= stop:
                continue
            groups = [g for g, (a, b) in enumerate(entry["groups"]) if a < stop and b > start]
            if not groups:
                continue
            first = entry["groups"][groups[0]][0]
            try:
                handle = self._open.get(entry["file"])
                if handle is None:
                    handle = self._open[entry["file"]] = pq.ParquetFile(
                        self.fs.open_input_file(f"{self.path}/{entry['file']}"))
                data = handle.read_row_groups(groups, columns=["row_id", "features", "label"])
            except (FileNotFoundError, OSError) as exc:
                if self.fs.get_file_info(self.manifest_path).type == pafs.FileType.NotFound:
                    raise RangeReader.gone(self.info) from exc
                raise
            lo, hi = max(start, first) - first, min(stop, first + data.num_rows) - first
            parts.append(data.slice(lo, max(0, hi - lo)))
        if not parts:
            empty = pa.table({"row_id": pa.array([], pa.int64()), "features": pa.array([], pa.list_(pa.float32())),
                              "label": pa.array([], pa.int64())})
            parts = [empty]
        data = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        row_ids = data.column(0).to_numpy()
        if len(row_ids) > 1 and not bool((np.diff(row_ids) == 1).all()):
            raise QueryError(f"dataset table {self.info.table} holds rows out of row-id order; its files were changed "
                             "outside dbdl — re-export the dataset")
        return row_ids, data.column(1), data.column(2).to_numpy()


def _rows(features: pa.ChunkedArray, labels: np.ndarray, info: DatasetInfo) -> tuple[np.ndarray | Ragged, np.ndarray]:
    column = features.combine_chunks() if isinstance(features, pa.ChunkedArray) else features
    dtype = np.dtype(info.dtype)
    labels = labels.astype(info.label_dtype, copy=False)
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):  # uint8: BINARY
        column = column.cast(pa.large_binary())
        n = len(column)
        offsets = np.frombuffer(column.buffers()[1], dtype=np.int64)[column.offset:column.offset + n + 1]
        data = column.buffers()[2]
        values = (np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]] if data is not None
                  else np.zeros(0, np.uint8))
        lengths = np.diff(offsets)
    else:
        values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
        lengths = None
    if values.dtype != dtype:
        values = values.astype(dtype)
    if info.ragged:
        if lengths is None:
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
        return Ragged.from_lengths(values, lengths), labels
    elements = int(np.prod(info.shape))
    return values.reshape(len(labels), elements), labels


# -- locations and files (export.py writes, the reader reads) -----------------------------------------


def database_location(spark: Any, schema: str) -> str:
    """A Spark database's location (its URI), remembered for this process's DataLoader workers."""
    location = spark.catalog.getDatabase(schema).locationUri
    with _LOCK:
        _LOCATIONS[schema] = location
    return location


def remember(schema: str, location: str) -> None:
    with _LOCK:
        _LOCATIONS[schema] = location


def table_location(database_location: str, table: str) -> str:
    """Where Spark keeps a managed table of a database (its folder)."""
    return database_location.rstrip("/") + "/" + table


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's file system and path of a Spark location URI (``file:/…``, ``hdfs://…``, ``s3a://…``)."""
    if location.startswith("file:"):
        path = unquote(location[len("file:"):])
        while path.startswith("//"):
            path = path[1:]
        return pafs.LocalFileSystem(), path.rstrip("/") or "/"
    if "://" not in location:
        return pafs.LocalFileSystem(), os.path.abspath(location)
    uri = "s3://" + location.split("://", 1)[1] if location.startswith(("s3a://", "s3n://")) else location
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


def _warehouse(url: str) -> str:
    """The warehouse a Spark URL names (``warehouse=`` or ``conf.spark.sql.warehouse.dir=``), else
    Spark's default, ``spark-warehouse`` in the current folder."""
    query = dict(parse_qsl(url.partition("?")[2]))
    found = query.get("warehouse") or query.get("conf.spark.sql.warehouse.dir")
    return found if found else "file:" + os.path.abspath("spark-warehouse")


def layout(location: str, n_rows: int) -> list[dict]:
    """The parquet files of a freshly written dataset table and their row groups' row-id ranges,
    checked to hold row ids 0..n-1 each once, in order."""
    fs, path = filesystem(location)
    names = sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path))
                   if info.type == pafs.FileType.File and info.base_name.endswith(".parquet")
                   and not info.base_name.startswith(("_", ".")))
    out = []
    for name in names:
        meta = pq.ParquetFile(fs.open_input_file(f"{path}/{name}")).metadata
        groups = []
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            stats = group.column(0).statistics
            if group.num_rows == 0:
                continue
            if stats is None or not stats.has_min_max:
                raise QueryError(f"the dataset table's file {name} has no row_id statistics")
            if stats.max - stats.min + 1 != group.num_rows:
                raise QueryError(f"the dataset table's file {name} holds a row group that is not one run of row ids")
            groups.append([int(stats.min), int(stats.max) + 1])
        if groups:
            out.append({"file": name, "first": groups[0][0], "stop": groups[-1][1], "groups": groups})
    out.sort(key=lambda f: f["first"])
    expect = 0
    for entry in out:
        for a, b in entry["groups"]:
            if a != expect:
                raise QueryError(f"the dataset table's files do not hold row ids 0..{n_rows - 1} in runs (at {expect})")
            expect = b
    if expect != n_rows:
        raise QueryError(f"the dataset table's files hold {expect} rows, not {n_rows}")
    return out


def write_manifest(location: str, row: dict, files: list[dict]) -> None:
    fs, path = filesystem(location)
    manifest = {"format": MANIFEST_FORMAT, "name": row["name"], "version": row["version"], "uid": row["uid"],
                "n_rows": row["n_rows"], "files": files}
    with fs.open_output_stream(f"{path}/{MANIFEST}") as stream:
        stream.write(json.dumps(manifest).encode())


def remove_folder(spark: Any, location: str) -> None:
    """Delete a table's folder (through Hadoop's file system, which Spark wrote it with)."""
    jvm = spark._jvm
    path = jvm.org.apache.hadoop.fs.Path(location)
    fs = path.getFileSystem(spark._jsc.hadoopConfiguration())
    if fs.exists(path):
        fs.delete(path, True)
