"""Bodies of dbdl's PL/Python functions on PostgreSQL.

The SQL declarations (migrations/postgres/) are two-line trampolines into this module:
``dbdl._bootstrap()`` puts the directories stored in ``dbdl.settings`` on ``sys.path`` and keeps
this module in ``GD``; each function then calls one of the functions below with ``plpy``.

Tensors cross the PL/Python boundary in the cheapest form available: the batched path reads
features as ``array_send()`` bytes (one memcpy-like decode for a whole batch) instead of Python
lists, which is where PL/Python's time goes otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from typing import Sequence

from . import catalog
from .errors import DTypeMismatch, Error, InvalidArgument, InvalidModel, InvalidName, ModelNotFound, ShapeMismatch
from .runtime import SESSIONS, Signature, check_features, run_batch, shape_outputs

_SQLSTATE = {
    "ModelNotFound": "42704",  # undefined_object
    "InvalidName": "42602",  # invalid_name
    "ShapeMismatch": "22023",  # invalid_parameter_value
    "DTypeMismatch": "42804",  # datatype_mismatch
    "InvalidModel": "22023",
    "DatasetNotFound": "42704",
    "QueryError": "42601",  # syntax_error
    "ModelRuntimeError": "38000",  # external_routine_exception: the model failed while it ran
    "InvalidArgument": "22023",
}
_KINDS = ("scalar", "array", "class")
_plans: dict[str, Any] = {}


def _plan(plpy, key: str, sql: str, types: list[str]):
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = plpy.prepare(sql, types)
    return plan


def raise_for_sql(plpy, exc: Error) -> None:
    """Re-raise a dbdl error as a PostgreSQL error the client maps back to the same class."""
    name = type(exc).__name__
    plpy.error(f"dbdl.{name}: {exc}", sqlstate=_SQLSTATE.get(name, "P0001"))


# -- the registry ------------------------------------------------------------------------------

_PG_TYPES = {str: "text", bool: "bool", int: "int8", float: "float8", bytes: "bytea"}


class PlpyRunner:
    """dbdl_udf.catalog's SQL runner over plpy: ``?`` placeholders, plans prepared once per session."""

    def __init__(self, plpy) -> None:
        self.plpy = plpy

    def _plan(self, sql: str, params: Sequence[Any]):
        types = [_PG_TYPES[type(p)] for p in params]
        key = f"{sql}\x00{','.join(types)}"
        plan = _plans.get(key)
        if plan is None:
            parts = sql.split("?")
            text = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))
            plan = _plans[key] = self.plpy.prepare(text, types)
        return plan

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        result = self.plpy.execute(self._plan(sql, params), list(params))
        names = result.colnames()
        return [tuple(row[c] for c in names) for row in result]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.plpy.execute(self._plan(sql, params), list(params))


_FAST_SERVING = ("SELECT v.version, v.sha256 FROM dbdl.models m JOIN dbdl.model_versions v "
                 "ON v.name = m.name AND v.version = m.serving_version WHERE m.name = $1")
_FAST_PINNED = "SELECT version, sha256 FROM dbdl.model_versions WHERE name = $1 AND version = $2"
_refs: dict[str, tuple[str, int | None, str | None]] = {}
_signatures: dict[str, Signature] = {}


def resolve(plpy, ref: str) -> tuple[str, int, str, Signature, int]:
    """(name, version, sha256, signature, output index) of a model reference.

    One prepared query per call (a version registered a moment ago in another session is seen
    at once); parsed references and signatures are cached, keyed by text and content hash.
    """
    parsed = _refs.get(ref)
    if parsed is None:
        parsed = _refs[ref] = catalog.parse_ref(ref)
    name, version, output = parsed
    if version is None:
        rows = plpy.execute(_plan(plpy, "fast_serving", _FAST_SERVING, ["text"]), [name])
    else:
        rows = plpy.execute(_plan(plpy, "fast_pinned", _FAST_PINNED, ["text", "int4"]), [name, version])
    if not rows:
        raise catalog.not_found(PlpyRunner(plpy), name, version)
    version, sha = rows[0]["version"], rows[0]["sha256"]
    signature = _signatures.get(sha)
    if signature is None:
        signature = catalog.resolve(PlpyRunner(plpy), name, version).signature
        _signatures[sha] = signature
    return name, int(version), sha, signature, signature.output_index(output)


