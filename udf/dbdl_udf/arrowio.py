"""The Arrow codec of the in-database functions (DuckDB's Arrow UDFs, Spark's Arrow UDFs and
mapInArrow on the executors): Arrow arrays of a UDF chunk or a record batch → the runtime's ``Column``s and
float32 matrices, and the predictions back into Arrow arrays (NULL where a row was not scored)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .kinds import KINDS
from .datasets import Ragged, ragged_message
from .runtime import Column, shape_outputs

from .errors import DTypeMismatch, ShapeMismatch


_ARROW_TYPES = {"float32": pa.float32(), "int64": pa.int64(), "str": pa.string()}
#: kind -> the Arrow type of its results (a vector kind: a list of its element type)
OUT_TYPES = {k.name: pa.list_(_ARROW_TYPES[k.dtype]) if k.vector else _ARROW_TYPES[k.dtype] for k in KINDS.values()}


def combined(arr: Any) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        return arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    return arr


def feature_matrix(feats: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(rows x width) float32 features and a mask of the rows that can be scored."""
    n = len(feats)
    valid = np.ones(n, dtype=bool) if feats.null_count == 0 else feats.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(feats.type):
        width = feats.type.list_size
        values = feats.values.slice(feats.offset * width, n * width)
    else:
        if not valid.any():
            return np.zeros((n, 0), dtype=np.float32), valid
        lengths = pc.list_value_length(feats).to_numpy(zero_copy_only=False)
        widths = np.unique(lengths[valid])
        if len(widths) > 1:
            raise ShapeMismatch(
                f"feature vectors in one query must all have the same length; found lengths {widths.tolist()[:5]} — "
                "filter or pad the rows so that every vector has the model's width"
            )
        width = int(widths[0])
        if not valid.all():
            feats = feats.filter(pa.array(valid))
        values = pc.list_flatten(feats)
        if not valid.all():
            flat = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            matrix = np.zeros((n, width), dtype=np.float32)
            matrix[valid] = flat.reshape(-1, width)
            if values.null_count:
                holes = np.zeros((n, width), dtype=bool)
                holes[valid] = ~values.is_valid().to_numpy(zero_copy_only=False).reshape(-1, width)
                valid &= ~holes.any(axis=1)
            return matrix, valid
    if values.null_count:
        valid &= values.is_valid().to_numpy(zero_copy_only=False).reshape(n, width).all(axis=1)
    matrix = values.to_numpy(zero_copy_only=False)
    if matrix.dtype != np.float32:
        matrix = matrix.astype(np.float32)
    return matrix.reshape(n, width), valid


def dense_matrix(feats: Any) -> np.ndarray | None:
    """A chunk of FLOAT[n] features with no NULL row or value as a (rows x n) float32 view of the
    Arrow buffer DuckDB filled (no copy), or None where ``feature_matrix`` must look closer (NULLs,
    another type, several chunks, no rows)."""
    if type(feats) is pa.ChunkedArray:
        if feats.num_chunks != 1:
            return None
        feats = feats.chunk(0)
    n = len(feats)
    if not n or feats.null_count or feats.type.id != _FIXED_SIZE_LIST:
        return None
    values = feats.values
    if values.null_count or values.type.id != _FLOAT:
        return None
    width = feats.type.list_size
    start = values.offset + feats.offset * width
    return np.frombuffer(values.buffers()[1], np.float32, n * width, start * 4).reshape(n, width)


_FIXED_SIZE_LIST = pa.list_(pa.float32(), 1).id
_FLOAT = pa.float32().id


def dense_result(kind: str, values: np.ndarray, out_type: pa.DataType) -> pa.Array:
    """A chunk's (rows x k) outputs, every row scored, as the kind's Arrow array built on the
    output's own buffer: FLOAT[k] (``out_type``) for predict_array, the arg-max (BIGINT) for
    predict_class, the one value (FLOAT) for predict."""
    n = len(values)
    if kind == "class":
        return pa.Array.from_buffers(_INT64, n, [None, pa.py_buffer(np.argmax(values, axis=1).astype(np.int64))])
    values = np.ascontiguousarray(values, np.float32)
    child = pa.Array.from_buffers(_FLOAT32, values.size, [None, pa.py_buffer(values)])
    if kind == "scalar":
        return child
    return pa.FixedSizeListArray.from_arrays(child, type=out_type)


