"""dbdl_udf.pgarray against PostgreSQL's own array_send() / array_recv: decode what the server
writes, send what dbdl encodes back through binary COPY and read the values, numpy round trips."""

from __future__ import annotations

import struct

import numpy as np
import psycopg
import pyarrow as pa
import pytest

import dbdl
from dbdl_udf import pgarray

# SQL literal -> what decode_array gives (dtype, values; None marks a NULL element)
CASES = {
    "ARRAY[1.5, -2, 3.25]::real[]": (np.float32, [1.5, -2, 3.25]),
    "ARRAY[1e300, -0.5]::double precision[]": (np.float64, [1e300, -0.5]),
    "ARRAY[-32768, 7]::smallint[]": (np.int16, [-32768, 7]),
    "ARRAY[2147483647, -1]::integer[]": (np.int32, [2147483647, -1]),
    "ARRAY[9007199254740993, 0]::bigint[]": (np.int64, [9007199254740993, 0]),
    "ARRAY[true, false, true]::boolean[]": (np.bool_, [True, False, True]),
    "ARRAY[[1, 2, 3], [4, 5, 6]]::integer[]": (np.int32, [[1, 2, 3], [4, 5, 6]]),
    "ARRAY[[[1.5], [2]], [[3], [4]]]::real[]": (np.float32, [[[1.5], [2]], [[3], [4]]]),
    "ARRAY[1, NULL, 3]::bigint[]": (np.int64, [1, None, 3]),
    "ARRAY[[1, NULL], [NULL, 4]]::real[]": (np.float32, [[1, None], [None, 4]]),
    "'{}'::real[]": (np.float32, []),
}


@pytest.fixture
def con(pg_server, request):
    name = f"dbdl_pgarray_{request.node.name[:24].lower()}"
    url = pg_server.create_database(name)
    with psycopg.connect(url, autocommit=True) as connection:
        yield connection
    pg_server.drop_database(name)


def _expected(dtype, values):
    flat = np.array(values, dtype=object)
    nulls = np.vectorize(lambda v: v is None, otypes=[bool])(flat) if flat.size else np.zeros(flat.shape, bool)
    data = np.where(nulls, 0, flat).astype(dtype) if flat.size else np.zeros((0,), dtype)
    return data, nulls


def _copy_binary(con, table: str, columns: list[str], rows: list[tuple[bytes | None, ...]]) -> None:
    """A binary COPY payload built by hand: the array fields are pgarray's bytes as they are."""
    parts = [b"PGCOPY\n\xff\r\n\x00", struct.pack(">ii", 0, 0)]
    for row in rows:
        parts.append(struct.pack(">h", len(row)))
        for field in row:
            parts.append(b"\xff\xff\xff\xff" if field is None else struct.pack(">i", len(field)) + field)
    parts.append(b"\xff\xff")
    with con.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT binary)") as copy:
        copy.write(b"".join(parts))


def test_decode_matches_postgres_array_send(con):
    for literal, (dtype, values) in CASES.items():
        blob = bytes(con.execute(f"SELECT pg_catalog.array_send({literal})").fetchone()[0])
        got = pgarray.decode_array(blob)
        data, nulls = _expected(dtype, values)
        assert got.dtype == np.dtype(dtype), literal
        assert got.shape == (data.shape if data.size else (0,)), literal
        if nulls.any():
            assert isinstance(got, np.ma.MaskedArray) and (got.mask == nulls).all(), literal
            np.testing.assert_array_equal(got.data[~nulls], data[~nulls])
        else:
            np.testing.assert_array_equal(got, data.reshape(got.shape))
            # and dbdl writes exactly the bytes PostgreSQL writes (lower bounds 1)
            assert pgarray.encode_array(data) == blob, literal
        if not nulls.any():
            assert pgarray.encode_array(np.ma.MaskedArray(data, nulls)) == blob
        else:
            assert pgarray.encode_array(values, pgarray.element_oid(dtype)) == blob, literal  # lists with None
    # numeric: variable-width base-10000 digits, read into float64
    blob = bytes(con.execute("SELECT pg_catalog.array_send(ARRAY[1.5, -20000.25, 0, 'NaN']::numeric[])").fetchone()[0])
    got = pgarray.decode_array(blob)
    np.testing.assert_array_equal(got[:3], [1.5, -20000.25, 0.0])
    assert np.isnan(got[3])
    # a lower bound other than 1 changes nothing in the values
    blob = bytes(con.execute("SELECT pg_catalog.array_send('[0:2]={7,8,9}'::integer[])").fetchone()[0])
    np.testing.assert_array_equal(pgarray.decode_array(blob), [7, 8, 9])


