"""PostgreSQL's binary array format, both ways: what ``array_send()`` writes and ``array_recv``
(binary COPY, binary parameters) reads.

One array value is::

    ndim int4 | has_null int4 | element type oid int4 | (size int4, lower bound int4) * ndim
    | then per element, row-major: length int4 (-1: NULL) and that many bytes, big-endian

An empty array has ndim 0 and nothing after the element type. Decoding (``decode_arrays`` for a
batch, ``decode_array`` for one value) gives numpy values in the elements' own type (int4 stays
int32, real float32, numeric becomes float64); encoding (``encode_arrays``, ``encode_records``,
``encode_ragged``, ``encode_array``, ``encode_arrow``) gives the bytes a binary COPY field or a
binary parameter of an array type takes. Needs numpy only (pyarrow only for ``encode_arrow``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from math import prod
from typing import Any, Sequence

import numpy as np

from .errors import DTypeMismatch, ShapeMismatch

__all__ = [
    "ELEMENTS", "ARRAY_OIDS", "NUMERIC", "Element", "Header", "Arrays", "element_oid", "read_header", "width",
    "element_of", "decode_arrays", "decode_array", "float4_vector", "numeric_value", "well_formed", "type_name",
    "header_bytes", "record_dtype", "encode_records", "encode_arrays", "encode_ragged", "encode_array",
    "encode_arrow",
]


@dataclass(frozen=True)
class Element:
    """An element type dbdl reads and writes: its oid, SQL name, the big-endian numpy dtype of one
    element's bytes (None for numeric, whose elements vary in width) and its array type's oid."""

    oid: int
    name: str
    dtype: str | None
    array_oid: int


NUMERIC = 1700
#: element type oid -> Element
ELEMENTS: dict[int, Element] = {e.oid: e for e in (
    Element(700, "real", ">f4", 1021),
    Element(701, "double precision", ">f8", 1022),
    Element(21, "smallint", ">i2", 1005),
    Element(23, "integer", ">i4", 1007),
    Element(20, "bigint", ">i8", 1016),
    Element(16, "boolean", "?", 1000),
    Element(NUMERIC, "numeric", None, 1231),
)}
#: array type oid -> element type oid (real[] 1021 -> real 700, …)
ARRAY_OIDS: dict[int, int] = {e.array_oid: e.oid for e in ELEMENTS.values()}
_OTHER_NAMES = {17: "bytea", 25: "text", 1043: "varchar", 1009: "text[]", 1015: "varchar[]"}

#: numpy dtype -> the element type an array of it is written as (integers and floats widen to
#: the nearest PostgreSQL type that holds every value)
_FOR_DTYPE = {"float32": 700, "float16": 700, "float64": 701, "int16": 21, "int8": 21, "uint8": 21, "int32": 23,
              "uint16": 23, "int64": 20, "uint32": 20, "bool": 16}


def type_name(oid: int) -> str:
    """The SQL name of a type oid dbdl knows (``real``, ``real[]``, ``text``, …)."""
    if oid in ELEMENTS:
        return ELEMENTS[oid].name
    if oid in ARRAY_OIDS:
        return ELEMENTS[ARRAY_OIDS[oid]].name + "[]"
    return _OTHER_NAMES.get(oid, f"the type with oid {oid}")


def element_oid(dtype: Any) -> int:
    """The element type oid an array of numpy ``dtype`` is written as: float32 -> real (700),
    float64 -> double precision (701), int32 -> integer (23), int64 -> bigint (20), bool -> boolean
    (16); int8/uint8 -> smallint, uint16 -> integer, uint32 -> bigint, float16 -> real."""
    name = np.dtype(dtype).name
    if name not in _FOR_DTYPE:
        raise DTypeMismatch(f"values of type {name} have no PostgreSQL array element type; cast them to float32, "
                            "float64, int16, int32, int64 or bool")
    return _FOR_DTYPE[name]


# -- reading -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """An array value's header: ``dims`` is ``(0,)`` for an empty array (ndim 0); ``start`` is
    where the elements begin."""

    ndim: int
    has_null: bool
    elem: int
    dims: tuple[int, ...]
    start: int

    @property
    def count(self) -> int:
        return int(prod(self.dims))


_HEAD = struct.Struct(">iiI")


def read_header(blob: bytes, what: str = "the value") -> Header:
    """The header of one array value, ShapeMismatch for bytes too short to hold one."""
    if len(blob) < 12:
        raise ShapeMismatch(f"{what}: {len(blob)} bytes are not an array_send() value")
    ndim, flags, elem = struct.unpack_from(">iiI", blob, 0)
    start = 12 + 8 * ndim
    if not 0 <= ndim <= 6 or len(blob) < start:
        raise ShapeMismatch(f"{what}: malformed array_send() value (its header says {ndim} dimensions)")
    dims = tuple(struct.unpack_from(f">{2 * ndim}i", blob, 12)[::2]) if ndim else (0,)
    return Header(ndim, bool(flags), elem, dims, start)


def width(blob: bytes | None) -> int:
    """Elements of an array value (all its dimensions; 0 for NULL, an empty array or bytes too
    short to be one)."""
    if not blob or len(blob) < 12:
        return 0
    ndim = struct.unpack_from(">i", blob, 0)[0]
    if not 0 < ndim <= 6 or len(blob) < 12 + 8 * ndim:
        return 0
    return int(prod(struct.unpack_from(f">{2 * ndim}i", blob, 12)[::2]))


def element_of(blobs: Sequence[bytes | None]) -> int | None:
    """The element type oid of the first value of a batch (None when every value is NULL)."""
    first = next((b for b in blobs if b is not None), None)
    if first is None or len(first) < 12:
        return None
    return struct.unpack_from(">I", first, 8)[0]


def numeric_value(blob: bytes, pos: int) -> tuple[float, int]:
    """(value, position after it) of one numeric element at ``pos`` (its length word first):
    base-10000 digits, NaN and ±infinity, as a float."""
    length = struct.unpack_from(">i", blob, pos)[0]
    ndigits, weight, sign, _ = struct.unpack_from(">hhHh", blob, pos + 4)
    digits = struct.unpack_from(f">{ndigits}h", blob, pos + 12)
    value = sum(d * 10000.0 ** (weight - k) for k, d in enumerate(digits))
    special = {0xC000: float("nan"), 0xD000: float("inf"), 0xF000: float("-inf")}
    if sign in special:
        value = special[sign]
    return (-value if sign == 0x4000 else value), pos + 4 + length


@dataclass
class Arrays:
    """A batch of array values (one SQL column), decoded; the shape of ``runtime.Column``.

    ``valid`` is False for a NULL value and for a value holding a NULL element (dbdl scores or
    exports neither). ``values`` are native-endian in the elements' own dtype. When every valid
    value has one shape, ``dims`` is it, ``width`` its element count and ``values`` holds
    ``n * width`` values (zeros for the rows that are not valid), ``offsets`` None; otherwise
    ``dims`` and ``width`` are None, ``values`` holds the valid rows one after another and
    ``offsets`` (n + 1) says where each begins (an invalid row is empty), with each valid row's
    dimensions in ``shapes`` (None for the others). ``elem`` is the element type oid (None when
    no value has one)."""

    values: np.ndarray
    valid: np.ndarray
    elem: int | None
    width: int | None = None
    dims: tuple[int, ...] | None = None
    offsets: np.ndarray | None = None
    shapes: list[tuple[int, ...] | None] | None = None

    def __len__(self) -> int:
        return len(self.valid)

    def lengths(self) -> np.ndarray:
        if self.offsets is None:
            return np.where(self.valid, self.width or 0, 0).astype(np.int64)
        return np.diff(self.offsets)


_CAST = "cast the column to one numeric array type, e.g. col::real[]"


def decode_arrays(blobs: Sequence[bytes | None], what: str = "the arrays", hint: str = _CAST) -> Arrays:
    """A batch of array_send() values of one element type (``what`` names them in errors, ``hint``
    says how to fix a wrong element type): rows of one shape all at once with numpy, others one by
    one; numeric elements one by one into float64."""
    valid = np.array([b is not None for b in blobs], dtype=bool)
    fast = _one_layout(blobs, valid, what)
    if fast is not None:
        return fast
    elem = None
    for i, blob in enumerate(blobs):
        if blob is None:
            continue
        if len(blob) < 12:
            read_header(blob, what)  # raises: too short
        _, flags, oid = _HEAD.unpack_from(blob, 0)
        if elem is None:
            elem = oid
        elif oid != elem:
            raise DTypeMismatch(f"{what} mix arrays of {type_name(elem)} and {type_name(oid)} in one column; {hint}")
        if flags:
            valid[i] = False  # a NULL element: the row gives NULL
    if elem is None:
        return Arrays(np.zeros(0, dtype=np.float64), valid, None, width=0)
    rows = np.flatnonzero(valid)
    element = ELEMENTS.get(elem)
    if not len(rows):  # nothing to decode: every value is NULL or holds a NULL
        native = np.dtype(element.dtype or ">f8" if element else np.float64).newbyteorder("=")
        return Arrays(np.zeros(0, dtype=native), valid, elem, width=0)
    if element is None:
        raise DTypeMismatch(f"{what} are arrays of {type_name(elem)}, not of numbers or booleans; {hint}")
    native = np.dtype(element.dtype or ">f8").newbyteorder("=")
    if element.dtype is None:
        heads = {i: read_header(blobs[i], what) for i in rows.tolist()}
        parts = [_numeric_row(blobs[i], heads[i]) for i in rows]
        return _gather(parts, [heads[i].dims for i in rows], rows, valid, elem, native)
    if len(rows) < int(sum(b is not None for b in blobs)):  # without the rows holding a NULL: one layout?
        fast = _one_layout(blobs, valid, what)
        if fast is not None:
            return fast
    heads = {i: read_header(blobs[i], what) for i in rows.tolist()}
    item = np.dtype([("len", ">i4"), ("v", element.dtype)])
    present = [blobs[i] for i in rows]
    parts = []
    for i, blob in zip(rows, present):
        head = heads[i]
        if len(blob) != head.start + head.count * item.itemsize:
            raise ShapeMismatch(f"{what}: malformed array_send() value (its length does not match its header)")
        parts.append(np.frombuffer(blob, dtype=item, count=head.count, offset=head.start)["v"].astype(native))
    return _gather(parts, [heads[i].dims for i in rows], rows, valid, elem, native)


def _one_layout(blobs: Sequence[bytes | None], valid: np.ndarray, what: str) -> Arrays | None:
    """The common batch in one numpy step: every value present has the same header bytes (element
    type, no NULL, one shape) and length. None when the batch is any other (decode_arrays' general
    path then reads it value by value)."""
    rows = np.flatnonzero(valid)
    if not len(rows):
        return None
    present = [blobs[i] for i in rows] if len(rows) < len(blobs) else list(blobs)
    head = read_header(present[0], what)
    element = ELEMENTS.get(head.elem)
    if head.has_null or element is None or element.dtype is None:
        return None
    length = len(present[0])
    item = np.dtype([("len", ">i4"), ("v", element.dtype)])
    if length != head.start + head.count * item.itemsize or any(len(b) != length for b in present):
        return None
    raw = np.frombuffer(b"".join(present), dtype=np.uint8).reshape(len(present), length)
    if not (raw[:, :head.start] == raw[0, :head.start]).all():
        return None
    native = np.dtype(element.dtype).newbyteorder("=")
    count = head.count
    items = raw[:, head.start:].copy().view(item)["v"].reshape(len(present), count)
    if len(present) == len(blobs):
        values = items.astype(native).reshape(-1)
    else:
        matrix = np.zeros((len(blobs), count), dtype=native)
        matrix[rows] = items
        values = matrix.reshape(-1)
    return Arrays(values, valid, head.elem, width=count, dims=head.dims)


def _numeric_row(blob: bytes, head: Header) -> np.ndarray:
    pos, values = head.start, []
    for _ in range(head.count):
        value, pos = numeric_value(blob, pos)
        values.append(value)
    return np.array(values, dtype=np.float64)


def _gather(parts: list[np.ndarray], shapes: list[tuple[int, ...]], rows: np.ndarray, valid: np.ndarray,
            elem: int, native: np.dtype) -> Arrays:
    """Arrays of rows decoded one by one: fixed width where they share one shape."""
    n = len(valid)
    if len(set(shapes)) == 1:
        count = len(parts[0])
        matrix = np.zeros((n, count), dtype=native)
        matrix[rows] = np.stack(parts) if count else matrix[rows]
        return Arrays(matrix.reshape(-1), valid, elem, width=count, dims=shapes[0])
    lengths = np.zeros(n, dtype=np.int64)
    lengths[rows] = [len(p) for p in parts]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    row_shapes: list[tuple[int, ...] | None] = [None] * n
    for i, shape in zip(rows.tolist(), shapes):
        row_shapes[i] = shape
    return Arrays(np.concatenate(parts).astype(native, copy=False), valid, elem, offsets=offsets, shapes=row_shapes)


def decode_array(blob: bytes) -> np.ndarray:
    """One array_send() value as a numpy array of its dimensions (``(0,)`` when empty); a value
    with NULL elements comes back as a masked array, masked where they are."""
    head = read_header(blob)
    element = ELEMENTS.get(head.elem)
    if element is None:
        raise DTypeMismatch(f"an array of {type_name(head.elem)}, not of numbers or booleans; {_CAST}")
    native = np.dtype(element.dtype or ">f8").newbyteorder("=")
    values = np.zeros(head.count, dtype=native)
    nulls = np.zeros(head.count, dtype=bool)
    pos = head.start
    for k in range(head.count):
        length = struct.unpack_from(">i", blob, pos)[0]
        if length < 0:
            nulls[k] = True
            pos += 4
        elif element.dtype is None:
            values[k], pos = numeric_value(blob, pos)
        else:
            values[k] = np.frombuffer(blob, dtype=element.dtype, count=1, offset=pos + 4)[0]
            pos += 4 + length
    if pos != len(blob):
        raise ShapeMismatch("malformed array_send() value (its length does not match its header)")
    values = values.reshape(head.dims)
    return np.ma.MaskedArray(values, nulls.reshape(head.dims)) if nulls.any() else values


_FLOAT4_HEADER = struct.pack(">iiI", 1, 0, 700)
_FLOAT4_ITEMS = np.dtype([("len", ">i4"), ("v", ">f4")])


def float4_vector(blob: bytes, width: int) -> np.ndarray | None:
    """The common case in one step: a 1-D real[] of ``width`` elements without NULLs as a
    (1 x width) float32 matrix; None for anything else (decode_arrays then explains it)."""
    if not width or len(blob) != 20 + 8 * width or blob[:12] != _FLOAT4_HEADER:
        return None
    return np.frombuffer(blob, dtype=_FLOAT4_ITEMS, offset=20)["v"].astype(np.float32).reshape(1, width)


def well_formed(blob: bytes) -> bool:
    """Bytes that read as an array_send() value of a type dbdl decodes, length included (numeric
    elements and NULLs, of variable width, count as close enough)."""
    if len(blob) < 12:
        return False
    ndim, flags, elem = struct.unpack_from(">iII", blob, 0)
    if not 0 <= ndim <= 6 or flags > 1 or elem not in ELEMENTS:
        return False
    if len(blob) < 12 + 8 * ndim:
        return False
    count = int(prod(struct.unpack_from(f">{2 * ndim}i", blob, 12)[::2])) if ndim else 0
    if ELEMENTS[elem].dtype is None or flags:
        return True
    return len(blob) == 12 + 8 * ndim + count * (4 + np.dtype(ELEMENTS[elem].dtype).itemsize)


# -- writing -------------------------------------------------------------------------------------------


def _fixed(elem: int) -> Element:
    element = ELEMENTS.get(elem)
    if element is None or element.dtype is None:
        raise DTypeMismatch(f"dbdl writes arrays of real, double precision, smallint, integer, bigint or boolean; "
                            f"not of {type_name(elem)}")
    return element


def header_bytes(dims: Sequence[int], elem: int, has_null: bool = False) -> bytes:
    """The header of an array value of ``dims`` (an empty array: ndim 0), lower bounds 1."""
    dims = tuple(int(d) for d in dims)
    if not dims or 0 in dims:
        return struct.pack(">iiI", 0, 0, elem)
    return struct.pack(f">iiI{2 * len(dims)}i", len(dims), int(has_null), elem, *[x for d in dims for x in (d, 1)])


def record_dtype(dims: Sequence[int], elem: int) -> np.dtype:
    """The numpy structured dtype whose one record is exactly the array_send() bytes of a value of
    ``dims`` without NULLs: ``head`` (int4 * (3 + 2 ndim)) then ``items`` (``len``, ``v``) per
    element. A field of this dtype inside a larger record writes a binary COPY field in place."""
    element = _fixed(elem)
    dims = tuple(int(d) for d in dims)
    count = int(prod(dims)) if dims and 0 not in dims else 0
    ndim = len(dims) if count else 0
    fields: list[tuple] = [("head", ">i4", (3 + 2 * ndim,))]
    if count:
        fields.append(("items", [("len", ">i4"), ("v", element.dtype)], (count,)))
    return np.dtype(fields)


def encode_records(values: Any, dims: Sequence[int] | None = None, elem: int | None = None) -> np.ndarray:
    """Rows of one shape as a structured array of ``record_dtype(dims, elem)``: record i is the
    array_send() bytes of row i (``values[i]``, reshaped to ``dims``). ``values`` is (n, *dims),
    or (n, width) with ``dims`` given; ``elem`` defaults to ``element_oid(values.dtype)``."""
    arr = np.asarray(values)
    if arr.ndim < 1:
        raise ShapeMismatch("encode_records takes a batch of rows (an array with a leading row axis)")
    n = arr.shape[0]
    dims = tuple(arr.shape[1:]) if dims is None else tuple(int(d) for d in dims)
    elem = element_oid(arr.dtype) if elem is None else int(elem)
    element = _fixed(elem)
    count = int(prod(dims)) if dims and 0 not in dims else 0
    if arr.size != n * count:
        raise ShapeMismatch(f"{arr.size // max(n, 1)} values per row cannot be arrays of dimensions {list(dims)}")
    dtype = record_dtype(dims, elem)
    out = np.zeros(n, dtype=dtype)
    out["head"] = np.frombuffer(header_bytes(dims, elem), dtype=">i4")
    if count:
        out["items"]["len"] = np.dtype(element.dtype).itemsize
        out["items"]["v"] = arr.reshape(n, count)
    return out


def encode_arrays(values: Any, dims: Sequence[int] | None = None, elem: int | None = None,
                  valid: Any = None) -> list[bytes | None]:
    """array_send() bytes of each row of one shape (None where ``valid`` is False): ``values`` is
    (n, *dims), or (n, width) with ``dims`` given; ``elem`` the element type oid (default: from
    the dtype, ``element_oid``)."""
    records = encode_records(values, dims, elem)
    size = records.dtype.itemsize
    raw = records.tobytes()
    blobs: list[bytes | None] = [raw[i * size:(i + 1) * size] for i in range(len(records))]
    if valid is not None:
        for i in np.flatnonzero(~np.asarray(valid, dtype=bool)).tolist():
            blobs[i] = None
    return blobs


def encode_ragged(values: Any, offsets: Any, elem: int | None = None, valid: Any = None) -> list[bytes | None]:
    """array_send() bytes of 1-D rows of different lengths: row i is
    ``values[offsets[i]:offsets[i + 1]]`` (None where ``valid`` is False)."""
    arr = np.asarray(values).reshape(-1)
    offsets = np.asarray(offsets, dtype=np.int64)
    elem = element_oid(arr.dtype) if elem is None else int(elem)
    element = _fixed(elem)
    items = np.empty(len(arr), dtype=[("len", ">i4"), ("v", element.dtype)])
    items["len"] = np.dtype(element.dtype).itemsize
    items["v"] = arr
    raw = items.tobytes()
    size = items.dtype.itemsize
    keep = np.ones(len(offsets) - 1, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    out: list[bytes | None] = []
    for i, (a, b, ok) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist(), keep.tolist())):
        out.append(header_bytes((b - a,), elem) + raw[a * size:b * size] if ok else None)
    return out


def encode_array(value: Any, elem: int | None = None) -> bytes:
    """array_send() bytes of one value of any number of dimensions: a numpy array, a masked array
    (masked elements are NULL) or nested lists (None elements are NULL)."""
    nulls = None
    if isinstance(value, np.ma.MaskedArray):
        nulls = np.ma.getmaskarray(value)
        arr = np.asarray(value.data)
    else:
        arr = np.asarray(value)
        if arr.dtype == object:
            nulls = np.vectorize(lambda v: v is None, otypes=[bool])(arr) if arr.size else np.zeros(arr.shape, bool)
            live = [v for v in arr.reshape(-1).tolist() if v is not None]
            kind = np.asarray(live).dtype if live else np.dtype(np.float32)
            arr = np.where(nulls, 0, arr).astype(kind)
    elem = element_oid(arr.dtype) if elem is None else int(elem)
    element = _fixed(elem)
    dims = arr.shape if arr.ndim else (1,)
    if nulls is None or not nulls.any():
        record = encode_records(arr.reshape(1, -1), dims, elem)
        return record.tobytes()
    size = np.dtype(element.dtype).itemsize
    raw = arr.reshape(-1).astype(element.dtype).tobytes()  # big-endian, element k at k * size
    parts = [header_bytes(dims, elem, has_null=True)]
    length = struct.pack(">i", size)
    for k, null in enumerate(nulls.reshape(-1).tolist()):
        parts.append(b"\xff\xff\xff\xff" if null else length + raw[k * size:(k + 1) * size])
    return b"".join(parts)


def encode_arrow(col: Any, elem: int | None = None) -> list[bytes | None]:
    """array_send() bytes of each value of an Arrow list, large list or fixed-size list column
    (nested fixed-size lists: multi-dimensional arrays, outer size first; NULL elements allowed);
    None for a NULL value. ``elem`` forces the element type (default: from the innermost type,
    ``element_oid``)."""
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    typ = col.type
    dims: list[int] = []
    fixed = True
    while pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        if pa.types.is_fixed_size_list(typ):
            dims.append(typ.list_size)
        else:
            fixed = False
        typ = typ.value_type
    if not dims and fixed:
        raise DTypeMismatch(f"encode_arrow takes a list column; got {col.type}")
    value_dtype = np.dtype(typ.to_pandas_dtype())
    elem = element_oid(value_dtype) if elem is None else int(elem)
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    n = len(col)
    if fixed:
        values = col
        for _ in dims:
            values = values.flatten()
        if not values.null_count and len(values) == n * int(prod(dims)):
            flat = values.to_numpy(zero_copy_only=False)
            return encode_arrays(flat.reshape(n, -1), dims, elem, valid)
    elif not dims and col.null_count == 0:  # one level of variable-length lists: 1-D rows, numpy
        offsets = col.offsets.to_numpy().astype(np.int64)
        inner = col.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        if not inner.null_count:
            return encode_ragged(inner.to_numpy(zero_copy_only=False), offsets - offsets[0], elem)
    return [None if v is None else encode_array(np.array(v, dtype=object) if _has_none(v) else np.asarray(v), elem)
            for v in col.to_pylist()]


def _has_none(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_none(v) for v in value)
    return False
