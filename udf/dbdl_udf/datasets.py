"""Training datasets: the rules of ``train_export``, shared by the client and the database server.

``CALL train_export(source_query, dataset_name, ...)`` runs in PostgreSQL's own Python (a
PL/Python procedure) and in the client for DuckDB (which has no procedures); both call
:func:`export` here with a *sink* that knows how to read the query and write tables on its
backend. Everything else — which columns are features, NULLs, ragged rows, dtypes, the split
assignment, row-id order, versions and the catalog row — is decided here, once.

A dataset table holds ``row_id`` (dense 0..n-1, the primary key), ``features`` (one tensor per
row: DuckDB a typed array such as ``FLOAT[64]``, PostgreSQL ``bytea`` of little-endian values),
``label`` and ``split``. Row ids are assigned *after* splitting, so each split is one contiguous
range — train 0..a-1, validation a..b-1, test b..n-1 — and within a split rows keep the order the
source query returned them in. A reader then takes any part of a split with one keyset range
query. Each export writes a new table ``<schema>.ds_<name>_v<version>`` and points the view
``<schema>.ds_<name>`` at it (schema ``dbdl`` on DuckDB, ``dbdl_data`` on PostgreSQL, where
dbdl_admin may create tables but dbdl's own functions never look) in the same transaction, so a re-export replaces the dataset atomically
and a failed one leaves nothing behind.

Format 2 (PostgreSQL, rows of one shape): the table is *blocked* — ``block_id`` (the primary key),
``features`` (``bytea``: the little-endian values of samples block_id*R .. block_id*R+R-1, one after
another, ``STORAGE EXTERNAL``) and ``labels`` (``int8[]`` / ``real[]``) — with R recorded in the
catalog (``block_rows``; 0 = one row per sample, which every dataset exported before keeps). The
view ``ds_<name>`` still shows one row per sample. Readers take whole blocks: one value per R
samples instead of one per sample is what lets a binary COPY run at the server's speed. DuckDB keeps
one row per sample: its typed arrays already read at ~2.5 GB/s by range, while its BLOBs of 48 KB and
more read at ~10-40 MB/s (measured, DuckDB 1.x).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from . import pgarray
from .catalog import check_name
from .errors import DatasetNotFound, DTypeMismatch, InvalidName, QueryError, ShapeMismatch
from .sqltext import quote_qualified

__all__ = [
    "DTYPES", "SPLITS", "DatasetInfo", "DatasetNotFound", "ExportSpec", "Ragged", "assign_splits", "check_dataset_name",
    "check_spec", "choose_columns", "export", "get", "drop", "list_all",
]

#: dtypes a dataset's features may have (stored little-endian)
DTYPES = ("float32", "float64", "uint8", "int8", "int16", "int32", "int64")
SPLITS = ("train", "validation", "test")
#: what a ragged dataset's row is assumed to hold when sizing blocks and caches (token lists)
RAGGED_ROW_VALUES = 128
#: the longest dataset name: its table name ds_<name>_v<version> must fit PostgreSQL's 63 bytes
MAX_NAME = 48
#: the bytes one stored value of a blocked dataset table (format 2) aims at, and its most samples
STORED_BLOCK_BYTES = 1 << 20
MAX_BLOCK_ROWS = 1024


def stored_block_rows(row_bytes: int) -> int:
    """Samples per stored value of a blocked table: the largest power of two whose block stays
    within 1 MiB, 1 to 1,024 (3×32×32 float32: 64 samples, 768 KiB; uint8: 256). A power of two,
    so that a reader's block of any power-of-two size is whole stored blocks."""
    rows = max(1, min(MAX_BLOCK_ROWS, STORED_BLOCK_BYTES // max(1, int(row_bytes))))
    return 1 << (rows.bit_length() - 1)


def check_dataset_name(name: object) -> str:
    """Dataset names follow model names, case-insensitively (folded to lower case like an unquoted
    SQL identifier), and are at most 48 characters so that their tables' names fit everywhere."""
    check_name(name, "dataset")
    assert isinstance(name, str)
    if len(name) > MAX_NAME:
        raise InvalidName(f"dataset name {name!r} is {len(name)} characters long; use at most {MAX_NAME}")
    return name.lower()


@dataclass(frozen=True)
class ExportSpec:
    query: str
    name: str
    label: str
    features: tuple[str, ...] | None
    shape: tuple[int, ...] | None
    dtype: str | None  # None: chosen from the source column (see default_dtype)
    train_fraction: float
    validation_fraction: float
    seed: int
    ragged: bool = False


def check_spec(query: object, name: object, label: object = "label", features: object = None,
               shape: object = None, dtype: object = None, train_fraction: object = 0.8,
               validation_fraction: object = 0.1, seed: object = 0, ragged: object = False) -> ExportSpec:
    """Every argument of train_export checked, with a message that names the fix."""
    if not isinstance(query, str) or not query.strip():
        raise QueryError("train_export needs a source query, e.g. 'SELECT feats, label FROM t'")
    name = check_dataset_name(name)
    if not isinstance(label, str) or not label:
        raise InvalidName(f"label_column must be the name of a column of the query, got {label!r}")
    if isinstance(features, str):
        features = (features,)
    if features is not None:
        features = tuple(features)
        if not features or not all(isinstance(f, str) and f for f in features):
            raise InvalidName(f"features must name one or more columns of the query, got {features!r}")
        if label in features:
            raise InvalidName(f"column {label!r} cannot be both the label and a feature")
    if isinstance(shape, str):
        try:
            shape = json.loads(shape)
        except ValueError as exc:
            raise ShapeMismatch(f"shape {shape!r} is not a list of sizes; write it like '[1, 8, 8]'") from exc
    if shape is not None:
        try:
            shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError) as exc:
            raise ShapeMismatch(f"shape must be a list of positive sizes such as (1, 8, 8), got {shape!r}") from exc
        if not shape or (any(d < 1 for d in shape) and shape != (-1,)):
            raise ShapeMismatch(f"shape must be a list of positive sizes such as (1, 8, 8), got {list(shape)}")
    if ragged is None:
        ragged = False
    if not isinstance(ragged, (bool, np.bool_)):
        raise ShapeMismatch(f"ragged must be true or false, got {ragged!r}")
    if ragged and shape is not None and tuple(shape) != (-1,):
        raise ShapeMismatch(f"ragged => true stores rows of different lengths, which have no fixed shape; drop "
                            f"shape => {list(shape)} (or drop ragged to export rows of one length)")
    if ragged:
        shape = None
    elif shape is not None and tuple(shape) == (-1,):
        raise ShapeMismatch("shape [-1] means variable-length rows: pass ragged => true instead")
    if dtype is not None and dtype not in DTYPES:
        raise DTypeMismatch(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    try:
        train, validation = float(train_fraction), float(validation_fraction)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ShapeMismatch("train_fraction and validation_fraction must be numbers between 0 and 1") from exc
    if not (0 <= train <= 1 and 0 <= validation <= 1) or train + validation > 1 + 1e-9 or math.isnan(train + validation):
        raise ShapeMismatch(
            f"train_fraction ({train_fraction}) and validation_fraction ({validation_fraction}) must each lie in "
            "[0, 1] and sum to at most 1 (the test split gets the rest)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ShapeMismatch(f"seed must be a whole number ≥ 0, got {seed!r}")
    return ExportSpec(query, name, label, features, shape, None if dtype is None else str(dtype), train, validation,
                      int(seed), bool(ragged))


# -- columns -------------------------------------------------------------------------------------
# A sink describes the query's columns as (name, kind, type name) with kind one of "int", "float",
# "array" (a list/array of numbers), or "other".


def choose_columns(columns: Sequence[tuple[str, str, str]], spec: ExportSpec) -> tuple[list[str], str]:
    """(feature columns, label kind) by the documented rule: ``features`` names the columns, or else
    every column but the label is a feature; either one array column, or several numeric columns
    stacked in order."""
    by_name = {c[0]: c for c in columns}
    if spec.label not in by_name:
        raise QueryError(f"the query has no label column {spec.label!r} (its columns: "
                         f"{', '.join(by_name)}); alias one AS label, or pass label_column")
    label_kind = by_name[spec.label][1]
    if label_kind not in ("int", "float"):
        raise DTypeMismatch(f"label column {spec.label!r} has type {by_name[spec.label][2]}; a label must be a "
                            "number (integer class or float target) — cast it")
    names = list(spec.features) if spec.features else [c[0] for c in columns if c[0] != spec.label]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise QueryError(f"the query has no column {missing[0]!r} (its columns: {', '.join(by_name)})")
    if not names:
        raise QueryError("the query has no feature column besides the label; select the features too")
    for n in names:
        kind, type_name = by_name[n][1], by_name[n][2]
        if kind not in ("int", "float", "array", "bytes"):
            raise DTypeMismatch(f"feature column {n!r} has type {type_name}; features must be numbers, arrays "
                                "of numbers or bytes (uint8 images) — cast it, or leave it out with features=[...]")
    arrays = [n for n in names if by_name[n][1] in ("array", "bytes")]
    if arrays and len(names) > 1:
        raise DTypeMismatch(f"features are either one array (or bytes) column or several numeric columns; got "
                            f"{arrays[0]!r} among {names} — pass features=[{arrays[0]!r}]")
    if spec.ragged and not arrays:
        raise DTypeMismatch(f"ragged => true takes one list column (token ids such as INTEGER[] / int[], or bytes); "
                            f"the features {names} are plain numbers — select the list column")
    return names, label_kind


def check_batch(matrix: np.ndarray, valid: np.ndarray, labels: np.ndarray, labels_valid: np.ndarray, first_pos: int,
                spec: ExportSpec, width: int | None) -> int:
    """Refuse NULL features or labels and rows of another length; returns the row width."""
    if not valid.all():
        row = first_pos + int(np.flatnonzero(~valid)[0])
        raise DTypeMismatch(f"row {row} of the query has NULL features (or a NULL element); filter such rows "
                            "out (WHERE ... IS NOT NULL) or fill them (coalesce) before exporting")
    if not labels_valid.all():
        row = first_pos + int(np.flatnonzero(~labels_valid)[0])
        raise DTypeMismatch(f"row {row} of the query has a NULL label in {spec.label!r}; filter such rows out "
                            f"(WHERE {spec.label} IS NOT NULL) before exporting")
    got = matrix.shape[1]
    if width is not None and got != width:
        raise ShapeMismatch(ragged_message(first_pos, width, got))
    if matrix.dtype.kind == "f" and not np.isfinite(matrix).all():
        row = first_pos + int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
        raise DTypeMismatch(f"row {row} of the query has NaN or infinite features; clean them before exporting")
    if spec.shape is not None and math.prod(spec.shape) != got:
        raise ShapeMismatch(f"shape {list(spec.shape)} holds {math.prod(spec.shape)} values but each row has {got} "
                            "features; pass a shape whose sizes multiply to the feature count")
    return got


def ragged_message(row: int, width: int, got: int) -> str:
    return (f"feature rows must all have one length (the dataset's tensor shape is fixed); row {row} has {got} "
            f"values where earlier rows have {width} — for variable-length rows (token lists) export with "
            "ragged => true, else filter or pad the rows")


class Ragged:
    """Variable-length rows: the values of every row one after another and ``offsets`` (n + 1
    int64, starting at 0): row i is ``values[offsets[i]:offsets[i + 1]]``."""

    __slots__ = ("values", "offsets")

    def __init__(self, values: np.ndarray, offsets: np.ndarray) -> None:
        self.values = values
        self.offsets = np.asarray(offsets, dtype=np.int64)

    @classmethod
    def from_lengths(cls, values: np.ndarray, lengths: np.ndarray) -> "Ragged":
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(values, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def slice(self, lo: int, hi: int) -> "Ragged":
        return Ragged(self.values[self.offsets[lo]:self.offsets[hi]], self.offsets[lo:hi + 1] - self.offsets[lo])

    def take(self, rows: np.ndarray) -> "Ragged":
        """The rows given (any order, repeats allowed), as a new Ragged."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        out = Ragged.from_lengths(self.values[:0], lengths)
        total = int(out.offsets[-1])
        if total:
            index = np.repeat(starts - out.offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
            out.values = self.values[index]
        return out

    @staticmethod
    def concat(parts: Sequence["Ragged"]) -> "Ragged":
        if len(parts) == 1:
            return parts[0]
        values = np.concatenate([p.values for p in parts])
        return Ragged.from_lengths(values, np.concatenate([p.lengths for p in parts]))

    def astype(self, dtype) -> "Ragged":
        return Ragged(np.ascontiguousarray(self.values, dtype=dtype), self.offsets)


def default_dtype(values_dtype: np.dtype, ragged: bool) -> str:
    """The stored dtype when train_export is given none: uint8 stays uint8 (UTINYINT[], BLOB,
    bytea: images stay one byte per value); variable-length integer rows (token ids) keep their
    integer type (int32, or int64 for wider ones); everything else is float32."""
    dt = np.dtype(values_dtype)
    if dt == np.uint8:
        return "uint8"
    if ragged and dt.kind in "iub":
        return "int32" if dt.itemsize <= 4 and (dt.kind != "u" or dt.itemsize < 4) else "int64"
    return "float32"


#: element types a dataset's array column may have (real, double precision, smallint, integer, bigint)
_EXPORT_ELEMENTS = (700, 701, 21, 23, 20)


def _arrays(blobs: Sequence[bytes | None]) -> pgarray.Arrays:
    elem = pgarray.element_of(blobs)
    if elem is not None and elem not in _EXPORT_ELEMENTS:
        raise DTypeMismatch(f"features must be arrays of numbers (real[], double precision[], integer[], ...); got an "
                            f"array of {pgarray.type_name(elem)} — cast the column, e.g. col::real[]")
    return pgarray.decode_arrays([None if b is None else bytes(b) for b in blobs], "the feature arrays")


def array_send_matrix(blobs: Sequence[bytes | None], first_pos: int
                 ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...] | None]:
    """(rows x width) values of array_send() bytes of numeric arrays (any number of dimensions,
    flattened; in the elements' own type: int4 stays int32, real float32 …), a mask of rows
    without NULL (array or element), and the arrays' dimensions where they have more than one
    (a real[3][32][32] column: (3, 32, 32); else None). Rows of different lengths: ShapeMismatch."""
    arrays = _arrays(blobs)
    n = len(blobs)
    if arrays.offsets is None:
        dims = arrays.dims if arrays.dims is not None and len(arrays.dims) > 1 else None
        return arrays.values.reshape(n, arrays.width or 0), arrays.valid, dims
    lengths = arrays.lengths()
    rows = np.flatnonzero(arrays.valid)
    width = int(lengths[rows[0]])
    other = rows[lengths[rows] != width]
    if len(other):  # same number of values in other dimensions is fine (flattened); other counts are not
        raise ShapeMismatch(ragged_message(first_pos + int(other[0]), width, int(lengths[other[0]])))
    matrix = np.zeros((n, width), dtype=arrays.values.dtype)
    matrix[rows] = arrays.values.reshape(len(rows), width)
    return matrix, arrays.valid, None


def array_send_ragged(blobs: Sequence[bytes | None], first_pos: int) -> tuple[Ragged, np.ndarray]:
    """Variable-length rows of array_send() bytes of one-dimensional numeric arrays (token
    lists), in the elements' own type, and a mask of rows without NULL (array or element)."""
    arrays = _arrays(blobs)
    n = len(blobs)
    shapes = arrays.shapes if arrays.offsets is not None else [arrays.dims if ok else None for ok in arrays.valid]
    for i, shape in enumerate(shapes):
        if shape is not None and len(shape) > 1:
            raise ShapeMismatch(f"ragged => true takes one-dimensional lists; row {first_pos + i} is a "
                                f"{len(shape)}-dimensional array — select a flat list (e.g. token ids as int[])")
    if arrays.elem is None:
        return Ragged(np.zeros(0, np.int32), np.zeros(n + 1, np.int64)), arrays.valid
    if arrays.offsets is not None:
        return Ragged(arrays.values, arrays.offsets), arrays.valid
    w = arrays.width or 0
    values = arrays.values.reshape(n, w)[arrays.valid].reshape(-1)
    return Ragged.from_lengths(values, np.where(arrays.valid, w, 0)), arrays.valid


def decode_bytes(blobs: Sequence[bytes | None]) -> tuple[Ragged, np.ndarray]:
    """bytea / BLOB rows as uint8 values (one per byte) and the not-NULL mask."""
    valid = np.array([b is not None for b in blobs], dtype=bool)
    present = [bytes(b) if b is not None else b"" for b in blobs]
    lengths = np.array([len(b) for b in present], dtype=np.int64)
    return Ragged.from_lengths(np.frombuffer(b"".join(present), dtype=np.uint8), lengths), valid


def dense_rows(rows: Ragged, valid: np.ndarray, first_pos: int) -> np.ndarray:
    """(rows x width) matrix of variable-length rows that must all have one length."""
    lengths = rows.lengths
    good = lengths[valid]
    if len(good) and (good != good[0]).any():
        bad = int(np.flatnonzero(valid & (lengths != good[0]))[0])
        raise ShapeMismatch(ragged_message(first_pos + bad, int(good[0]), int(lengths[bad])))
    width = int(good[0]) if len(good) else 0
    matrix = np.zeros((len(rows), width), dtype=rows.values.dtype)
    if width and valid.any():
        matrix[valid] = rows.take(np.flatnonzero(valid)).values.reshape(-1, width)
    return matrix


# -- splits --------------------------------------------------------------------------------------


def split_counts(n: int, train_fraction: float, validation_fraction: float) -> tuple[int, int, int]:
    n_train = int(round(n * train_fraction))
    n_validation = min(int(round(n * validation_fraction)), n - n_train)
    return n_train, n_validation, n - n_train - n_validation


def assign_splits(n: int, train_fraction: float, validation_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """For each source position: its row id and its split code (0 train, 1 validation, 2 test).

    A seeded permutation (numpy's PCG64, so the same on every machine and backend) picks which
    positions go to which split; row ids then number the splits one after another, each in source
    order, so that every split is one contiguous row-id range.
    """
    counts = split_counts(n, train_fraction, validation_fraction)
    order = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    codes = np.empty(n, dtype=np.int8)
    codes[order[:counts[0]]] = 0
    codes[order[counts[0]:counts[0] + counts[1]]] = 1
    codes[order[counts[0] + counts[1]:]] = 2
    rank = np.lexsort((np.arange(n), codes))  # by split, then by position
    row_ids = np.empty(n, dtype=np.int64)
    row_ids[rank] = np.arange(n, dtype=np.int64)
    return row_ids, codes, counts


# -- the catalog -----------------------------------------------------------------------------------


class SQLRunner(Protocol):
    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset as the catalog (dbdl.datasets) records it."""

    name: str
    version: int
    table: str  # schema-qualified, e.g. dbdl_data.ds_digits_v2
    shape: tuple[int, ...]
    dtype: str
    label_dtype: str
    n_rows: int
    n_train: int
    n_validation: int
    n_test: int
    train_fraction: float
    validation_fraction: float
    seed: int
    features: tuple[str, ...]
    label_column: str
    source_query: str
    uid: str
    created_at: Any = None
    #: the table's layout: 0 — one row per sample (row_id, features, label, split; every dataset on
    #: DuckDB, ragged ones and those exported before format 2 on PostgreSQL); R > 0 — blocked (format 2):
    #: row ``b`` of the table holds samples b*R .. b*R+R-1 as one value (see :func:`stored_block_rows`)
    block_rows: int = 0

    @property
    def view(self) -> str:
        return view_name(self.table.partition(".")[0], self.name)

    @property
    def ragged(self) -> bool:
        """Rows of different lengths (token lists; ``train_export(..., ragged=True)``): shape [-1]."""
        return self.shape == (-1,)

    @property
    def row_bytes(self) -> int:
        """Bytes of one row's features (a ragged dataset's: an estimate, for sizing blocks)."""
        values = RAGGED_ROW_VALUES if self.ragged else math.prod(self.shape)
        return values * np.dtype(self.dtype).itemsize

    @property
    def counts(self) -> dict[str, int]:
        return {"train": self.n_train, "validation": self.n_validation, "test": self.n_test}

    def split_range(self, split: str | None) -> tuple[int, int]:
        """[first, end) row ids of a split (None or "all": every row)."""
        if split in (None, "all"):
            return 0, self.n_rows
        if split not in SPLITS:
            raise InvalidName(f"split must be one of {', '.join(SPLITS)} (or 'all'), got {split!r}")
        start = {"train": 0, "validation": self.n_train, "test": self.n_train + self.n_validation}[split]
        return start, start + self.counts[split]


COLUMNS = ("name, version, table_name, shape, dtype, label_dtype, n_rows, n_train, n_validation, n_test, "
           "train_fraction, validation_fraction, seed, features, label_column, source_query, uid, created_at, "
           "block_rows")


#: where dataset tables may live: DuckDB's dbdl, PostgreSQL's dbdl_data (dbdl_admin's schema); a
#: Spark connection's data database (``data_database=``, a plain name) is passed to :func:`record`
DATA_SCHEMAS = ("dbdl", "dbdl_data")
_TABLE_RE = re.compile(r"[a-z_][a-z0-9_]{0,127}\.ds_[a-z_][a-z0-9_]{0,47}_v[1-9][0-9]{0,8}")


def table_name(schema: str, name: str, version: int) -> str:
    """The catalog's (unquoted) name of a dataset version's table; SQL takes it through
    sqltext.quote_qualified."""
    return f"{schema}.ds_{name}_v{int(version)}"


def view_name(schema: str, name: str) -> str:
    """The catalog's (unquoted) name of the view that points at a dataset's current table."""
    return f"{schema}.ds_{name}"


def _info(row: tuple) -> DatasetInfo:
    (name, version, table, shape, dtype, label_dtype, n_rows, n_train, n_val, n_test, trf, vf, seed, features,
     label, query, uid, created, block_rows) = row
    # readers paste the table name into their SQL: a catalog row naming anything but a dataset
    # table of its own dataset is refused rather than run
    if not _TABLE_RE.fullmatch(table or "") or table.partition(".")[2] != f"ds_{name}_v{int(version)}":
        raise DatasetNotFound(f"the catalog row of dataset {name!r} names table {table!r}, which is not the dataset's "
                              f"table; export the dataset again (CALL dbdl.train_export(...))")
    return DatasetInfo(name, int(version), table, tuple(json.loads(shape)), dtype, label_dtype, int(n_rows),
                       int(n_train), int(n_val), int(n_test), float(trf), float(vf), int(seed),
                       tuple(json.loads(features)), label, query, uid, created, int(block_rows or 0))


def get(db: SQLRunner, name: str) -> DatasetInfo:
    name = check_dataset_name(name)
    rows = db.fetchall(f"SELECT {COLUMNS} FROM dbdl.datasets WHERE name = ?", (name,))
    if not rows:
        known = ", ".join(repr(r[0]) for r in db.fetchall("SELECT name FROM dbdl.datasets ORDER BY name")) or "none"
        raise DatasetNotFound(f"no dataset named {name!r} (datasets: {known}); create it with "
                              f"CALL train_export('SELECT ...', '{name}') or db.train_export(...)")
    return _info(rows[0])


def list_all(db: SQLRunner) -> list[DatasetInfo]:
    return [_info(r) for r in db.fetchall(f"SELECT {COLUMNS} FROM dbdl.datasets ORDER BY name")]


def drop(db: SQLRunner, name: str, *, ddl=None, forget_row=None) -> DatasetInfo:
    """Remove a dataset: its view, its table and its catalog row (the caller owns the transaction).
    ``forget_row(name)`` deletes the catalog row where the caller may not write the catalog itself
    (PostgreSQL: dbdl.forget_dataset)."""
    info = get(db, name)
    run = ddl or (lambda sql: db.execute(sql, ()))
    run(f"DROP VIEW IF EXISTS {quote_qualified(info.view)}")
    run(f"DROP TABLE IF EXISTS {quote_qualified(info.table)}")
    (forget_row or (lambda n: forget(db, n)))(info.name)
    return info


def forget(db: SQLRunner, name: str) -> None:
    """Delete a dataset's catalog row (its table is the caller's to drop)."""
    get(db, name)  # an unknown dataset is an error, not a silent no-op
    db.execute("DELETE FROM dbdl.datasets WHERE name = ?", (check_dataset_name(name),))


_ROW_FIELDS = ("name", "version", "table_name", "shape", "dtype", "label_dtype", "n_rows", "n_train", "n_validation",
               "n_test", "train_fraction", "validation_fraction", "seed", "features", "label_column", "source_query",
               "uid", "block_rows")


def record(db: SQLRunner, row: dict, table_rows=None, schemas: Sequence[str] = DATA_SCHEMAS) -> None:
    """Write the catalog row of a finished export (replacing the dataset's previous one), after
    checking it: the next version, its own table (in one of ``schemas``), consistent counts.
    ``table_rows(table)`` gives the table's row count (None when there is no such plain table)
    where the row comes from someone the catalog does not trust (PostgreSQL: dbdl.record_dataset)."""
    if not isinstance(row, dict) or set(row) != set(_ROW_FIELDS):
        raise InvalidName(f"a dataset catalog row has exactly the fields {', '.join(_ROW_FIELDS)}")
    name = check_dataset_name(row["name"])
    texts = ("table_name", "shape", "dtype", "label_dtype", "features", "label_column", "source_query", "uid")
    if any(not isinstance(row[k], str) for k in texts) or any(
            isinstance(row[k], bool) or not isinstance(row[k], (int, float)) for k in ("train_fraction",
                                                                                      "validation_fraction")):
        raise InvalidName(f"dataset {name!r}: {', '.join(texts)} are text and the fractions numbers")
    previous = db.fetchall("SELECT version FROM dbdl.datasets WHERE name = ?", (name,))
    version = (int(previous[0][0]) + 1) if previous else 1
    ints = ("version", "n_rows", "n_train", "n_validation", "n_test", "seed", "block_rows")
    if any(isinstance(row[k], bool) or not isinstance(row[k], int) for k in ints):
        raise InvalidName(f"dataset {name!r}: {', '.join(ints)} must be whole numbers")
    if row["version"] != version:
        raise InvalidName(f"dataset {name!r} is at version {version - 1}; its next export is version {version}")
    schema = row["table_name"].partition(".")[0] if isinstance(row["table_name"], str) else ""
    if schema not in schemas or row["table_name"] != table_name(schema, name, version):
        raise InvalidName(f"dataset {name!r} version {version} lives in table {table_name(schemas[-1], name, version)}")
    counts = (row["n_train"], row["n_validation"], row["n_test"])
    if min(counts) < 0 or sum(counts) != row["n_rows"] or row["n_rows"] < 1:
        raise ShapeMismatch(f"dataset {name!r}: the split counts {counts} do not add up to its {row['n_rows']} rows")
    shape = json.loads(row["shape"])
    if (not isinstance(shape, list) or not shape or
            not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)) and shape != [-1]:
        raise ShapeMismatch(f"dataset {name!r}: shape must be a JSON list of sizes above 0 (or [-1]: variable-length "
                            f"rows), got {row['shape']!r}")
    if row["dtype"] not in DTYPES or row["label_dtype"] not in ("int64", "float32"):
        raise DTypeMismatch(f"dataset {name!r}: dtype must be one of {', '.join(DTYPES)} and the label's int64 or "
                            "float32")
    block_rows = row["block_rows"]
    if block_rows < 0 or block_rows > MAX_BLOCK_ROWS or (block_rows and shape == [-1]):
        raise ShapeMismatch(f"dataset {name!r}: block_rows is 0 (one row per sample) or the samples per stored block, "
                            f"1 to {MAX_BLOCK_ROWS}, for rows of one shape; got {block_rows}")
    features = json.loads(row["features"])
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise InvalidName(f"dataset {name!r}: features must be a JSON list of column names")
    if table_rows is not None:
        found = table_rows(row["table_name"])
        # a blocked table holds one row per block of block_rows samples
        expect = -(-row["n_rows"] // block_rows) if block_rows else row["n_rows"]
        if found != expect:
            raise ShapeMismatch(f"dataset {name!r}: table {row['table_name']} "
                                + ("does not exist as a table" if found is None else f"holds {found} rows, not "
                                   f"{expect}") + "; export the dataset with CALL dbdl.train_export(...)")
    db.execute("DELETE FROM dbdl.datasets WHERE name = ?", (name,))
    db.execute(f"INSERT INTO dbdl.datasets ({', '.join(_ROW_FIELDS)}) VALUES ({', '.join('?' * len(_ROW_FIELDS))})",
               tuple(row[k] if k != "name" else name for k in _ROW_FIELDS))


# -- the export ------------------------------------------------------------------------------------


class Sink(Protocol):
    """What export() needs from a backend (the DuckDB client, PostgreSQL's PL/Python)."""

    #: the schema of the dataset tables and views
    schema: str

    def dataset(self, name: str) -> DatasetInfo | None: ...

    def record(self, row: dict) -> None: ...

    def describe(self, query: str) -> list[tuple[str, str, str]]: ...

    def batches(self, query: str, features: list[str], label: str, kinds: dict[str, str], ragged: bool
                ) -> Iterator[tuple["np.ndarray | Ragged", np.ndarray, np.ndarray, np.ndarray]]:
        """(features, valid, labels, labels_valid) per batch of rows: a (rows x width) matrix, or a
        Ragged when ``ragged``; the sink's ``dims`` then holds a nested array's dimensions."""

    def stage(self, first_pos: int, features: "np.ndarray | Ragged", labels: np.ndarray, label_dtype: str) -> None: ...

    def finish(self, table: str, row_ids: np.ndarray, codes: np.ndarray, width: int | None, dtype: str,
               label_dtype: str, block_rows: int = 0) -> None:
        """Write the table: one row per sample, or with ``block_rows`` > 0 (a sink whose
        ``blocked`` is true) one row per block of that many samples."""

    def blocked_view(self, table: str, block_rows: int, row_bytes: int, counts: tuple[int, int, int]) -> str:
        """The SELECT of a blocked table's view: one row per sample (row_id, features, label, split)."""

    def ddl(self, sql: str) -> None: ...

    def share(self, relation: str) -> None: ...

    # ``table`` (finish) and ``relation`` (share) are names as the catalog writes them
    # (schema.relation, unquoted): a sink splices them into SQL through sqltext.quote_qualified.


def export(sink: Sink, spec: ExportSpec, progress=None) -> DatasetInfo:
    """Materialize ``spec.query`` as dataset ``spec.name``; the caller wraps this in a transaction.

    ``progress(rows_done)`` is called after each batch when given."""
    columns = sink.describe(spec.query)
    names, label_kind = choose_columns(columns, spec)
    kinds = {c[0]: c[1] for c in columns}
    label_dtype = "int64" if label_kind == "int" else "float32"
    width: int | None = None
    dtype = spec.dtype
    n = 0
    for features, valid, labels, labels_valid in sink.batches(spec.query, names, spec.label, kinds, spec.ragged):
        if len(valid) == 0:
            continue
        if dtype is None:
            dtype = default_dtype(features.dtype, spec.ragged)
        if spec.ragged:
            check_ragged_batch(features, valid, labels, labels_valid, n, spec)
            staged = Ragged(_convert(features.values, dtype, n), features.offsets)
            width = 1
        else:
            width = check_batch(features, valid, labels, labels_valid, n, spec, width)
            staged = _convert(features, dtype, n)
        sink.stage(n, staged, labels.astype(label_dtype), label_dtype)
        n += len(valid)
        if progress is not None:
            progress(n)
    if n == 0 or width is None or dtype is None:
        raise QueryError("the source query returned no rows; a dataset needs at least one")
    if width == 0:
        raise ShapeMismatch("the feature arrays are empty; a dataset row needs at least one feature")
    dims = getattr(sink, "dims", None)
    if spec.ragged:
        shape: tuple[int, ...] = (-1,)
    elif spec.shape:
        shape = spec.shape
    elif dims and math.prod(dims) == width:
        shape = tuple(dims)  # a nested array column keeps its dimensions
    else:
        shape = (width,)
    row_ids, codes, counts = assign_splits(n, spec.train_fraction, spec.validation_fraction, spec.seed)
    old = sink.dataset(spec.name)
    version = (old.version + 1) if old else 1
    schema = sink.schema
    table = table_name(schema, spec.name, version)
    # format 2: many samples per stored value where the backend reads those faster (PostgreSQL);
    # rows of different lengths keep one row per sample
    row_bytes = width * np.dtype(dtype).itemsize
    block_rows = stored_block_rows(row_bytes) if getattr(sink, "blocked", False) and not spec.ragged else 0
    if block_rows:
        sink.finish(table, row_ids, codes, width, dtype, label_dtype, block_rows)
    else:
        sink.finish(table, row_ids, codes, None if spec.ragged else width, dtype, label_dtype)
    view = view_name(schema, spec.name)
    select = (sink.blocked_view(table, block_rows, row_bytes, counts) if block_rows else
              f"SELECT row_id, features, label, split FROM {quote_qualified(table)}")
    sink.ddl(f"CREATE OR REPLACE VIEW {quote_qualified(view)} AS {select}")
    sink.share(view)
    if old is not None and old.table != table:
        sink.ddl(f"DROP TABLE IF EXISTS {quote_qualified(old.table)}")
    uid = hashlib.sha256(f"{spec.name}:{version}:{time.time_ns()}:{os.getpid()}:{os.urandom(8).hex()}".encode()
                         ).hexdigest()[:16]
    values = (spec.name, version, table, json.dumps(list(shape)), dtype, label_dtype, n, *counts,
              spec.train_fraction, spec.validation_fraction, spec.seed, json.dumps(names), spec.label, spec.query, uid,
              block_rows)
    sink.record(dict(zip(_ROW_FIELDS, values)))
    return sink.dataset(spec.name)


def check_ragged_batch(rows: Ragged, valid: np.ndarray, labels: np.ndarray, labels_valid: np.ndarray,
                       first_pos: int, spec: ExportSpec) -> None:
    """Refuse NULL lists, NULL elements, NULL labels and NaN/infinite values of ragged rows."""
    if not valid.all():
        row = first_pos + int(np.flatnonzero(~valid)[0])
        raise DTypeMismatch(f"row {row} of the query has a NULL list (or a NULL element in it); filter such rows "
                            "out (WHERE ... IS NOT NULL) or replace them (an empty list is allowed) before exporting")
    if not labels_valid.all():
        row = first_pos + int(np.flatnonzero(~labels_valid)[0])
        raise DTypeMismatch(f"row {row} of the query has a NULL label in {spec.label!r}; filter such rows out "
                            f"(WHERE {spec.label} IS NOT NULL) before exporting")
    if rows.values.dtype.kind == "f" and not np.isfinite(rows.values).all():
        bad = int(np.searchsorted(rows.offsets, int(np.flatnonzero(~np.isfinite(rows.values))[0]), side="right")) - 1
        raise DTypeMismatch(f"row {first_pos + bad} of the query has NaN or infinite values; clean them before "
                            "exporting")


def _convert(matrix: np.ndarray, dtype: str, first_pos: int) -> np.ndarray:
    target = np.dtype(dtype)
    if target.kind in "iu" and matrix.dtype.kind == "f":
        if not np.array_equal(matrix, np.round(matrix)):
            raise DTypeMismatch(f"dtype {dtype} cannot hold the fractional features of the query (from row "
                                f"{first_pos} on); export with dtype='float32'")
    if target.kind in "iu":
        info = np.iinfo(target)
        if matrix.size and (matrix.min() < info.min or matrix.max() > info.max):
            raise DTypeMismatch(f"features outside {dtype}'s range [{info.min}, {info.max}] (from row {first_pos} "
                                "on); choose a wider dtype")
    return np.ascontiguousarray(matrix, dtype=target.newbyteorder("<"))