def test_decode_a_batch_of_server_values(con):
    con.execute("CREATE TABLE t (id int, f real[], g integer[], n numeric[])")
    con.execute("INSERT INTO t VALUES (0, '{1,2,3}', '{1}', '{0.5,1}'), (1, NULL, '{2,3,4}', NULL), "
                "(2, '{4,NULL,6}', '{}', '{2.5,3}'), (3, '{7,8,9}', '{5,6}', '{4,5}')")
    rows = con.execute("SELECT pg_catalog.array_send(f), pg_catalog.array_send(g), pg_catalog.array_send(n) "
                       "FROM t ORDER BY id").fetchall()
    f = pgarray.decode_arrays([None if r[0] is None else bytes(r[0]) for r in rows])
    assert f.valid.tolist() == [True, False, False, True] and (f.width, f.dims, f.elem) == (3, (3,), 700)
    np.testing.assert_array_equal(f.values.reshape(4, 3), [[1, 2, 3], [0, 0, 0], [0, 0, 0], [7, 8, 9]])
    g = pgarray.decode_arrays([bytes(r[1]) for r in rows])  # ragged: offsets, the empty array included
    assert g.width is None and g.offsets.tolist() == [0, 1, 4, 4, 6] and g.values.dtype == np.int32
    assert g.values.tolist() == [1, 2, 3, 4, 5, 6] and g.shapes == [(1,), (3,), (0,), (2,)]
    n = pgarray.decode_arrays([None if r[2] is None else bytes(r[2]) for r in rows])
    np.testing.assert_array_equal(n.values.reshape(4, 2), [[0.5, 1], [0, 0], [2.5, 3], [4, 5]])
    with pytest.raises(dbdl.DTypeMismatch, match="mix arrays of real and integer"):
        pgarray.decode_arrays([bytes(rows[0][0]), bytes(rows[0][1])])
    text = bytes(con.execute("SELECT pg_catalog.array_send(ARRAY['a'])").fetchone()[0])
    with pytest.raises(dbdl.DTypeMismatch, match="text"):
        pgarray.decode_arrays([text])
    with pytest.raises(dbdl.ShapeMismatch, match="not an array_send"):
        pgarray.decode_arrays([b"\x00\x01"])
    assert pgarray.width(bytes(rows[0][0])) == 3 and pgarray.width(None) == 0