def _session(plpy, sha256: str):
    """The process's session for a model's bytes, read through dbdl.model_bytes (SECURITY DEFINER),
    so the same code serves the definer functions and predict_into, which runs as the caller."""
    def load() -> bytes:
        rows = plpy.execute(_plan(plpy, "bytes", "SELECT dbdl.model_bytes($1) AS b", ["text"]), [sha256])
        if not rows or rows[0]["b"] is None:
            raise ModelNotFound(f"model bytes {sha256[:12]}… are missing; re-register the model")
        return bytes(rows[0]["b"])

    return SESSIONS.get(sha256, load, threads=1)


# -- row at a time -----------------------------------------------------------------------------


def predict(plpy, model: str | None, data: bytes | None, packed: bool, kind: str) -> Any:
    """predict / predict_array / predict_class for one row.

    ``data`` is ``array_send(features)`` when ``packed``, else little-endian float32 bytes.
    """
    if model is None or data is None:
        return None
    try:
        name, version, sha, signature, output = resolve(plpy, model)
        ref = f"{name}@{version}"
        width = signature.n_features
        if packed:
            x = _one_float4_row(data, width)
            if x is not None:
                valid = _TRUE
            else:
                x, valid = decode_array_send([bytes(data)], width, ref)
        else:
            x, valid = _decode_float32_bytea([data], width, ref)
        if not valid[0]:
            return None
        session, signature = _session(plpy, sha)
        y = shape_outputs(run_batch(session, signature, x, output, ref), kind, ref, signature.outputs[output].name)
        return y[0].tolist()
    except Error as exc:
        raise_for_sql(plpy, exc)


# -- batched ----------------------------------------------------------------------------------

_TRUE = np.ones(1, dtype=bool)
_F4_ITEMS = np.dtype([("len", ">i4"), ("v", ">f4")])


def _one_float4_row(data: bytes, width: int) -> np.ndarray | None:
    """The common case, decoded in one step: array_send() of a 1-D real[] of the right length
    without NULLs. None for anything else (the general decoder then explains what is wrong)."""
    if len(data) != 20 + 8 * width or data[:12] != _F4_HEADER:
        return None
    return np.frombuffer(data, dtype=_F4_ITEMS, offset=20)["v"].astype(np.float32).reshape(1, width)


_F4_HEADER = (1).to_bytes(4, "big") + (0).to_bytes(4, "big") + (700).to_bytes(4, "big")

# array_send() element type oids -> big-endian numpy dtypes
_ELEMENT_TYPES = {700: ">f4", 701: ">f8", 23: ">i4", 20: ">i8", 21: ">i2"}


