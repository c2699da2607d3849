"""PostgreSQL's binary COPY format, built and read with numpy for whole columns at a time: tables
written by ``create_table``, and the rows DL-centric execution streams out and the predictions it
streams back."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pyarrow as pa

from dbdl_udf import pgarray

from ...errors import DTypeMismatch


HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)


_SCALAR_DTYPES = {"smallint": ">i2", "integer": ">i4", "bigint": ">i8", "real": ">f4", "double precision": ">f8",
                  "boolean": "?"}


_REAL = 700  # float4's type oid: the element type of real[]


def binary_copy(data: pa.Table) -> bytes:
    """The whole table as one binary COPY payload (NULLs supported, per field)."""
    fast = binary_copy_fixed(data)
    if fast is not None:
        return fast
    n = data.num_rows
    fields: list[tuple[np.ndarray, np.ndarray]] = []  # (per-row bytes as an object array, null mask)
    for column, field in zip(data.columns, data.schema):
        col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        fields.append(encode_column(col, field.type))
    parts = [HEADER]
    count = struct.pack(">h", len(fields))
    encoded_rows = []
    for i in range(n):
        row = [count]
        for blobs, nulls in fields:
            if nulls[i]:
                row.append(b"\xff\xff\xff\xff")
            else:
                b = blobs[i]
                row.append(struct.pack(">i", len(b)) + b)
        encoded_rows.append(b"".join(row))
    parts.extend(encoded_rows)
    parts.append(b"\xff\xff")
    return b"".join(parts)


def binary_copy_fixed(data: pa.Table) -> bytes | None:
    """Vectorized payload for tables of fixed-width columns without NULLs (numbers and float
    tensors): every row has the same layout, so the rows are one numpy structured array."""
    n = data.num_rows
    layout: list[tuple[str, Any]] = [("count", ">i2")]
    fill: list[tuple[str, np.ndarray, int | None]] = []
    for i, (column, field) in enumerate(zip(data.columns, data.schema)):
        col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if col.null_count:
            return None
        if pa.types.is_fixed_size_list(field.type) and field.type.value_type in (pa.float32(), pa.float64()):
            width = field.type.list_size
            values = col.values.slice(col.offset * width, n * width)
            if values.null_count:
                return None
            flat = values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, width)
            item = np.dtype([("len", ">i4"), ("v", ">f4")])
            layout += [(f"l{i}", ">i4"), (f"h{i}", ">i4", (5,)), (f"a{i}", item, (width,))]
            fill.append((f"t{i}", flat, width))
        elif PG_TYPES.get(field.type) in _SCALAR_DTYPES:
            dtype = _SCALAR_DTYPES[PG_TYPES[field.type]]
            layout += [(f"l{i}", ">i4"), (f"v{i}", dtype)]
            fill.append((f"s{i}", col.to_numpy(zero_copy_only=False), None))
        else:
            return None
    rows = np.zeros(n, dtype=np.dtype(layout))
    rows["count"] = data.num_columns
    for i, (kind, values, width) in enumerate(fill):
        if width is None:
            rows[f"l{i}"] = np.dtype(rows.dtype[f"v{i}"]).itemsize
            rows[f"v{i}"] = values
        else:
            rows[f"l{i}"] = 20 + 8 * width
            rows[f"h{i}"] = np.frombuffer(pgarray.header_bytes([width], _REAL), dtype=">i4")
            rows[f"a{i}"]["len"] = 4
            rows[f"a{i}"]["v"] = values
    return HEADER + rows.tobytes() + b"\xff\xff"


def fixed_float4_rows(payload: bytes, key_len: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(key field bytes, float32 features) when every row of a binary COPY is — after a key field
    of ``key_len`` bytes, if given — a 1-D real[] of one length without NULLs (without a key
    field, the array's own bytes are the key); None otherwise (the general parser takes over)."""
    start = 19 + struct.unpack_from(">i", payload, 15)[0]
    count = 1 if key_len is None else 2
    lead = 0 if key_len is None else 4 + key_len  # the key field: its length word and its bytes
    if len(payload) < start + 2 + lead + 6 or struct.unpack_from(">h", payload, start)[0] != count:
        return None
    length = struct.unpack_from(">i", payload, start + 2 + lead)[0]
    if length < 20:
        return None
    row = 2 + lead + 4 + length
    body = len(payload) - start - 2
    if body % row:
        return None
    n = body // row
    raw = np.frombuffer(payload, dtype=np.uint8, count=n * row, offset=start).reshape(n, row)
    counts = raw[:, :2].copy().view(">i2")[:, 0]
    lengths = raw[:, 2 + lead:6 + lead].copy().view(">i4")[:, 0]
    fields = raw[:, 6 + lead:]
    header = fields[:, :20].copy().view(">i4")  # ndim, has-null, element type, length, lower bound
    if not ((counts == count).all() and (lengths == length).all() and (header[:, 0] == 1).all()
            and (header[:, 1] == 0).all() and (header[:, 2] == _REAL).all()):
        return None
    if key_len is not None and not (raw[:, 2:6].copy().view(">i4")[:, 0] == key_len).all():
        return None
    width = int(header[0, 3])
    if length != 20 + 8 * width:
        return None
    values = fields[:, 20:].copy().view(np.dtype([("len", ">i4"), ("v", ">f4")]))["v"]
    keys = fields if key_len is None else raw[:, 6:6 + key_len]
    return keys, values.astype(np.float32)