def test_encoded_arrays_go_back_through_binary_copy(con):
    con.execute("CREATE TABLE w (id int, r real[], d double precision[], s smallint[], i integer[], b bigint[], "
                "o boolean[], img real[])")
    rng = np.random.default_rng(0)
    n = 5
    r = rng.standard_normal((n, 4)).astype(np.float32)
    d = rng.standard_normal((n, 3))
    s = rng.integers(-300, 300, (n, 2)).astype(np.int16)
    b = rng.integers(-2**62, 2**62, (n, 2))
    o = rng.random((n, 3)) > 0.5
    img = rng.standard_normal((n, 2, 3, 2)).astype(np.float32)
    ragged = pgarray.encode_ragged(np.arange(10, dtype=np.int32), [0, 1, 1, 4, 8, 10])
    columns = [
        [struct.pack(">i", k) for k in range(n)],
        pgarray.encode_arrays(r, valid=[True, True, False, True, True]),
        pgarray.encode_arrays(d),
        pgarray.encode_arrays(s),
        ragged,
        pgarray.encode_arrays(b.reshape(n, 2), dims=(2,), elem=20),
        pgarray.encode_arrays(o),
        pgarray.encode_arrays(img.reshape(n, -1), dims=(2, 3, 2)),
    ]
    _copy_binary(con, "w", ["id", "r", "d", "s", "i", "b", "o", "img"], list(zip(*columns)))
    got = con.execute("SELECT r, d, s, i, b, o, img FROM w ORDER BY id").fetchall()
    assert got[2][0] is None
    for k, row in enumerate(got):
        if k != 2:
            np.testing.assert_array_equal(np.array(row[0], dtype=np.float32), r[k])
        np.testing.assert_array_equal(row[1], d[k])
        assert row[2] == s[k].tolist() and row[4] == b[k].tolist() and row[5] == o[k].tolist()
        np.testing.assert_array_equal(np.array(row[6], dtype=np.float32), img[k])
    assert [row[3] for row in got] == [[0], [], [1, 2, 3], [4, 5, 6, 7], [8, 9]]
    dims = con.execute("SELECT pg_catalog.array_dims(img), pg_catalog.array_dims(i) FROM w WHERE id = 0").fetchone()
    assert dims == ("[1:2][1:3][1:2]", "[1:1]")
    # one value at a time, NULL elements included, and Arrow columns
    con.execute("CREATE TABLE v (id int, a bigint[], m real[], l double precision[], x integer[])")
    nested = pa.array([[[1, 2], [3, 4]], None, [[5, 6], [7, 8]]], type=pa.list_(pa.list_(pa.int32(), 2), 2))
    lists = pa.array([[1.5, None], [], None], type=pa.list_(pa.float64()))
    _copy_binary(con, "v", ["id", "a", "m", "l", "x"], list(zip(
        [struct.pack(">i", k) for k in range(3)],
        [pgarray.encode_array([1, None, 3]), pgarray.encode_array(np.array([], dtype=np.int64)), None],
        [pgarray.encode_array(np.ma.MaskedArray([[1.0, 2.0], [3.0, 4.0]], [[False, True], [False, False]]), elem=700),
         None, pgarray.encode_array(np.float32([0.25]))],
        pgarray.encode_arrow(lists),
        pgarray.encode_arrow(nested))))
    got = con.execute("SELECT a, m, l, x FROM v ORDER BY id").fetchall()
    assert got[0] == ([1, None, 3], [[1.0, None], [3.0, 4.0]], [1.5, None], [[1, 2], [3, 4]])
    assert got[1] == ([], None, [], None) and got[2] == (None, [0.25], None, [[5, 6], [7, 8]])


def test_numpy_round_trips():
    rng = np.random.default_rng(1)
    for dtype, elem in ((np.float32, 700), (np.float64, 701), (np.int16, 21), (np.int32, 23), (np.int64, 20),
                        (np.bool_, 16)):
        for shape in ((6, 5), (4, 3, 2), (3, 2, 2, 2), (2, 1)):
            x = (rng.standard_normal(shape) * 1000).astype(dtype)
            blobs = pgarray.encode_arrays(x)
            assert pgarray.element_of(blobs) == elem
            got = pgarray.decode_arrays(blobs)
            assert got.dims == shape[1:] and got.values.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(got.values.reshape(shape), x)
            for blob, row in zip(blobs, x):
                np.testing.assert_array_equal(pgarray.decode_array(blob), row)
                assert pgarray.well_formed(blob)
            records = pgarray.encode_records(x)
            assert records.dtype == pgarray.record_dtype(shape[1:], elem) and records.tobytes() == b"".join(blobs)
    values = np.arange(12, dtype=np.int64)
    offsets = [0, 5, 5, 12]
    got = pgarray.decode_arrays(pgarray.encode_ragged(values, offsets, valid=[True, True, True]))
    assert got.offsets.tolist() == offsets and got.values.tolist() == values.tolist()
    masked = np.ma.MaskedArray(np.arange(6.0).reshape(2, 3), [[0, 1, 0], [0, 0, 1]])
    back = pgarray.decode_array(pgarray.encode_array(masked))
    assert (back.mask == masked.mask).all() and (back.data[~back.mask] == masked.data[~masked.mask]).all()
    some = pgarray.decode_arrays([pgarray.encode_array(masked), None, pgarray.encode_array(np.ones((2, 3)))])
    assert some.valid.tolist() == [False, False, True] and some.values.reshape(3, 6)[2].tolist() == [1.0] * 6
    x = np.float32([[1, 2, 3]])
    assert pgarray.float4_vector(pgarray.encode_arrays(x)[0], 3).tolist() == x.tolist()
    assert pgarray.float4_vector(pgarray.encode_arrays(x.astype(np.float64))[0], 3) is None