def decode_array_send(blobs: list[bytes | None], width: int, ref: str = "the model") -> tuple[np.ndarray, np.ndarray]:
    """(rows x width) float32 features from array_send() bytes of 1-D numeric arrays, and a
    mask of rows that can be scored (not NULL, no NULL element, right length)."""
    n = len(blobs)
    valid = np.array([b is not None for b in blobs], dtype=bool)
    matrix = np.zeros((n, width), dtype=np.float32)
    if not valid.any():
        return matrix, valid
    first = next(b for b in blobs if b is not None)
    header = np.frombuffer(first[:12].ljust(12, b"\0"), dtype=">i4")
    ndim, elem_oid = int(header[0]), int(header[2])
    dtype = _ELEMENT_TYPES.get(elem_oid)
    if elem_oid == _NUMERIC_OID:
        return _decode_numeric_arrays(blobs, width, ref)
    if dtype is None:
        raise DTypeMismatch(f"model {ref!r} takes numeric features (real[], double precision[], integer[] or "
                            f"float32 bytea); got "
                            + ("boolean[] — booleans are not features: cast them, e.g. col::int[]::real[]"
                               if elem_oid == 16 else f"an array of type oid {elem_oid} — cast the column, e.g. col::real[]"))
    if ndim != 1:
        got = 0 if ndim == 0 else "a multi-dimensional array"
        raise ShapeMismatch(f"model {ref!r} takes {width} features per row as a one-dimensional array; got {got}")
    size = np.dtype(dtype).itemsize
    row_bytes = 20 + width * (4 + size)
    # a NULL element makes the row NULL (its flag sits in bytes 4..8 of the header)
    for i, blob in enumerate(blobs):
        if blob is not None and blob[4:8] != b"\0\0\0\0":
            valid[i] = False
    present = [blobs[i] for i in np.flatnonzero(valid)]
    if not present:
        return matrix, valid
    bad = next((len(b) for b in present if len(b) != row_bytes), None)
    if bad is not None:
        got = (bad - 20) // (4 + size) if bad >= 20 else 0
        raise ShapeMismatch(f"model {ref!r} takes {width} features per row; pass a vector of exactly {width} numbers "
                            f"— got a row with {got}")
    raw = np.frombuffer(b"".join(present), dtype=np.uint8).reshape(len(present), row_bytes)
    body = raw[:, 20:].copy().view(np.dtype([("len", ">i4"), ("v", dtype)]))
    matrix[valid] = body["v"].astype(np.float32)
    return matrix, valid


_NUMERIC_OID = 1700
_ORT_ROWS = 2048
_COLUMNAR_MAX = 256


def _decode_numeric_arrays(blobs: list, width: int, ref: str) -> tuple[np.ndarray, np.ndarray]:
    """numeric[] (what ARRAY[1.5, 2] is): variable-width base-10000 elements, decoded one by one.
    Rare in practice (columns are real[]), so clarity beats speed here."""
    import struct

    n = len(blobs)
    valid = np.array([b is not None for b in blobs], dtype=bool)
    matrix = np.zeros((n, width), dtype=np.float32)
    for i, blob in enumerate(blobs):
        if blob is None:
            continue
        ndim, has_null, _ = struct.unpack_from(">iii", blob, 0)
        count = struct.unpack_from(">i", blob, 12)[0] if ndim else 0
        if count != width:
            raise ShapeMismatch(f"model {ref!r} takes {width} features per row; pass a vector of exactly {width} "
                                f"numbers — got a row with {count}")
        if has_null:
            valid[i] = False
            continue
        pos = 20
        for j in range(count):
            length = struct.unpack_from(">i", blob, pos)[0]
            ndigits, weight, sign, _ = struct.unpack_from(">hhHh", blob, pos + 4)
            digits = struct.unpack_from(f">{ndigits}h", blob, pos + 12)
            value = sum(d * 10000.0 ** (weight - k) for k, d in enumerate(digits))
            special = {0xC000: float("nan"), 0xD000: float("inf"), 0xF000: float("-inf")}
            if sign in special:
                value = special[sign]
            matrix[i, j] = -value if sign == 0x4000 else value
            pos += 4 + length
    return matrix, valid


_MAX_BATCH_ROWS = 1 << 20  # a batch is held in memory as Python rows: a million is already plenty