def prediction_rows_fixed(keys: np.ndarray, y: np.ndarray, kind: str) -> bytes:
    """Binary COPY rows (key, prediction) for fixed-size keys (raw field bytes) and predictions."""
    n, key_len = keys.shape
    if kind == "array":
        k = y.shape[1]
        pred = [("plen", ">i4"), ("phead", ">i4", (5,)), ("items", [("len", ">i4"), ("v", ">f4")], (k,))]
    else:
        pred = [("plen", ">i4"), ("p", ">f4" if kind == "scalar" else ">i8")]
    rows = np.zeros(n, dtype=np.dtype([("count", ">i2"), ("klen", ">i4"), ("key", np.uint8, (key_len,)), *pred]))
    rows["count"], rows["klen"], rows["key"] = 2, key_len, keys
    if kind == "array":
        rows["plen"] = 20 + 8 * y.shape[1]
        rows["phead"] = np.frombuffer(pgarray.header_bytes([y.shape[1]], _REAL), dtype=">i4")
        rows["items"]["len"] = 4
        rows["items"]["v"] = y
    else:
        rows["plen"] = 4 if kind == "scalar" else 8
        rows["p"] = y
    return rows.tobytes()


def split_binary_copy(payload: bytes, fields: int = 1) -> list[tuple[bytes | None, ...]]:
    """The fields of each row of a binary COPY payload."""
    view = memoryview(payload)
    pos = 11 + 4
    pos += 4 + struct.unpack_from(">i", view, pos)[0]  # header extension area
    out: list[tuple[bytes | None, ...]] = []
    while True:
        count = struct.unpack_from(">h", view, pos)[0]
        pos += 2
        if count == -1:
            return out
        row = []
        for _ in range(count):
            length = struct.unpack_from(">i", view, pos)[0]
            pos += 4
            if length < 0:
                row.append(None)
            else:
                row.append(bytes(view[pos:pos + length]))
                pos += length
        out.append(tuple(row))



def prediction_fields(keys: list[tuple[bytes | None, ...]], valid: np.ndarray, y: np.ndarray | None, kind: str) -> bytes:
    """Binary COPY rows (key fields…, prediction), the key fields sent back exactly as they came out."""
    parts = []
    rows = iter(y if y is not None else ())
    for key, ok in zip(keys, valid):
        parts.append(struct.pack(">h", len(key) + 1))
        for field in key:
            parts.append(b"\xff\xff\xff\xff" if field is None else struct.pack(">i", len(field)) + field)
        if not ok:
            parts.append(b"\xff\xff\xff\xff")
            continue
        value = next(rows)
        if kind == "array":
            body = pgarray.encode_array(np.asarray(value, dtype=np.float32), _REAL)
        elif kind == "class":
            body = struct.pack(">q", int(value))
        elif kind == "text":
            body = str(value).encode()
        else:
            body = struct.pack(">f", float(value))
        parts.append(struct.pack(">i", len(body)) + body)
    return b"".join(parts)


REAL_ARRAY = 1021



def innermost(arrow_type: pa.DataType) -> tuple[pa.DataType, list[int]]:
    """The element type under nested lists, and the sizes of the fixed-size levels (outer first)."""
    dims = []
    while pa.types.is_fixed_size_list(arrow_type) or pa.types.is_list(arrow_type):
        if pa.types.is_fixed_size_list(arrow_type):
            dims.append(arrow_type.list_size)
        arrow_type = arrow_type.value_type
    return arrow_type, dims


def encode_column(col: pa.Array, arrow_type: pa.DataType) -> tuple[list[bytes], np.ndarray]:
    n = len(col)
    nulls = ~col.is_valid().to_numpy(zero_copy_only=False) if col.null_count else np.zeros(n, dtype=bool)
    if pa.types.is_fixed_size_list(arrow_type) or pa.types.is_list(arrow_type):
        # the table's column is real[], double precision[] or integer[] (write_arrow): the element
        # type follows, whatever the Arrow list holds (booleans become real)
        value_type = innermost(arrow_type)[0]
        elem = 701 if value_type == pa.float64() else 23 if pa.types.is_integer(value_type) else 700
        return [b"" if b is None else b for b in pgarray.encode_arrow(col, elem)], nulls
    pg_type = PG_TYPES.get(arrow_type)
    if pg_type in _SCALAR_DTYPES:
        values = col.fill_null(0).to_numpy(zero_copy_only=False).astype(_SCALAR_DTYPES[pg_type])
        size = values.dtype.itemsize
        raw = values.tobytes()  # numpy scalars are native-endian: slice the big-endian buffer instead
        return [raw[i * size:(i + 1) * size] for i in range(len(values))], nulls
    if pg_type == "text":
        return [b"" if v is None else v.encode() for v in col.to_pylist()], nulls
    if pg_type == "bytea":
        return [b"" if v is None else bytes(v) for v in col.to_pylist()], nulls
    raise DTypeMismatch(f"cannot store Arrow type {arrow_type} in PostgreSQL")


# Arrow -> PostgreSQL column types for create_table / write_arrow
PG_TYPES = {
    pa.int8(): "smallint", pa.int16(): "smallint", pa.int32(): "integer", pa.int64(): "bigint",
    pa.uint8(): "smallint", pa.uint16(): "integer", pa.uint32(): "bigint",
    pa.float32(): "real", pa.float64(): "double precision", pa.bool_(): "boolean",
    pa.string(): "text", pa.large_string(): "text", pa.binary(): "bytea", pa.large_binary(): "bytea",
}