_INT64, _FLOAT32 = pa.int64(), pa.float32()


def scatter(n: int, valid: np.ndarray, values: np.ndarray) -> np.ndarray:
    if valid.all():
        return values
    full = np.full(n, "", dtype=object) if values.dtype == object else np.zeros(n, dtype=values.dtype)
    full[valid] = values
    return full


def fixed_size(n: int, valid: np.ndarray, values: np.ndarray) -> pa.Array:
    """(rows x k) outputs as a FixedSizeList (DuckDB FLOAT[k]); rows not valid are NULL."""
    k = values.shape[1]
    if valid.all():
        return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), k)
    full = np.zeros((n, k), dtype=np.float32)
    full[valid] = values
    return pa.FixedSizeListArray.from_arrays(pa.array(full.ravel()), k, mask=pa.array(~valid))


def assemble(kind: str, n: int, results: list[tuple[np.ndarray, np.ndarray]], out_type: pa.DataType) -> pa.Array:
    covered = np.zeros(n, dtype=bool)
    for rows, _ in results:
        covered |= rows
    if kind == "text":
        full = np.full(n, None, dtype=object)
        for rows, values in results:
            full[rows] = values
        return pa.array(full.tolist(), type=out_type)
    if kind != "array":
        full = np.zeros(n, dtype=np.int64 if kind == "class" else np.float32)
        for rows, values in results:
            full[rows] = values
        return pa.array(full, type=out_type, mask=~covered if not covered.all() else None)
    if len(results) == 1 and results[0][0].all():
        values = results[0][1]
        k = values.shape[1]
        offsets = np.arange(0, (n + 1) * k, k, dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.ravel()))
    widths = {values.shape[1] for _, values in results}
    k = widths.pop() if len(widths) == 1 else None
    if k is None:
        rows_out: list[Any] = [None] * n
        for rows, values in results:
            for i, v in zip(np.flatnonzero(rows), values):
                rows_out[i] = v.tolist()
        return pa.array(rows_out, type=out_type)
    full = np.zeros((n, k), dtype=np.float32)
    for rows, values in results:
        full[rows] = values
    counts = np.where(covered, k, 0)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(full[covered].ravel()), mask=pa.array(~covered))