def predict_into(plpy, model: str, query: str, target: str, kind: str, batch_rows: int) -> int:
    """Score every row of ``query`` (key, features) in batches and insert (key, prediction) into
    ``target``, which is created when missing. Runs with the caller's privileges."""
    try:
        if kind not in _KINDS:
            raise InvalidArgument(f"predict_into's kind must be one of {', '.join(map(repr, _KINDS))}; got {kind!r} — "
                                  "e.g. CALL predict_into('m', 'SELECT id, feats FROM t', 'scores', kind => 'class')")
        if batch_rows is None or not 1 <= batch_rows <= _MAX_BATCH_ROWS:
            raise InvalidArgument(f"predict_into's batch_rows must be a number of rows from 1 to {_MAX_BATCH_ROWS}; got "
                                  f"{batch_rows!r} — leave it out for the default (8192)")
        if not isinstance(query, str) or not isinstance(target, str):
            raise InvalidArgument("predict_into needs a query (text returning a key and the features) and a target "
                                  "table name; got NULL")
        name, version, sha, signature, output = resolve_definer(plpy, model)
        ref = f"{name}@{version}"
        width = signature.n_features
        session, signature = _session(plpy, sha)
        out_sql = {"scalar": "real", "array": "real[]", "class": "bigint"}[kind]
        target_sql = _quote_target(plpy, target)
        described = plpy.execute(f"SELECT * FROM ({query}) AS q LIMIT 0")
        columns = described.colnames()
        if len(columns) != 2:
            raise ShapeMismatch(f"the query must return two columns, a key and the features; it returns {len(columns)} "
                                f"({', '.join(columns)})")
        key_type = described.coltypes()[0]
        key_col, feat_col = (plpy.quote_ident(c) for c in columns)
        feat_types = described.coltypes()[1]
        as_bytes = f"array_send(q.{feat_col})" if feat_types != 17 else f"q.{feat_col}"  # 17 = bytea
        plpy.execute(f"CREATE TABLE IF NOT EXISTS {target_sql} AS SELECT q.{key_col} AS {key_col}, NULL::{out_sql} "
                     f"AS prediction FROM ({query}) AS q WITH NO DATA")
        key_sql = plpy.execute(f"SELECT format_type({int(key_type)}, NULL) AS t")[0]["t"]
        width_out = signature.outputs[output].per_row
        columnar = kind == "array" and width_out is not None and width_out <= _COLUMNAR_MAX
        # integer keys and the predictions go as array literals (parsed by array_in in C) rather
        # than Python lists, which PL/Python converts one element at a time through text
        key_text = key_sql in ("bigint", "integer", "smallint")
        if columnar:
            # one array parameter per output value: PostgreSQL unnests them side by side and builds
            # each row's real[] in C, about 4x faster than slicing one long array per row
            cols = ", ".join(f"c{j}" for j in range(width_out))
            # PL/Python turns every float of a list into text and parses it back; one array literal
            # per column, written by str.join and parsed by array_in in C, is several times cheaper
            insert = plpy.prepare(
                f"INSERT INTO {target_sql} SELECT k, CASE WHEN n THEN NULL ELSE ARRAY[{cols}] END "
                f"FROM unnest($1::{key_sql}[], $2, {', '.join(f'${j}::real[]' for j in range(3, width_out + 3))}) "
                f"AS u(k, n, {cols})",
                ["text" if key_text else f"{key_sql}[]", "boolean[]"] + ["text"] * width_out)
        elif kind == "array":
            insert = plpy.prepare(
                f"INSERT INTO {target_sql} SELECT k[i], CASE WHEN n[i] THEN NULL ELSE v[(i - 1) * $4 + 1 : i * $4] END "
                f"FROM (SELECT $1 AS k, $2 AS v, $3 AS n) AS b, generate_subscripts($1, 1) AS i",
                [f"{key_sql}[]", "real[]", "boolean[]", "int4"])
        else:
            insert = plpy.prepare(
                f"INSERT INTO {target_sql} SELECT * FROM unnest($1::{key_sql}[], $2::{out_sql}[])",
                ["text" if key_text else f"{key_sql}[]", "text"])
        cursor = plpy.cursor(f"SELECT q.{key_col} AS k, {as_bytes} AS f FROM ({query}) AS q")
        total = 0
        while True:
            rows = cursor.fetch(batch_rows)
            if not rows:
                break
            keys = [r["k"] for r in rows]
            blobs = [r["f"] for r in rows]
            if feat_types == 17:
                matrix, valid = _decode_float32_bytea(blobs, width, ref)
            else:
                matrix, valid = decode_array_send(blobs, width, ref)
            check_features(signature, matrix.shape[1], ref)
            out = None
            if valid.any():
                x = matrix if valid.all() else matrix[valid]
                # onnxruntime is fastest on a few thousand rows at a time (they stay in cache)
                y = np.concatenate([run_batch(session, signature, x[i:i + _ORT_ROWS], output, ref)
                                    for i in range(0, len(x), _ORT_ROWS)])
                out = shape_outputs(y, kind, ref, signature.outputs[output].name)
            if kind == "array":
                k = out.shape[1] if out is not None else (width_out or 0)
                full = np.zeros((len(rows), k), dtype=np.float32)
                if out is not None:
                    full[valid] = out
                if columnar:
                    plpy.execute(insert, [_keys_arg(keys, key_text), (~valid).tolist(),
                                          *(_array_literal(col.tolist(), kind) for col in full.T)])
                else:
                    plpy.execute(insert, [keys, full.ravel().tolist(), (~valid).tolist(), k])
            else:
                if out is not None and valid.all():
                    values = out.tolist()
                else:
                    values = [None] * len(rows)
                    if out is not None:
                        for i, v in zip(np.flatnonzero(valid).tolist(), out.tolist()):
                            values[i] = v
                plpy.execute(insert, [_keys_arg(keys, key_text), _array_literal(values, kind)])
            total += len(rows)
        return total
    except Error as exc:
        raise_for_sql(plpy, exc)


