"""predict_into in blocks: the C helper's side of the work (docs/postgres.md, "The C helper").

With the C helper installed (native/postgres/dbdl_native.c, created by the installer as
``dbdl.predict_into_table`` and ``dbdl.predict_rows``), CALL dbdl.predict_into runs one statement::

    SELECT dbdl.predict_into_table(model, kind, query, width, batch_rows, target)

which writes the rows into the target itself as COPY does (table_multi_insert) when the target is
a plain table nothing would run on (no trigger, index, policy, constraint: what predict_into
creates), else, having run nothing, returns NULL, and predict_into runs::

    INSERT INTO target SELECT r.k, r.p
    FROM dbdl.predict_rows(model, kind, query, width, batch_rows) AS r(k <key type>, p <kind's type>)

The C functions read the caller's query through SPI, packs each block of rows' features into one
bytea of native float32 (NULL rows left out), calls ``dbdl.score_block(model, kind, rows, block)``
(PL/Python: ``read_block`` → onnxruntime → ``write_result``) and unpacks the result into (key,
prediction) rows — no Python object per row. Everything else (several inputs, integer or numeric
arrays, token lists, uint8 models, the helper absent or switched off) takes the row-batch path in
dbdl_udf.postgres.predict_into, which gives the same values.

This module holds the rules both sides share and needs numpy only: which calls fit the block path
(``fits``), the block and result formats, the SQL of the one statement.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from .errors import DTypeMismatch, Error, InvalidArgument, ShapeMismatch
from .kinds import OUTPUT_KINDS
from .runtime import Signature, feed_mode

__all__ = ["NATIVE_VERSION", "SETTING", "NATIVE_CHECK", "INTO_TABLE_SQL", "TYPES", "ORT_ROWS", "MAX_BLOCK_VALUES",
           "fits", "read_block", "write_result", "insert_sql"]

#: what dbdl.native_version() of a library this code can drive returns (dbdl_native.c says the same)
NATIVE_VERSION = 1
#: SET dbdl.native = off makes predict_into take the row-batch path even where the C helper is installed
SETTING = "dbdl.native"
#: qualified names and exact argument types: nothing on the caller's path is looked at
NATIVE_CHECK = ("SELECT pg_catalog.to_regprocedure('dbdl.predict_rows(pg_catalog.text, pg_catalog.text, "
                "pg_catalog.text, pg_catalog.int4, pg_catalog.int4)') IS NOT NULL AS installed, "
                f"pg_catalog.current_setting('{SETTING}', true) AS setting")

_BYTEA, _FLOAT4_ARRAY = 17, 1021
_HEADER = struct.Struct("=ii")
#: the numpy dtype of a kind's values in a result block
_RESULT_DTYPE = {"class": np.dtype(np.int64), "scalar": np.dtype(np.float32), "array": np.dtype(np.float32)}
_MAX_ROWS = 1 << 20
#: features in one block at most (64 MiB of float32), whatever batch_rows says
MAX_BLOCK_VALUES = 1 << 24
#: rows per onnxruntime run inside a block: an MLP's activations for 1,024 rows stay in cache (8,192
#: rows of a 256-wide layer do not, and run ~1.3x slower a row)
ORT_ROWS = 1024


def width_of(signature: Signature) -> int | None:
    """Features per row when the model is one float32 input of one fixed axis, else None."""
    if len(signature.inputs) != 1:
        return None
    spec = signature.inputs[0]
    if spec.dtype != "float32" or len(spec.shape) != 1 or not isinstance(spec.shape[0], int) or spec.shape[0] < 1:
        return None
    return int(spec.shape[0])


def fits(signature: Signature, options: dict, feature_oids: list[int]) -> int | None:
    """The features per row when a predict_into call can take the block path: one feature column
    of bytea or real[], a model of one float32 input of a fixed width fed as a column; else None."""
    if len(feature_oids) != 1 or feature_oids[0] not in (_BYTEA, _FLOAT4_ARRAY):
        return None
    width = width_of(signature)
    if width is None:
        return None
    try:
        if feed_mode(signature, 1, options) != "columns":
            return None
    except Error:
        return None  # the row-batch path raises the same error with its context
    return width


def read_block(block: Any, rows: Any, width: int, ref: str) -> np.ndarray:
    """The (rows, width) float32 matrix of a block dbdl.predict_rows packed; ShapeMismatch for a
    block of any other length."""
    if block is None or rows is None or isinstance(rows, bool) or not isinstance(rows, int):
        raise InvalidArgument("dbdl.score_block takes a model reference, a kind, a number of rows and a block of "
                              "float32 features; got NULL")
    if not 1 <= rows <= _MAX_ROWS:
        raise InvalidArgument(f"dbdl.score_block's rows must be from 1 to {_MAX_ROWS}; got {rows}")
    data = memoryview(block)
    if data.nbytes != rows * width * 4:
        raise ShapeMismatch(f"model {ref!r} takes {width} float32 features per row: a block of {rows} rows is "
                            f"{rows * width * 4} bytes, got {data.nbytes}")
    return np.frombuffer(data, dtype=np.float32).reshape(rows, width)


def check_kind(kind: Any) -> str:
    if kind not in OUTPUT_KINDS:
        raise InvalidArgument(f"predict_into's kind must be one of {', '.join(map(repr, OUTPUT_KINDS))}; got {kind!r}")
    return kind


def write_result(values: np.ndarray, kind: str) -> bytes:
    """The block dbdl.predict_rows unpacks: int32 rows, int32 values per row, then the values
    (int64 classes, float32 otherwise), native byte order."""
    dtype = _RESULT_DTYPE[kind]
    values = np.asarray(values)
    if values.dtype.kind in "OUS":
        raise DTypeMismatch("the output holds text; predict_into writes numbers")
    matrix = values.reshape(len(values), -1).astype(dtype, copy=False)
    return _HEADER.pack(matrix.shape[0], matrix.shape[1]) + np.ascontiguousarray(matrix).tobytes()


#: the block path into a plain table, written as COPY writes (NULL: the target is not one; nothing ran);
#: $1 model, $2 kind, $3 query, $4 width, $5 batch_rows, $6 the target (quoted, as INSERT INTO names it)
INTO_TABLE_SQL = ("SELECT dbdl.predict_into_table($1, $2, $3, $4, $5, "
                  "pg_catalog.to_regclass($6)::pg_catalog.oid) AS n")
TYPES = ["pg_catalog.text", "pg_catalog.text", "pg_catalog.text", "pg_catalog.int4", "pg_catalog.int4"]


def insert_sql(target_sql: str, key_type: str, out_sql: str) -> str:
    """The block path into any other target: INSERT … SELECT (its triggers, indexes, policies,
    constraints and casts apply); $1 model, $2 kind, $3 query, $4 width, $5 batch_rows."""
    return (f"INSERT INTO {target_sql} SELECT r.k, r.p FROM dbdl.predict_rows($1, $2, $3, $4, $5) "
            f"AS r(k {key_type}, p {out_sql})")