def is_listlike(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def row_of(offsets: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The row each element index belongs to, for rows spanning offsets[i]..offsets[i+1]."""
    return np.searchsorted(offsets, index, side="right") - 1


def arrow_column(arr: Any, what: str = "predict's features") -> Column:
    """One SQL argument of a batch, as DuckDB hands it to a UDF, decoded into a Column.

    Numbers (one per row), lists and arrays of numbers (FLOAT[n], BIGINT[], UTINYINT[]),
    nested ones (FLOAT[3][32][32], DOUBLE[][]) and BLOB (each byte a uint8 value). A NULL row, a
    NULL element or a NULL inner list makes its row not valid (its prediction is NULL)."""
    arr = combined(arr)
    n = len(arr)
    valid = np.ones(n, dtype=bool) if arr.null_count == 0 else arr.is_valid().to_numpy(zero_copy_only=False)
    t = arr.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        bufs = arr.buffers()
        off_type = np.int64 if pa.types.is_large_binary(t) else np.int32
        offsets = np.frombuffer(bufs[1], dtype=off_type)[arr.offset:arr.offset + n + 1].astype(np.int64)
        data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
        values = data[offsets[0]:offsets[-1]]
        return Column(values, valid, offsets=offsets - offsets[0])
    if not is_listlike(t):
        check_leaf(t, what)
        values = (pc.fill_null(arr, False if pa.types.is_boolean(t) else 0) if arr.null_count else arr)
        return Column(values.to_numpy(zero_copy_only=False), valid, width=1, shape=())
    offsets: np.ndarray | None = None  # row offsets into the current level's elements (None: 1:1)
    width: int | None = None  # while every level so far is fixed-size: values per row
    shape: list[int] | None = []
    cur = arr
    top = True
    while is_listlike(cur.type):
        m = len(cur)
        if not top and cur.null_count:  # a NULL inner list: its row gives NULL
            holes = np.flatnonzero(~cur.is_valid().to_numpy(zero_copy_only=False))
            valid[holes // (width or 1) if offsets is None else row_of(offsets, holes)] = False
        if pa.types.is_fixed_size_list(cur.type):
            k = cur.type.list_size
            child = cur.values.slice(cur.offset * k, m * k)
            if offsets is None:
                width = k if width is None else width * k
            else:
                offsets = offsets * k
            if shape is not None:
                shape.append(k)
        else:
            level = cur.offsets.to_numpy(zero_copy_only=False).astype(np.int64)  # m + 1, into cur.values
            child = cur.values
            lengths = np.diff(level)
            if offsets is None:
                if width is not None:  # a variable list inside fixed-size levels: map rows through them
                    offsets = level[np.arange(n + 1, dtype=np.int64) * width]
                else:
                    offsets = level
                rows_lengths = np.diff(offsets)[valid]
                if shape is not None:
                    if len(rows_lengths) and (rows_lengths == rows_lengths[0]).all():
                        shape.append(int(rows_lengths[0]) if width is None else int(lengths[0]) if len(lengths) else 0)
                    else:
                        shape = None
                width = None
            else:
                inner = lengths
                owners = row_of(offsets, np.arange(m)) if m else np.zeros(0, np.int64)
                live = inner[valid[owners]] if m else inner
                if len(live) and not (live == live[0]).all():
                    raise ShapeMismatch(
                        f"{what} hold nested lists of different inner lengths ({sorted(set(live.tolist()))[:5]}); "
                        "a tensor needs every inner list of one length — pass rows of one nested shape")
                if shape is not None:
                    shape.append(int(live[0]) if len(live) else 0)
                offsets = level[offsets]
        cur = child
        top = False
    check_leaf(cur.type, what)
    if offsets is None:
        leaf = cur
        if leaf.null_count:
            holes = np.flatnonzero(~leaf.is_valid().to_numpy(zero_copy_only=False))
            valid[holes // max(width or 1, 1)] = False
    else:
        leaf = cur.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        if leaf.null_count:
            holes = np.flatnonzero(~leaf.is_valid().to_numpy(zero_copy_only=False))
            valid[row_of(offsets - offsets[0], holes)] = False
        offsets = offsets - offsets[0]
    if leaf.null_count:
        leaf = pc.fill_null(leaf, False if pa.types.is_boolean(leaf.type) else 0)
    values = leaf.to_numpy(zero_copy_only=False)
    nested = tuple(shape) if shape is not None and len(shape) > 1 else None
    if offsets is None:
        return Column(values, valid, width=width or 0, shape=nested)
    return Column(values, valid, offsets=offsets, shape=nested)


def check_leaf(t: pa.DataType, what: str) -> None:
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
        raise DTypeMismatch(f"{what} must be numbers, lists or arrays of numbers, or BLOB bytes; got values of type "
                            f"{t} — cast the column, e.g. CAST(col AS FLOAT[])")


def as_text(values: np.ndarray) -> np.ndarray:
    """predict_text of any one-value output: text as it is, numbers as text (whole ones without '.0')."""
    if values.dtype == object:
        return values
    return np.array([str(int(v)) if float(v).is_integer() else repr(float(v)) for v in values.tolist()], dtype=object)


def udf_result(kind: str, n: int, valid: np.ndarray, y: np.ndarray, fixed: bool, out_type: pa.DataType, ref: str,
               output_name: str, signature: Any) -> pa.Array:
    """A model UDF's answer for a chunk of ``n`` rows: the scored rows' (``valid``) outputs ``y``
    shaped for the kind (text for class names), NULL for the others."""
    y = shape_outputs(y, "scalar" if kind == "text" else kind, ref, output_name, signature)
    if kind == "text":
        y = as_text(y)
    if fixed:
        return fixed_size(n, valid, y)
    return assemble(kind, n, [(valid, y)], out_type)


# -- Arrow columns of a dataset export as numpy (DuckDB's and Spark's sinks) ---------------------


def column_numbers(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A numeric Arrow column as numpy, and its not-NULL mask."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_boolean(column.type):
        column = column.cast(pa.int8())
    elif pa.types.is_decimal(column.type):
        column = column.cast(pa.float64())
    valid = column.is_valid().to_numpy(zero_copy_only=False) if column.null_count else np.ones(len(column), bool)
    return column.fill_null(0).to_numpy(zero_copy_only=False), valid


def is_list_type(type_: pa.DataType) -> bool:
    return pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_)


def array_matrix(column: pa.Array | pa.ChunkedArray, first_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows x width) values of an array column (nested arrays flattened) and the mask of rows with
    neither a NULL array nor a NULL element; rows of another length are refused."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    valid = column.is_valid().to_numpy(zero_copy_only=False) if column.null_count else np.ones(n, bool)
    per_row = np.ones(n, dtype=np.int64)
    values = column
    while is_list_type(values.type):
        lengths = pc.list_value_length(values).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(per_row)])
        per_row = np.add.reduceat(np.append(lengths, 0), starts[:-1])
        per_row[starts[:-1] == starts[1:]] = 0
        values = pc.list_flatten(values)
    counted = per_row[valid]
    widths = np.unique(counted)
    if len(widths) > 1:
        first = int(counted[0])
        bad = int(np.flatnonzero(valid & (per_row != first))[0])
        raise ShapeMismatch(ragged_message(first_pos + bad, first, int(per_row[bad])))
    width = int(widths[0]) if len(widths) else 0
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or
            pa.types.is_decimal(values.type) or pa.types.is_boolean(values.type)):
        raise DTypeMismatch(f"features must be arrays of numbers; got elements of type {values.type}")
    flat, flat_valid = column_numbers(values)
    matrix = np.zeros((n, width), dtype=flat.dtype)
    if width:
        if not flat_valid.all():
            row_of = np.repeat(np.arange(n), per_row)
            valid[np.unique(row_of[~flat_valid])] = False
        keep = per_row == width
        matrix[keep] = flat.reshape(-1, width) if keep.all() else flat[np.repeat(keep, per_row)].reshape(-1, width)
    return matrix, valid


def binary_rows(column: pa.Array | pa.ChunkedArray) -> tuple[Ragged, np.ndarray]:
    """A BLOB / BINARY column as uint8 values (one per byte) per row, and its not-NULL mask."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    column = column.cast(pa.large_binary())
    n = len(column)
    valid = column.is_valid().to_numpy(zero_copy_only=False) if column.null_count else np.ones(n, bool)
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int64)[column.offset:column.offset + n + 1]
    data = column.buffers()[2]
    values = np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]] if data is not None else np.zeros(0, np.uint8)
    return Ragged(values, offsets - offsets[0]), valid


def list_ragged(column: pa.Array | pa.ChunkedArray, first_pos: int, flat_type: str = "INTEGER[]"
                ) -> tuple[Ragged, np.ndarray]:
    """A one-dimensional array column (token lists of any lengths) as Ragged rows, and the mask of
    rows with neither a NULL array nor a NULL element."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if is_list_type(column.type.value_type):
        raise ShapeMismatch(f"ragged => true takes one-dimensional lists; the feature column is {column.type} "
                            f"(nested) — select a flat array such as {flat_type} of token ids")
    n = len(column)
    valid = column.is_valid().to_numpy(zero_copy_only=False) if column.null_count else np.ones(n, bool)
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values, values_valid = column_numbers(pc.list_flatten(column))
    rows = Ragged.from_lengths(values, lengths)
    if not values_valid.all():
        row_of = np.repeat(np.arange(n), lengths)
        valid[np.unique(row_of[~values_valid])] = False
    return rows, valid