def _keys_arg(keys: list, as_text: bool):
    """Integer keys as one array literal (NULL keys included); other key types as the list."""
    if not as_text:
        return keys
    return "{" + ",".join("NULL" if k is None else str(k) for k in keys) + "}"


def _array_literal(values: list, kind: str) -> str:
    """'{…}' for a real[] or bigint[] parameter, NULL elements included."""
    fmt = "{:.9g}".format if kind != "class" else str
    return "{" + ",".join("NULL" if v is None else fmt(v) for v in values) + "}"


def _decode_float32_bytea(blobs: list, width: int, ref: str) -> tuple[np.ndarray, np.ndarray]:
    n = len(blobs)
    valid = np.array([b is not None for b in blobs], dtype=bool)
    matrix = np.zeros((n, width), dtype=np.float32)
    present = [b for b in blobs if b is not None]
    if present:
        lengths = set(map(len, present))
        if lengths != {4 * width}:
            bad = next(iter(lengths - {4 * width}))
            raise ShapeMismatch(f"model {ref!r} takes {width} features per row ({4 * width} bytes of little-endian "
                                f"float32); got a row of {bad} bytes")
        matrix[valid] = np.frombuffer(b"".join(present), dtype="<f4").reshape(-1, width)
    return matrix, valid


def _quote_target(plpy, target: str) -> str:
    parts = target.split(".")
    import re

    if not 1 <= len(parts) <= 2 or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", p) for p in parts):
        raise InvalidName(f"target table {target!r} is not valid; use a name like 'scores' or 'myschema.scores'")
    # fold to lower case as PostgreSQL does for an unquoted name, so 'MyScores' is myscores
    return ".".join(plpy.quote_ident(p.lower()) for p in parts)


# predict_into runs as the caller, who may not read dbdl's tables: the registry is read through
# SECURITY DEFINER SQL functions instead.


def resolve_definer(plpy, ref: str) -> tuple[str, int, str, Signature, int]:
    row = plpy.execute(_plan(plpy, "resolve_definer", "SELECT * FROM dbdl.resolve_model($1)", ["text"]), [ref])[0]
    signature = Signature.from_json(row["signature"])
    output = catalog.parse_ref(ref)[2]
    return row["name"], int(row["version"]), row["sha256"], signature, signature.output_index(output)


def resolve_row(plpy, ref: str) -> dict:
    """The body of dbdl.resolve_model(ref): name, version, sha256, signature JSON."""
    try:
        name, version, sha, signature, _ = resolve(plpy, ref)
        return {"name": name, "version": version, "sha256": sha, "signature": signature.to_json()}
    except Error as exc:
        raise_for_sql(plpy, exc)


# -- registration from SQL ------------------------------------------------------------------


def register_model(plpy, name: str, onnx_bytes: bytes, description: str | None, promote: bool) -> int:
    """The body of dbdl.register_model: check the bytes with onnxruntime, then store a version."""
    import hashlib

    from .runtime import make_session, signature_of

    try:
        catalog.check_name(name)
        if onnx_bytes is None or not bytes(onnx_bytes):
            raise InvalidModel("the model bytes are empty; pass the contents of a .onnx file, e.g. pg_read_binary_file(...)")
        data = bytes(onnx_bytes)
        signature = signature_of(make_session(data, threads=1))
        n_params, flops, opset = _facts(data)
        return catalog.store_version(
            PlpyRunner(plpy), name, sha256=hashlib.sha256(data).hexdigest(), onnx_bytes=data, source="onnx",
            signature=signature, n_params=n_params, flops_per_row=flops, opset=opset, description=description,
            promote=True if promote is None else bool(promote),
        )
    except Error as exc:
        raise_for_sql(plpy, exc)


def admin(plpy, action: str, name: str, version: int | None) -> int:
    """drop / promote / rollback from SQL; returns the versions dropped or the version now serving."""
    try:
        runner = PlpyRunner(plpy)
        if action == "drop":
            return catalog.drop(runner, name, version)
        if action == "promote":
            catalog.promote(runner, name, version)
            return int(version)
        return catalog.rollback(runner, name)
    except Error as exc:
        raise_for_sql(plpy, exc)


def _facts(data: bytes) -> tuple[int, int, int]:
    """(parameters, FLOPs per row, opset); zeros where the server has no ``onnx`` package."""
    try:
        import onnx
    except ImportError:
        return 0, 0, 0
    from .cost import estimate_cost

    try:
        proto = onnx.load_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise InvalidModel(f"the ONNX checker rejects the model: {str(exc).strip()[:300]}") from exc
    n_params, flops = estimate_cost(proto)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return n_params, flops, opset


# -- model options and the result cache from SQL ---------------------------------------------


def set_model_options(plpy, name: str, options: str) -> None:
    """The body of CALL dbdl.set_model_options(name, '{"cache": true}')."""
    try:
        catalog.set_options(PlpyRunner(plpy), catalog.check_name(name), catalog.parse_options(options))
    except Error as exc:
        raise_for_sql(plpy, exc)


def clear_cache(plpy, name: str) -> None:
    """The body of CALL dbdl.clear_cache(name)."""
    try:
        runner = PlpyRunner(plpy)
        catalog.model_options(runner, name)  # an unknown model is an error, not a silent no-op
        catalog.clear_cache(runner, name)
    except Error as exc:
        raise_for_sql(plpy, exc)


# -- training export -----------------------------------------------------------------------------
# CALL train_export(...) (migrations/postgres/0006_datasets.sql) runs as the caller: the source
# query is the caller's own SQL, run with the caller's rights; the rules live in dbdl_udf.datasets.

_INT_OIDS = {16, 20, 21, 23}  # bool, int8, int2, int4
_FLOAT_OIDS = {700, 701, 1700}  # real, double precision, numeric
_ARRAY_OIDS = {1005, 1007, 1016, 1021, 1022, 1231}  # int2[] int4[] int8[] real[] float8[] numeric[]
_EXPORT_ROWS = 1024


class _PlpySink:
    """dbdl_udf.datasets.export's backend: a cursor over the query, array_send() bytes decoded by
    numpy, rows staged in a temporary table and written in row-id order with one INSERT."""

    def __init__(self, plpy) -> None:
        self.plpy = plpy
        self.catalog = PlpyRunner(plpy)
        self._insert = None

    def _q(self, name: str) -> str:
        return self.plpy.quote_ident(name)

    def describe(self, query: str) -> list[tuple[str, str, str]]:
        self.plpy.prepare(query)  # exactly one statement, or PostgreSQL says why not
        result = self.plpy.execute(f"SELECT * FROM (\n{query}\n) AS q LIMIT 0")
        out = []
        for name, oid in zip(result.colnames(), result.coltypes()):
            kind = ("int" if oid in _INT_OIDS else "float" if oid in _FLOAT_OIDS
                    else "array" if oid in _ARRAY_OIDS else "other")
            type_name = self.plpy.execute(f"SELECT format_type({int(oid)}, NULL) AS t")[0]["t"]
            out.append((name, kind, type_name))
        return out

    def batches(self, query, features, label, kinds):
        from .datasets import decode_array_send

        if len(features) == 1 and kinds[features[0]] == "array":
            expr = f"array_send(q.{self._q(features[0])})"
        else:
            expr = "array_send(ARRAY[" + ", ".join(f"q.{self._q(c)}::float8" for c in features) + "])"
        is_int = kinds[label] == "int"
        cursor = self.plpy.cursor(f"SELECT {expr} AS f, q.{self._q(label)} AS l FROM (\n{query}\n) AS q")
        pos = 0
        while True:
            rows = cursor.fetch(_EXPORT_ROWS)
            if not rows:
                return
            matrix, valid = decode_array_send([r["f"] for r in rows], pos)
            raw = [r["l"] for r in rows]
            labels_valid = np.array([v is not None for v in raw], dtype=bool)
            labels = np.array([0 if v is None else (int(v) if is_int else float(v)) for v in raw],
                              dtype=np.int64 if is_int else np.float64)
            pos += len(rows)
            yield matrix, valid, labels, labels_valid

    def stage(self, first_pos, features, labels, label_dtype):
        if self._insert is None:
            label_sql = "bigint" if label_dtype == "int64" else "real"
            self.plpy.execute("DROP TABLE IF EXISTS pg_temp.dbdl_stage")
            self.plpy.execute(f"CREATE TEMP TABLE dbdl_stage (pos bigint, features bytea, label {label_sql}) "
                              "ON COMMIT DROP")
            self._insert = self.plpy.prepare(
                f"INSERT INTO pg_temp.dbdl_stage SELECT * FROM unnest($1::bigint[], $2, $3::{label_sql}[])",
                ["text", "bytea[]", "text"])
        n = len(features)
        size = features.itemsize * (features.size // n)
        buf = features.tobytes()
        blobs = [buf[i * size:(i + 1) * size] for i in range(n)]
        positions = "{" + ",".join(map(str, range(first_pos, first_pos + n))) + "}"
        fmt = str if label_dtype == "int64" else "{:.9g}".format
        self.plpy.execute(self._insert, [positions, blobs, "{" + ",".join(map(fmt, labels.tolist())) + "}"])

    def finish(self, table, row_ids, codes, width, dtype, label_dtype):
        label_sql = "bigint" if label_dtype == "int64" else "real"
        self.plpy.execute(f"CREATE TABLE {table} (row_id bigint PRIMARY KEY, features bytea NOT NULL, "
                          f"label {label_sql} NOT NULL, split text NOT NULL)")
        # tensors are incompressible bytes: store them out of line without trying pglz on each
        self.plpy.execute(f"ALTER TABLE {table} ALTER COLUMN features SET STORAGE EXTERNAL")
        plan = self.plpy.prepare(
            f"INSERT INTO {table} SELECT a.row_id, s.features, s.label, (ARRAY['train', 'validation', 'test'])"
            f"[a.code + 1] FROM pg_temp.dbdl_stage s JOIN unnest($1::bigint[], $2::smallint[]) WITH ORDINALITY "
            "AS a(row_id, code, ord) ON s.pos = a.ord - 1 ORDER BY a.row_id", ["text", "text"])
        self.plpy.execute(plan, ["{" + ",".join(map(str, row_ids.tolist())) + "}",
                                 "{" + ",".join(map(str, codes.tolist())) + "}"])
        self.plpy.execute("DROP TABLE pg_temp.dbdl_stage")
        self._insert = None
        self.plpy.execute(f"ANALYZE {table}")
        self.share(table)

    def ddl(self, sql: str) -> None:
        self.plpy.execute(sql)

    def share(self, relation: str) -> None:
        self.plpy.execute(f"GRANT SELECT ON {relation} TO dbdl_user")


def train_export(plpy, query, name, label, features, shape, dtype, train_fraction, validation_fraction,
                 seed) -> None:
    """The body of CALL train_export(...)."""
    from . import datasets

    try:
        spec = datasets.check_spec(
            query, name, "label" if label is None else label, features, shape, dtype or "float32",
            0.8 if train_fraction is None else train_fraction,
            0.1 if validation_fraction is None else validation_fraction, 0 if seed is None else seed)
        datasets.export(_PlpySink(plpy), spec)
    except Error as exc:
        raise_for_sql(plpy, exc)
