"""Bodies of dbdl's PL/Python functions on PostgreSQL.

The SQL declarations (migrations/postgres/) are two-line trampolines into this module:
``dbdl._bootstrap()`` puts the directories stored in ``dbdl.settings`` on ``sys.path`` and keeps
this module in ``GD``; each function then calls one of the functions below with ``plpy``.

Tensors cross the PL/Python boundary in the cheapest form available: the batched path reads
features as ``array_send()`` bytes (one memcpy-like decode for a whole batch) instead of Python
lists, which is where PL/Python's time goes otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, NoReturn, Sequence

import numpy as np

from . import catalog, pgarray, pgblocks, sqltext
from .errors import (ConfigurationError, DTypeMismatch, Error, InvalidArgument, InvalidModel, InvalidName,
                     ModelNotFound, ShapeMismatch)
from .kinds import KINDS, OUTPUT_KINDS
from .modelcheck import check_model_bytes
from .pgrow import NOT_FAST, ROWS, RowEntry, vector_text
from .runtime import SESSIONS, Column, Signature, run_batch, run_feeds, shape_outputs, valid_rows



class Plans:
    """The prepared plans of one security context, kept for the session.

    A plan is parsed, its names resolved, under the role and search_path of whoever prepared it;
    one prepared by predict_into (the caller's rights, the caller's path) and reused by a definer
    function would run the caller's choices as the owner. So definer and invoker code never share
    one: each entry point names its context, and every type name given to prepare is qualified.
    """

    def __init__(self, context: str) -> None:
        self.context = context
        self._plans: dict[str, Any] = {}

    def get(self, plpy, key: str, sql: str, types: list[str]):
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = plpy.prepare(sql, types)
        return plan


#: plans of the SECURITY DEFINER functions (run as the owner, search_path pinned)
DEFINER = Plans("definer")
#: plans of predict_into and train_export (run as the caller, through the caller's search_path)
INVOKER = Plans("invoker")


def raise_for_sql(plpy, exc: Error) -> NoReturn:
    """Re-raise a dbdl error as a PostgreSQL error the client maps back to the same class: the
    class's SQLSTATE (``Error.sqlstate``, dbdl_udf.errors) and the message ``dbdl.<Class>: …``."""
    plpy.error(f"dbdl.{type(exc).__name__}: {exc}", sqlstate=exc.sqlstate)
    raise AssertionError("plpy.error returned")  # pragma: no cover - it raises


def sql_errors(body: Callable[..., Any]) -> Callable[..., Any]:
    """A PL/Python entry point: ``body(plpy, ...)`` with every dbdl error it raises re-raised as a
    PostgreSQL error (``raise_for_sql``); any other exception passes as it is (PL/Python reports it,
    SPI errors keep their own SQLSTATE). The signature is the body's: the migrations' trampolines
    call it with the same arguments."""
    @functools.wraps(body)
    def entry(plpy, *args: Any, **kwargs: Any) -> Any:
        try:
            return body(plpy, *args, **kwargs)
        except Error as exc:
            raise_for_sql(plpy, exc)

    return entry


def checked_query(plpy, query: str, what: str) -> str:
    """The caller's query of ``what`` (predict_into, train_export) when it is one statement, else
    QueryError (dbdl_udf.sqltext.one_statement: the same rule and message for both); PostgreSQL's
    own parser then has the last word (plpy.prepare refuses several commands). Nothing has run
    yet when it refuses."""
    query = sqltext.one_statement(query, what)
    plpy.prepare(query)
    return query


# -- the registry ------------------------------------------------------------------------------

# qualified: an unqualified type name is looked up in the caller's pg_temp first
_PG_TYPES = {str: "pg_catalog.text", bool: "pg_catalog.bool", int: "pg_catalog.int8", float: "pg_catalog.float8",
             bytes: "pg_catalog.bytea"}


class PlpyRunner:
    """dbdl_udf.catalog's SQL runner over plpy: ``?`` placeholders, plans prepared once per session
    in the given security context (only definer code runs catalog SQL: its path is pinned)."""

    def __init__(self, plpy, plans: Plans) -> None:
        self.plpy = plpy
        self.plans = plans

    def _plan(self, sql: str, params: Sequence[Any]):
        types = [_PG_TYPES[type(p)] for p in params]
        parts = sql.split("?")
        text = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))
        return self.plans.get(self.plpy, f"{sql}\x00{','.join(types)}", text, types)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        result = self.plpy.execute(self._plan(sql, params), list(params))
        names = result.colnames()
        return [tuple(row[c] for c in names) for row in result]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.plpy.execute(self._plan(sql, params), list(params))


_FAST_SERVING = ("SELECT v.version, v.sha256, m.options FROM dbdl.models m JOIN dbdl.model_versions v "
                 "ON v.name = m.name AND v.version = m.serving_version WHERE m.name = $1")
_FAST_PINNED = ("SELECT v.version, v.sha256, m.options FROM dbdl.model_versions v JOIN dbdl.models m "
                "ON m.name = v.name WHERE v.name = $1 AND v.version = $2")
_refs: dict[str, tuple[str, int | None, str | None]] = {}
_signatures: dict[str, Signature] = {}


def resolve_options(plpy, ref: str) -> tuple[str, int, str, Signature, int, dict]:
    """(name, version, sha256, signature, output index, the model's stored options) of a model reference.

    One prepared query per call (a version registered a moment ago in another session is seen
    at once); parsed references and signatures are cached, keyed by text and content hash.
    Definer code only (the registry tables are the owner's).
    """
    parsed = _refs.get(ref)
    if parsed is None:
        parsed = _refs[ref] = catalog.parse_ref(ref)
    name, version, output = parsed
    if version is None:
        rows = plpy.execute(DEFINER.get(plpy, "fast_serving", _FAST_SERVING, ["pg_catalog.text"]), [name])
    else:
        rows = plpy.execute(DEFINER.get(plpy, "fast_pinned", _FAST_PINNED, ["pg_catalog.text", "pg_catalog.int4"]),
                            [name, version])
    if not rows:
        raise catalog.not_found(PlpyRunner(plpy, DEFINER), name, version)
    version, sha = rows[0]["version"], rows[0]["sha256"]
    signature = _signatures.get(sha)
    if signature is None:
        signature = catalog.resolve(PlpyRunner(plpy, DEFINER), name, version).signature
        _signatures[sha] = signature
    return name, int(version), sha, signature, signature.output_index(output), _parse_options(rows[0]["options"])


def _parse_options(text: str | None) -> dict:
    """The stored options (pad_id, feed, …: what build_feeds reads); the defaults are the runtime's.
    Parsed once per text (the row-at-a-time path reads them on every call)."""
    parsed = _options_by_text.get(text)
    if parsed is None:
        try:
            value = json.loads(text or "{}")
        except ValueError:
            value = {}
        parsed = value if isinstance(value, dict) else {}
        if len(_options_by_text) > 256:
            _options_by_text.clear()
        _options_by_text[text] = parsed
    return parsed


_options_by_text: dict[str | None, dict] = {}


def resolve(plpy, ref: str) -> tuple[str, int, str, Signature, int]:
    """(name, version, sha256, signature, output index) of a model reference (definer code only)."""
    return resolve_options(plpy, ref)[:5]




def _session(plpy, sha256: str, plans: Plans, ref: str):
    """The process's session for a model's bytes, read through dbdl.model_bytes (SECURITY DEFINER),
    so the same code serves the definer functions and predict_into, which runs as the caller; the
    bytes are checked against their sha256 before a session is built from them."""
    def load() -> bytes:
        rows = plpy.execute(plans.get(plpy, "bytes", "SELECT dbdl.model_bytes($1) AS b", ["pg_catalog.text"]),
                            [sha256])
        if not rows or rows[0]["b"] is None:
            raise ModelNotFound(f"model bytes {sha256[:12]}… are missing; re-register the model")
        return bytes(rows[0]["b"])

    return SESSIONS.get(sha256, load, threads=1, model=ref)


# -- decoding inputs -------------------------------------------------------------------------------
# What PostgreSQL hands dbdl for one input of a batch becomes one runtime Column (values in their
# own dtype, which build_feeds casts to the model's input dtype):
#   - array_send() bytes of a numeric or boolean array: 1-D, multi-dimensional (the dimensions
#     travel in array_send's header), or 1-D of different lengths across rows (ragged: offsets);
#   - bytea: 4 bytes per value (little-endian float32, dbdl's meaning since 0002) or 1 byte per value
#     (uint8: image pixels); the length tells which, as the model's input has a fixed size;
#   - record_send() bytes of ROW(a, b, …), the form of predict('m', a, b): one field per model
#     input, each field one of the above or a scalar number.

import struct as _struct

_BYTEA_OID = 17
_CAST_HINT = ("cast the column to a numeric array, e.g. col::real[] (float models), col::bigint[] (token ids) or "
              "col::boolean[] (boolean inputs)")


def _no_rows(n: int) -> Column:
    return Column(np.zeros(0, dtype=np.float32), np.zeros(n, dtype=bool), None, None, None)


def array_column(blobs: Sequence[bytes | None], ref: str = "the model", what: str = "features") -> Column:
    """One input of a batch from array_send() bytes (dbdl_udf.pgarray decodes them): a NULL array
    or a NULL element makes the row NULL (valid False). Rows of one shape give a fixed-width Column
    (``shape`` the array's dimensions); 1-D rows of different lengths a ragged one (flat values of
    the valid rows and ``offsets``)."""
    arrays = pgarray.decode_arrays(blobs, f"{what} for model {ref!r}", _CAST_HINT)
    if arrays.elem is None or not arrays.valid.any():
        return _no_rows(len(blobs))
    if arrays.offsets is None:
        return Column(arrays.values, arrays.valid, arrays.width, None, arrays.dims)
    shapes = [s for s in arrays.shapes if s is not None]
    if any(len(s) > 1 for s in shapes):
        first, other = shapes[0], next(s for s in shapes if s != shapes[0])
        raise ShapeMismatch(f"the {what} for model {ref!r} are arrays of different shapes in one batch ({list(first)} "
                            f"and {list(other)}); only one-dimensional rows may differ in length — store every row "
                            "with the model's input shape")
    return Column(arrays.values, arrays.valid, None, arrays.offsets, None)


def decode_bytea(blobs: Sequence[bytes | None], width: int | None, ref: str = "the model",
                 what: str = "features", legacy: bool = False) -> Column:
    """One input of a batch from bytea values of ``width`` values each: 4 * width bytes are
    little-endian float32 (dbdl's meaning of a bytea since the first release), width bytes are
    uint8 (compact images). A model input has one fixed size, so the two never meet."""
    n = len(blobs)
    valid = np.array([b is not None for b in blobs], dtype=bool)
    if not valid.any():
        return _no_rows(n)
    if not width and legacy:  # no model at hand: dbdl's first meaning, little-endian float32
        width = len(next(b for b in blobs if b is not None)) // 4 or None
    if not width:
        raise DTypeMismatch(f"model {ref!r} takes {what} of variable length, which a bytea cannot carry; pass an "
                            "integer array (e.g. col::bigint[])")
    rows = np.flatnonzero(valid)
    lengths = {len(blobs[i]) for i in rows}
    bad = lengths - {width, 4 * width}
    if bad:
        raise ShapeMismatch(f"model {ref!r} takes {width} {what} per row as a bytea of {4 * width} bytes (little-endian "
                            f"float32) or of {width} bytes (uint8); got a row of {min(bad)} bytes")
    joined = b"".join(blobs[i] for i in rows)
    if lengths == {width}:
        values = np.zeros((n, width), dtype=np.uint8)
        values[rows] = np.frombuffer(joined, dtype=np.uint8).reshape(-1, width)
    else:
        values = np.zeros((n, width), dtype=np.float32)
        for i in rows:
            blob = blobs[i]
            values[i] = np.frombuffer(blob, dtype="<f4" if len(blob) == 4 * width else np.uint8)
    return Column(values.reshape(-1), valid, width, None, (width,))


def decode_scalars(blobs: Sequence[bytes | None], oid: int, ref: str = "the model", what: str = "features") -> Column:
    """One input of one value per row from the binary form of a scalar column (a field of a ROW)."""
    n = len(blobs)
    valid = np.array([b is not None for b in blobs], dtype=bool)
    rows = np.flatnonzero(valid)
    if oid == pgarray.NUMERIC:
        values = np.zeros(n, dtype=np.float64)
        for i in rows:
            values[i] = pgarray.numeric_value(_struct.pack(">i", len(blobs[i])) + blobs[i], 0)[0]
        return Column(values, valid, 1, None, (1,))
    if oid not in pgarray.ELEMENTS:
        raise DTypeMismatch(f"model {ref!r} takes numbers or booleans; its {what} are of type "
                            f"{pgarray.type_name(oid)} — {_CAST_HINT}")
    dtype = np.dtype(pgarray.ELEMENTS[oid].dtype)
    values = np.zeros(n, dtype=dtype.newbyteorder("="))
    if len(rows):
        values[rows] = np.frombuffer(b"".join(blobs[i] for i in rows), dtype=dtype)
    return Column(values, valid, 1, None, (1,))


def decode_column(oid: int, blobs: Sequence[bytes | None], width: int | None, ref: str = "the model",
                  what: str = "features", legacy_bytea: bool = False) -> Column:
    """One input from values of SQL type ``oid``: an array's array_send() bytes, a bytea, or the
    binary form of a scalar."""
    if oid == _BYTEA_OID:
        return decode_bytea(blobs, width, ref, what, legacy_bytea)
    if oid in pgarray.ARRAY_OIDS or oid not in pgarray.ELEMENTS and _looks_like_array(blobs):
        return array_column(blobs, ref, what)
    return decode_scalars(blobs, oid, ref, what)


def _looks_like_array(blobs) -> bool:
    # an array type dbdl has no table entry for (text[], …): array_column names its element type
    first = next((b for b in blobs if b is not None), None)
    return first is not None and len(first) >= 12 and _struct.unpack_from(">i", first, 4)[0] in (0, 1)


def decode_record(blobs: Sequence[bytes | None], signature: Signature, ref: str = "the model") -> list[Column]:
    """The inputs of a batch from record_send() bytes of ROW(a, b, …): field k feeds the model's
    input k. A NULL field makes the row's prediction NULL."""
    n = len(blobs)
    first = next((b for b in blobs if b is not None), None)
    if first is None:
        return [_no_rows(n) for _ in signature.inputs]
    count = _struct.unpack_from(">i", first, 0)[0]
    oids: list[int] | None = None
    fields: list[list[bytes | None]] = [[None] * n for _ in range(count)]
    for i, blob in enumerate(blobs):
        if blob is None:
            continue
        if _struct.unpack_from(">i", blob, 0)[0] != count:
            raise InvalidArgument(f"inputs for model {ref!r}: rows of one batch have different numbers of columns")
        pos, row_oids = 4, []
        for k in range(count):
            oid, length = _struct.unpack_from(">Ii", blob, pos)
            pos += 8
            row_oids.append(oid)
            if length >= 0:
                fields[k][i] = blob[pos:pos + length]
                pos += length
        if oids is None:
            oids = row_oids
        elif row_oids != oids:
            raise DTypeMismatch(f"inputs for model {ref!r}: rows of one batch have columns of different types")
    inputs = signature.inputs
    if count != len(inputs):
        listed = ", ".join(f"{s.name} ({s.dtype}{list(s.shape)})" for s in inputs)
        raise ShapeMismatch(f"model {ref!r} takes {len(inputs)} input{'s' if len(inputs) != 1 else ''} ({listed}); got "
                            f"{count} columns — pass one column per input, in the model's input order: "
                            f"dbdl.predict('{ref}', {', '.join(f'<{s.name}>' for s in inputs)})")
    columns = []
    for k, (spec, values) in enumerate(zip(inputs, fields)):
        column = decode_column(oids[k], values, spec.per_row, ref, f"input {spec.name!r} (column {k + 1})")
        columns.append(column)
    return columns


def decode_inputs(blobs: Sequence[bytes | None], signature: Signature, ref: str = "the model") -> list[Column]:
    """The Columns of a batch from the bytes dbdl.cache_fill is handed (what dbdl.cache_input
    gives for one argument): array_send() bytes, or a bytea of float32 or uint8 values. A byte
    string must have one meaning, since its digest is its cache key: bytes of a bytea's length
    (4w or w for a model of w features) that also read as a well-formed array_send() are refused."""
    first = next((b for b in blobs if b is not None), None)
    if first is None:
        return [_no_rows(len(blobs))]
    width = signature.n_features
    if width and all(b is None or len(b) in (width, 4 * width) for b in blobs):
        if any(b is not None and pgarray.well_formed(b) for b in blobs):
            raise ShapeMismatch(f"an input for model {ref!r} has the length of a bytea row ({4 * width} or {width} "
                                "bytes) and is also a well-formed array_send() value; it has no single meaning, so "
                                "it is not cached — score it without the cache")
        return [decode_bytea(blobs, width, ref)]
    return [array_column(blobs, ref)]


def score_columns(session, signature: Signature, columns: list[Column], output: int, ref: str,
                  kind: str | None = None, options: dict | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """(outputs of the rows that can be scored, which rows those are): a row is scored when every
    column has it (no NULL array, element or field). onnxruntime runs a few thousand rows at a time
    (they stay in cache); sequences are padded per slice, to its longest row."""
    valid = valid_rows(columns)
    if not valid.any():
        return None, valid
    n = len(valid)
    if n <= _ORT_ROWS:
        y = run_batch(session, signature, columns, output, ref, options)
    else:
        parts = []
        for start in range(0, n, _ORT_ROWS):
            rows = np.zeros(n, dtype=bool)
            rows[start:start + _ORT_ROWS] = True
            if (rows & valid).any():
                parts.append(run_batch(session, signature, [c.take(rows) for c in columns], output, ref, options))
        y = np.concatenate(parts)
    if kind is not None:
        y = shape_outputs(y, kind, ref, signature.outputs[output].name, signature)
    return y, valid


# -- row at a time ---------------------------------------------------------------------------------


@sql_errors
def predict(plpy, model: str | None, data: bytes | None, packed: bool, kind: str) -> Any:
    """predict / predict_array / predict_class for one row.

    ``data`` is ``array_send(features)`` when ``packed``, else a bytea (float32 or uint8)."""
    if model is None or data is None:
        return None
    name, version, sha, signature, output, options = resolve_options(plpy, model)
    return _predict_resolved(plpy, DEFINER, model, f"{name}@{version}", sha, signature, output, lambda: options,
                             data, packed, kind)


def _predict_resolved(plpy, plans: Plans, model: str, ref: str, sha: str, signature: Signature, output: int,
                      options: Callable[[], dict], data: bytes, packed: bool, kind: str) -> Any:
    """predict's body once ``model`` is resolved (to ``ref``, ``sha``, …); ``options()`` gives the
    model's stored options (the row path reads them only when it gets here)."""
    if packed:
        x = pgarray.float4_vector(data, signature.n_features)
        if x is not None and len(signature.inputs) == 1 and signature.inputs[0].dtype == "float32":
            # the classic case — one float32 input, one real[] of its width — is what
            # build_feeds would make of it: feed it directly (a third of a row's time)
            session, signature = _session(plpy, sha, plans, ref)
            spec = signature.inputs[0]
            y = run_feeds(session, signature, {spec.name: x.reshape((1, *spec.shape))}, 1, output, ref)
            return _one_value(y, signature, output, ref, kind, model)
        column = (Column(x.reshape(-1), _TRUE, x.shape[1], None, (x.shape[1],)) if x is not None
                  else array_column([bytes(data)], ref))
    else:
        column = decode_bytea([bytes(data)], signature.n_features, ref)
    if not column.valid[0]:
        return None
    session, signature = _session(plpy, sha, plans, ref)
    return _one_result(session, signature, [column], output, ref, kind, options(), model)


@sql_errors
def predict_fields(plpy, model: str | None, data: bytes | None, kind: str) -> Any:
    """predict('m', a, b) / predict('m', ROW(a, b)) for one row: ``data`` is record_send() of the
    row of inputs, one field per model input."""
    if model is None or data is None:
        return None
    name, version, sha, signature, output, options = resolve_options(plpy, model)
    ref = f"{name}@{version}"
    columns = decode_record([bytes(data)], signature, ref)
    if not all(c.valid[0] for c in columns):
        return None
    session, signature = _session(plpy, sha, DEFINER, ref)
    return _one_result(session, signature, columns, output, ref, kind, options, model)


def _one_result(session, signature: Signature, columns: list[Column], output: int, ref: str, kind: str,
                options: dict, model: str) -> Any:
    """The value predict / predict_array / predict_class / predict_text return for one row."""
    _check_text_kind(signature, output, ref, kind, model)
    y, valid = score_columns(session, signature, columns, output, ref, None, options)
    return None if y is None else _one_value(y, signature, output, ref, kind, model)


def _check_text_kind(signature: Signature, output: int, ref: str, kind: str, model: str) -> None:
    spec = signature.outputs[output]
    if kind == "scalar" and spec.is_text:
        raise ShapeMismatch(
            f"model {ref!r} output {spec.name!r} holds text (class names) and dbdl.predict returns real; call "
            f"dbdl.predict_text({model!r}, features) for the class name (db.sql() plans predict({model!r}, ...) "
            "into that form itself)")


def _one_value(y: np.ndarray, signature: Signature, output: int, ref: str, kind: str, model: str) -> Any:
    """One row's raw output as what the SQL function returns."""
    _check_text_kind(signature, output, ref, kind, model)
    y = shape_outputs(y, "scalar" if kind == "text" else kind, ref, signature.outputs[output].name, signature)
    if kind == "text":
        value = y[0]
        return value if isinstance(value, str) else _number_text(value)
    return y[0].tolist()


def _number_text(value) -> str:
    """A numeric output as text for predict_text: whole numbers without '.0' (class ids)."""
    v = float(value)
    return str(int(v)) if v.is_integer() else repr(v)


# -- row at a time: the cached path of 0013 -------------------------------------------------------
# dbdl.predict / predict_array / predict_class on a real[] or a bytea call dbdl.predict_*_row with a
# token of the caller's registry view (dbdl_udf.pgrow): a reference is resolved once per view, the
# common model runs through a bound onnxruntime call. These functions are SECURITY INVOKER without
# a SET clause (a SET costs a setting change per row): they read the registry only through
# dbdl.resolve_model and dbdl.model_bytes, as predict_into does, in plans of the INVOKER context
# that name every function with its schema.

_ROW_TOKEN = ("pg_catalog.byteacat(pg_catalog.pg_snapshot_send(pg_catalog.pg_current_snapshot()), "
              "pg_catalog.timestamptz_send(pg_catalog.transaction_timestamp()))")
_ROW_RESOLVE = f"SELECT r.name, r.version, r.sha256, r.signature, {_ROW_TOKEN} AS token FROM dbdl.resolve_model($1) AS r"


@sql_errors
def predict_row(plpy, model: str | None, data: bytes | None, packed: bool, token: bytes | None, kind: str) -> Any:
    """predict (``scalar``) / predict_array / predict_class of one row: ``data`` is array_send() of a
    real[] when ``packed``, else a bytea; ``token`` names the caller's registry view (the same
    expression as ``_ROW_TOKEN``, computed by the SQL wrapper)."""
    if model is None or data is None:
        return None
    entry = ROWS.entries.get(model) if token == ROWS.token else None
    if entry is None:
        entry = _row_entry(plpy, model, token)
    if entry.scorer is not None:
        value = entry.scorer.score(data, packed, kind)
        if value is not NOT_FAST:
            return value
    value = _row_general(plpy, entry, model, data, packed, kind)
    return vector_text(value) if kind == "array" else value  # predict_vector_row returns a real[] literal


def _row_entry(plpy, model: str, token: bytes | None) -> RowEntry:
    """``model`` resolved under the current snapshot, kept for the view when ``token`` is its own."""
    try:
        row = plpy.execute(INVOKER.get(plpy, "row_resolve", _ROW_RESOLVE, ["pg_catalog.text"]), [model])[0]
    except plpy.SPIError as exc:  # dbdl.resolve_model's own error (unknown model, bad reference), as it is
        message = exc.args[0] if exc.args else str(exc)
        spidata = getattr(exc, "spidata", None) or (None, None, None)  # (code, detail, hint, …)
        extra = {k: v for k, v in (("detail", spidata[1]), ("hint", spidata[2])) if v is not None}
        plpy.error(message.removeprefix("plpy.Error: "), sqlstate=exc.sqlstate, **extra)
    name, version, sha = row["name"], int(row["version"]), row["sha256"]
    signature = _signatures.get(sha) or Signature.from_json(row["signature"])
    output = signature.output_index(catalog.parse_ref(model)[2])
    ref = f"{name}@{version}"
    session, signature = _session(plpy, sha, INVOKER, ref)
    entry = RowEntry(name, version, sha, signature, output, session, ROWS.scorer(session, signature, sha, output))
    ROWS.keep(token, bytes(row["token"]), model, entry)
    return entry


def _row_general(plpy, entry: RowEntry, model: str, data: bytes, packed: bool, kind: str) -> Any:
    """Any other row or model: predict's own path, as the caller (options read through the catalog)."""
    def options() -> dict:
        if entry.options is None:
            entry.options = _catalog_options(plpy, entry.name)
        return entry.options

    return _predict_resolved(plpy, INVOKER, model, entry.ref, entry.sha256, entry.signature, entry.output, options,
                             data, packed, kind)


@sql_errors
def registry_changed(plpy) -> None:
    """The body of the registry's statement triggers (0013): this process wrote dbdl.models or
    dbdl.model_versions, so the row path forgets its resolutions, and caches none in this transaction."""
    rows = plpy.execute("SELECT pg_catalog.timestamptz_send(pg_catalog.transaction_timestamp()) AS t")
    ROWS.forget(bytes(rows[0]["t"]))


# -- batched ----------------------------------------------------------------------------------

_TRUE = np.ones(1, dtype=bool)
_ORT_ROWS = 2048
_COLUMNAR_MAX = 256


_MAX_BATCH_ROWS = 1 << 20  # a batch is held in memory as Python rows: a million is already plenty


@sql_errors
def predict_into(plpy, model: str, query: str, target: str, kind: str, batch_rows: int) -> int:
    """Score every row of ``query`` (key, features) in batches and insert (key, prediction) into
    ``target``, which is created when missing. Runs with the caller's privileges and through the
    caller's search_path: the query is the caller's own SQL, but everything dbdl adds around it
    names its functions, operators and types with their schema (an object the caller's path
    finds first, a public.array_send(real[]) say, must not run in another role's call)."""
    if kind not in OUTPUT_KINDS:
        raise InvalidArgument(f"predict_into's kind must be one of {', '.join(map(repr, OUTPUT_KINDS))}; got {kind!r} — "
                              "e.g. CALL predict_into('m', 'SELECT id, feats FROM t', 'scores', kind => 'class')")
    if batch_rows is None or not 1 <= batch_rows <= _MAX_BATCH_ROWS:
        raise InvalidArgument(f"predict_into's batch_rows must be a number of rows from 1 to {_MAX_BATCH_ROWS}; got "
                              f"{batch_rows!r} — leave it out for the default (8192)")
    if not isinstance(query, str) or not isinstance(target, str):
        raise InvalidArgument("predict_into needs a query (text returning a key and the features) and a target "
                              "table name; got NULL")
    query = checked_query(plpy, query, "predict_into")
    name, version, sha, signature, output = resolve_definer(plpy, model)
    ref = f"{name}@{version}"
    if signature.outputs[output].is_text:
        raise ShapeMismatch(f"model {ref!r} output {signature.outputs[output].name!r} holds text (class names) and "
                            "predict_into writes numbers; score it with INSERT INTO target SELECT key, "
                            f"dbdl.predict_text({model!r}, features) FROM …, or name a numeric output, e.g. "
                            f"'{name}:probabilities'")
    session, signature = _session(plpy, sha, INVOKER, ref)
    options = _catalog_options(plpy, name)
    out_sql = _result_type(kind)
    target_sql = _quote_target(plpy, target)
    described = plpy.execute(f"SELECT * FROM (\n{query}\n) AS q LIMIT 0")
    columns = described.colnames()
    if len(columns) < 2:
        raise ShapeMismatch(f"the query must return two columns, a key and the features (or a key and one column "
                            f"per model input); it returns {len(columns)} ({', '.join(columns)})")
    key_type = int(described.coltypes()[0])
    key_col = plpy.quote_ident(columns[0])
    feat_types = [int(t) for t in described.coltypes()[1:]]
    feats = [plpy.quote_ident(c) for c in columns[1:]]
    if len(feats) > 1 and len(feats) != len(signature.inputs):
        raise ShapeMismatch(f"the query must return two columns, a key and the features, or a key and one column "
                            f"per model input: model {ref!r} takes {len(signature.inputs)} input"
                            f"{'s' if len(signature.inputs) != 1 else ''} "
                            f"({', '.join(s.name for s in signature.inputs)}); the query returns a key and "
                            f"{len(feats)} feature columns")
    sent = [_sent_form(plpy, f"q.{c}", t) for c, t in zip(feats, feat_types)]
    as_bytes = ", ".join(f"{expr} AS f{j}" for j, (expr, _) in enumerate(sent))
    plpy.execute(f"CREATE TABLE IF NOT EXISTS {target_sql} AS SELECT q.{key_col} AS {key_col}, NULL::{out_sql} "
                 f"AS prediction FROM (\n{query}\n) AS q WITH NO DATA")
    width = pgblocks.fits(signature, options, feat_types)
    if width is not None and _native_ready(plpy):
        pinned = f"{name}@{version}" + (f":{signature.outputs[output].name}" if output else "")
        return _predict_blocks(plpy, pinned, (session, signature, output, ref, options), kind, batch_rows, width,
                               f"SELECT q.{key_col} AS k, q.{feats[0]} AS f FROM (\n{query}\n) AS q",
                               target_sql, _type_name(plpy, key_type), out_sql)
    key_array = _array_type(plpy, key_type)
    width_out = signature.outputs[output].per_row
    columnar = kind == "array" and width_out is not None and width_out <= _COLUMNAR_MAX
    # integer keys and the predictions go as array literals (parsed by array_in in C) rather
    # than Python lists, which PL/Python converts one element at a time through text
    key_text = key_type in _INTEGER_KEYS
    key_param = "pg_catalog.text" if key_text else key_array
    if columnar:
        # one array parameter per output value: PostgreSQL unnests them side by side and builds
        # each row's real[] in C, about 4x faster than slicing one long array per row
        cols = ", ".join(f"c{j}" for j in range(width_out))
        # PL/Python turns every float of a list into text and parses it back; one array literal
        # per column, written by str.join and parsed by array_in in C, is several times cheaper
        unnests = ", ".join(f"pg_catalog.unnest(${j}::pg_catalog.float4[])" for j in range(3, width_out + 3))
        insert = plpy.prepare(
            f"INSERT INTO {target_sql} SELECT k, CASE WHEN n THEN NULL ELSE ARRAY[{cols}] END "
            f"FROM ROWS FROM (pg_catalog.unnest($1::{key_array}), pg_catalog.unnest($2), {unnests}) "
            f"AS u(k, n, {cols})",
            [key_param, "pg_catalog.bool[]"] + ["pg_catalog.text"] * width_out)
    elif kind == "array":
        first = "(((i OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog.*) $4) OPERATOR(pg_catalog.+) 1)"
        insert = plpy.prepare(
            f"INSERT INTO {target_sql} SELECT k[i], CASE WHEN n[i] THEN NULL ELSE "
            f"v[{first} : (i OPERATOR(pg_catalog.*) $4)] END "
            f"FROM (SELECT $1 AS k, $2 AS v, $3 AS n) AS b, pg_catalog.generate_subscripts($1, 1) AS i",
            [key_array, "pg_catalog.float4[]", "pg_catalog.bool[]", "pg_catalog.int4"])
    else:
        insert = plpy.prepare(
            f"INSERT INTO {target_sql} SELECT u.k, u.p FROM ROWS FROM (pg_catalog.unnest($1::{key_array}), "
            f"pg_catalog.unnest($2::{out_sql}[])) AS u(k, p)",
            [key_param, "pg_catalog.text"])
    cursor = plpy.cursor(f"SELECT q.{key_col} AS k, {as_bytes} FROM (\n{query}\n) AS q")
    total = 0
    while True:
        rows = cursor.fetch(batch_rows)
        if not rows:
            break
        keys = [r["k"] for r in rows]
        cols = [decode_column(oid, [r[f"f{j}"] for r in rows],
                                  signature.n_features if len(sent) == 1 else signature.inputs[j].per_row, ref,
                                  "features" if len(sent) == 1 else f"input {signature.inputs[j].name!r}")
                    for j, (_, oid) in enumerate(sent)]
        out, valid = score_columns(session, signature, cols, output, ref, kind, options)
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


# -- predict_into in blocks: the C helper dbdl.predict_rows and dbdl.score_block (dbdl_udf.pgblocks) --

#: the job of the predict_into call running now, by pinned model reference: dbdl.score_block scores
#: its blocks with the session, signature, output and options predict_into resolved once
_BLOCK_JOBS: dict[str, tuple] = {}
#: whether this session's server loads the installed C helper (asked once per session)
_native_loads: dict[str, bool] = {}
_NATIVE_OFF = {"off", "false", "0", "no"}


def _native_ready(plpy) -> bool:
    """The C helper is installed (migration 0012's installer step), loads in this server, speaks
    this code's block format, and SET dbdl.native = off does not turn it away."""
    row = plpy.execute(INVOKER.get(plpy, "native_check", pgblocks.NATIVE_CHECK, []))[0]
    if not row["installed"] or (row["setting"] or "").strip().lower() in _NATIVE_OFF:
        return False
    if "loads" not in _native_loads:
        try:
            with plpy.subtransaction():
                version = plpy.execute("SELECT dbdl.native_version() AS v")[0]["v"]
            _native_loads["loads"] = version == pgblocks.NATIVE_VERSION
        except plpy.SPIError:  # the library file is gone or unreadable: the row-batch path
            _native_loads["loads"] = False
    return _native_loads["loads"]


def _predict_blocks(plpy, pinned: str, job: tuple, kind: str, batch_rows: int, width: int, query: str,
                    target_sql: str, key_type: str, out_sql: str) -> int:
    """predict_into on the block path: straight into a plain target table (as COPY writes), else
    INSERT … SELECT over dbdl.predict_rows; the rows it inserted."""
    # a block holds batch_rows rows' features, at most 64 MiB of them (the C side allows 1 GiB)
    args = [pinned, kind, query, width, max(1, min(batch_rows, pgblocks.MAX_BLOCK_VALUES // width))]
    _BLOCK_JOBS[pinned] = job
    try:
        into = INVOKER.get(plpy, "predict_into_table", pgblocks.INTO_TABLE_SQL, pgblocks.TYPES + ["pg_catalog.text"])
        n = plpy.execute(into, args + [target_sql])[0]["n"]
        if n is not None:
            return int(n)
        plan = plpy.prepare(pgblocks.insert_sql(target_sql, key_type, out_sql), pgblocks.TYPES)
        return plpy.execute(plan, args).nrows()
    finally:
        _BLOCK_JOBS.pop(pinned, None)


@sql_errors
def score_block(plpy, model: str | None, kind: str | None, rows: int | None, block: bytes | None) -> bytes:
    """The body of dbdl.score_block(model, kind, rows, block), SECURITY DEFINER: one block of float32
    features (what dbdl.predict_rows packs) scored, as the result block it unpacks (dbdl_udf.pgblocks).
    Inside a predict_into call it scores with that call's pinned model (the caller could read and
    score it already); called on its own it resolves ``model``."""
    kind = pgblocks.check_kind(kind)
    if not isinstance(model, str):
        raise InvalidArgument("dbdl.score_block needs a model reference; got NULL")
    job = _BLOCK_JOBS.get(model)
    if job is None:  # definer code: the registry read directly, plans of the definer context
        name, version, sha, signature, output, options = resolve_options(plpy, model)
        ref = f"{name}@{version}"
        session, signature = _session(plpy, sha, DEFINER, ref)
        job = (session, signature, output, ref, options)
    session, signature, output, ref, options = job
    width = pgblocks.width_of(signature)
    if width is None or signature.outputs[output].is_text:
        raise DTypeMismatch(f"dbdl.score_block scores models of one float32 input of a fixed width with a numeric "
                            f"output; model {ref!r} is not one — use CALL dbdl.predict_into")
    x = pgblocks.read_block(block, rows, width, ref)
    spec = signature.inputs[0]
    step = pgblocks.ORT_ROWS
    parts = [run_feeds(session, signature, {spec.name: x[start:start + step]}, len(x[start:start + step]), output, ref)
             for start in range(0, rows, step)]
    y = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return pgblocks.write_result(shape_outputs(y, kind, ref, signature.outputs[output].name, signature), kind)


_TYPE_NAME = ("SELECT pg_catalog.format('%I.%I', n.nspname, t.typname) AS name FROM pg_catalog.pg_type t "
              "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.typnamespace "
              "WHERE t.oid OPERATOR(pg_catalog.=) $1")


def _type_name(plpy, oid: int) -> str:
    """The schema-qualified name of type ``oid`` (the key column's, for predict_rows' result)."""
    return plpy.execute(INVOKER.get(plpy, "type_name", _TYPE_NAME, ["pg_catalog.oid"]), [oid])[0]["name"]


def _catalog_options(plpy, name: str) -> dict:
    """A model's stored options, read by invoker code through the view dbdl_user may read."""
    rows = plpy.execute(INVOKER.get(plpy, "catalog_options", "SELECT c.options FROM dbdl.model_catalog AS c "
                                    "WHERE c.name OPERATOR(pg_catalog.=) $1 LIMIT 1", ["pg_catalog.text"]), [name])
    return _parse_options(rows[0]["options"]) if rows else {}


_TYPE_CATEGORY = "SELECT t.typcategory AS c FROM pg_catalog.pg_type t WHERE t.oid OPERATOR(pg_catalog.=) $1"


def _sent_form(plpy, expr: str, oid: int) -> tuple[str, int]:
    """How predict_into reads one feature column: (SQL expression, the oid decode_column takes).
    Arrays as array_send() bytes, bytea as it is, a scalar as a one-element array."""
    if oid == _BYTEA_OID:
        return expr, oid
    rows = plpy.execute(INVOKER.get(plpy, "type_category", _TYPE_CATEGORY, ["pg_catalog.oid"]), [oid])
    if rows and rows[0]["c"] == "A":
        return f"pg_catalog.array_send({expr})", oid
    return f"pg_catalog.array_send(ARRAY[{expr}])", 1000 if oid == 16 else 1021


#: numpy dtype of a kind's result value -> the PostgreSQL type predict_into writes it as
_PG_RESULT = {"float32": "pg_catalog.float4", "int64": "pg_catalog.int8"}


def _result_type(kind: str) -> str:
    """The prediction column's type for a kind (dbdl_udf.kinds): real, real[] or bigint."""
    k = KINDS[kind]
    return _PG_RESULT[k.dtype] + ("[]" if k.vector else "")


_INTEGER_KEYS = {20, 21, 23}  # int8, int2, int4
_ARRAY_TYPE = ("SELECT pg_catalog.format('%I.%I', n.nspname, a.typname) AS name FROM pg_catalog.pg_type t "
               "JOIN pg_catalog.pg_type a ON a.oid OPERATOR(pg_catalog.=) t.typarray "
               "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) a.typnamespace "
               "WHERE t.oid OPERATOR(pg_catalog.=) $1")


def _array_type(plpy, oid: int) -> str:
    """The schema-qualified name of the array type of type ``oid``: the key column's type exactly,
    never what its name means on the caller's path."""
    rows = plpy.execute(INVOKER.get(plpy, "array_type", _ARRAY_TYPE, ["pg_catalog.oid"]), [oid])
    if not rows:
        raise DTypeMismatch(f"the key column's type (oid {oid}) has no array type; use a key of a plain type such "
                            "as bigint or text")
    return rows[0]["name"]


def _keys_arg(keys: list, as_text: bool):
    """Integer keys as one array literal (NULL keys included); other key types as the list."""
    if not as_text:
        return keys
    return "{" + ",".join("NULL" if k is None else str(k) for k in keys) + "}"


def _array_literal(values: list, kind: str) -> str:
    """'{…}' for a real[] or bigint[] parameter, NULL elements included."""
    fmt = "{:.9g}".format if kind != "class" else str
    return "{" + ",".join("NULL" if v is None else fmt(v) for v in values) + "}"


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
    plan = INVOKER.get(plpy, "resolve_definer", "SELECT r.name, r.version, r.sha256, r.signature "
                       "FROM dbdl.resolve_model($1) AS r", ["pg_catalog.text"])
    row = plpy.execute(plan, [ref])[0]
    signature = Signature.from_json(row["signature"])
    output = catalog.parse_ref(ref)[2]
    return row["name"], int(row["version"]), row["sha256"], signature, signature.output_index(output)


@sql_errors
def resolve_row(plpy, ref: str) -> dict:
    """The body of dbdl.resolve_model(ref): name, version, sha256, signature JSON."""
    name, version, sha, signature, _ = resolve(plpy, ref)
    return {"name": name, "version": version, "sha256": sha, "signature": signature.to_json()}


# -- registration from SQL ------------------------------------------------------------------


_SOURCES = ("onnx", "torch", "sklearn")


@sql_errors
def register_model(plpy, name: str, onnx_bytes: bytes, description: str | None, promote: bool,
                   source: str | None = "onnx", torch_program: bytes | None = None) -> int:
    """The body of dbdl.register_model (both overloads; the Python client's db.models.register
    uses the one with ``source`` and ``torch_program``). Every fact stored about the bytes —
    sha256, signature, parameters, FLOPs, opset — is computed here from the bytes themselves,
    never taken from the caller. The bytes are the model as the user gave it: the server makes the
    registration rewrites itself (dbdl_udf.adapt: opset upgrade, ZipMap, batch axis), stores the
    rewritten bytes that run and keeps the given ones as the original."""
    import hashlib

    from .adapt import adapt
    from .runtime import make_session, signature_of

    catalog.check_name(name)
    if onnx_bytes is None or not bytes(onnx_bytes):
        raise InvalidModel("the model bytes are empty; pass the contents of a .onnx file, e.g. pg_read_binary_file(...)")
    source = source or "onnx"
    if source not in _SOURCES:
        raise InvalidName(f"source must be one of {', '.join(_SOURCES)}; got {source!r}")
    if torch_program is not None and source != "torch":
        raise InvalidModel("a torch program belongs to a model registered from torch; pass source => 'torch' or "
                           "no torch_program")
    given = bytes(onnx_bytes)
    # before onnx's checker or onnxruntime look at the bytes: nothing in them may open a file
    check_model_bytes(given)
    _facts(given)  # the checker's verdict on the bytes as given
    adapted = adapt(given, lambda b: make_session(b, threads=1))
    data = adapted.onnx_bytes
    check_model_bytes(data)
    n_params, flops, opset = _facts(data)
    signature = signature_of(make_session(data, threads=1))
    return catalog.store_version(
        PlpyRunner(plpy, DEFINER), name, sha256=hashlib.sha256(data).hexdigest(), onnx_bytes=data, source=source,
        signature=signature, n_params=n_params, flops_per_row=flops, opset=opset,
        torch_program=None if torch_program is None else bytes(torch_program), description=description,
        promote=True if promote is None else bool(promote), original_bytes=adapted.original,
        rewrites=adapted.rewrites,
    )


@sql_errors
def admin(plpy, action: str, name: str, version: int | None) -> int:
    """drop / promote / rollback from SQL; returns the versions dropped or the version now serving."""
    runner = PlpyRunner(plpy, DEFINER)
    if action == "drop":
        return catalog.drop(runner, name, version)
    if action == "promote":
        catalog.promote(runner, name, version)
        return int(version)
    return catalog.rollback(runner, name)


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
        raise InvalidModel(f"the ONNX checker rejects the model: {str(exc).strip()[:300]}; fix what it names and "
                           "re-export (onnx.checker.check_model(onnx.load(path), full_check=True) shows the same)") from exc
    n_params, flops = estimate_cost(proto)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return n_params, flops, opset


# -- model options and the result cache from SQL ---------------------------------------------


@sql_errors
def set_model_options(plpy, name: str, options: str) -> None:
    """The body of CALL dbdl.set_model_options(name, '{"cache": true}')."""
    catalog.set_options(PlpyRunner(plpy, DEFINER), catalog.check_name(name), catalog.parse_options(options))


@sql_errors
def clear_cache(plpy, name: str) -> None:
    """The body of CALL dbdl.clear_cache(name)."""
    runner = PlpyRunner(plpy, DEFINER)
    catalog.model_options(runner, name)  # an unknown model is an error, not a silent no-op
    catalog.clear_cache(runner, name)


@sql_errors
def set_calibration(plpy, key: str, value: float) -> None:
    """The body of dbdl.set_calibration: one constant of the planner's cost model."""
    import math

    if not isinstance(key, str) or not catalog.NAME_RE.fullmatch(key):
        raise InvalidName(f"calibration key {key!r} is not valid; keys are names like 'udf_row_s'")
    if value is None or not math.isfinite(value):
        raise InvalidName(f"calibration value for {key!r} must be a finite number, got {value!r}")
    runner = PlpyRunner(plpy, DEFINER)
    runner.execute("DELETE FROM dbdl.calibration WHERE key = ?", (key,))
    runner.execute("INSERT INTO dbdl.calibration (key, value) VALUES (?, ?)", (key, float(value)))


# -- training export -----------------------------------------------------------------------------
# CALL train_export(...) (migrations/postgres/0011_train_export_inputs.sql) runs as the caller: the source
# query is the caller's own SQL, run with the caller's rights; the rules live in dbdl_udf.datasets.

_INT_OIDS = {16, 20, 21, 23}  # bool, int8, int2, int4
_FLOAT_OIDS = {700, 701, 1700}  # real, double precision, numeric
#: the array types a dataset's features may be (pgarray's but boolean[]): int2[] int4[] int8[] real[] float8[] numeric[]
_ARRAY_OIDS = {a for a, e in pgarray.ARRAY_OIDS.items() if e != 16}
_EXPORT_ROWS = 1024


class _PlpySink:
    """dbdl_udf.datasets.export's backend: a cursor over the query, array_send() bytes decoded by
    numpy, rows staged in a temporary table and written in row-id order with one INSERT.

    It runs as the caller, through the caller's search_path: every function, operator and type in
    the SQL it adds is qualified, and the catalog is read and written through definer functions."""

    #: where the dataset tables go: dbdl_admin may create there, and no definer function looks there
    schema = "dbdl_data"

    def __init__(self, plpy) -> None:
        self.plpy = plpy
        self._insert = None
        #: a multi-dimensional array column's dimensions (real[3][32][32] -> (3, 32, 32)), else None
        self.dims = None

    def _q(self, name: str) -> str:
        return self.plpy.quote_ident(name)

    def describe(self, query: str) -> list[tuple[str, str, str]]:
        result = self.plpy.execute(f"SELECT * FROM (\n{query}\n) AS q LIMIT 0")
        out = []
        for name, oid in zip(result.colnames(), result.coltypes()):
            kind = ("int" if oid in _INT_OIDS else "float" if oid in _FLOAT_OIDS
                    else "array" if oid in _ARRAY_OIDS else "bytes" if oid == _BYTEA_OID else "other")
            type_name = self.plpy.execute(f"SELECT pg_catalog.format_type({int(oid)}, NULL) AS t")[0]["t"]
            out.append((name, kind, type_name))
        return out

    def batches(self, query, features, label, kinds, ragged=False):
        from .datasets import array_send_matrix, array_send_ragged, decode_bytes, dense_rows

        kind = kinds[features[0]]
        if len(features) == 1 and kind == "bytes":
            expr = f"q.{self._q(features[0])}"  # uint8 values, one per byte, as they are
        elif len(features) == 1 and kind == "array":
            expr = f"pg_catalog.array_send(q.{self._q(features[0])})"
        else:
            expr = ("pg_catalog.array_send(ARRAY[" + ", ".join(f"q.{self._q(c)}::pg_catalog.float8" for c in features)
                    + "])")
        is_int = kinds[label] == "int"
        cursor = self.plpy.cursor(f"SELECT {expr} AS f, q.{self._q(label)} AS l FROM (\n{query}\n) AS q")
        pos = 0
        while True:
            rows = cursor.fetch(_EXPORT_ROWS)
            if not rows:
                return
            blobs = [r["f"] for r in rows]
            if kind == "bytes":
                matrix, valid = decode_bytes(blobs)
                if not ragged:
                    matrix = dense_rows(matrix, valid, pos)
            elif ragged:
                matrix, valid = array_send_ragged(blobs, pos)
            else:
                matrix, valid, self.dims = array_send_matrix(blobs, pos)
            raw = [r["l"] for r in rows]
            labels_valid = np.array([v is not None for v in raw], dtype=bool)
            labels = np.array([0 if v is None else (int(v) if is_int else float(v)) for v in raw],
                              dtype=np.int64 if is_int else np.float64)
            pos += len(rows)
            yield matrix, valid, labels, labels_valid

    def stage(self, first_pos, features, labels, label_dtype):
        if self._insert is None:
            label_sql = _LABEL_TYPES[label_dtype]
            self.plpy.execute("DROP TABLE IF EXISTS pg_temp.dbdl_stage")
            self.plpy.execute(f"CREATE TEMP TABLE pg_temp.dbdl_stage (pos pg_catalog.int8, features pg_catalog.bytea, "
                              f"label {label_sql}) ON COMMIT DROP")
            self._insert = self.plpy.prepare(
                "INSERT INTO pg_temp.dbdl_stage SELECT u.pos, u.features, u.label FROM ROWS FROM "
                f"(pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2), pg_catalog.unnest($3::{label_sql}[])) "
                "AS u(pos, features, label)",
                ["pg_catalog.text", "pg_catalog.bytea[]", "pg_catalog.text"])
        from .datasets import Ragged

        n = len(features)
        if isinstance(features, Ragged):  # variable-length rows: each its own little-endian bytes
            item = features.values.itemsize
            buf = features.values.tobytes()
            bounds = (features.offsets * item).tolist()
            blobs = [buf[bounds[i]:bounds[i + 1]] for i in range(n)]
        else:
            size = features.itemsize * (features.size // n)
            buf = features.tobytes()
            blobs = [buf[i * size:(i + 1) * size] for i in range(n)]
        positions = "{" + ",".join(map(str, range(first_pos, first_pos + n))) + "}"
        fmt = str if label_dtype == "int64" else "{:.9g}".format
        self.plpy.execute(self._insert, [positions, blobs, "{" + ",".join(map(fmt, labels.tolist())) + "}"])

    #: fixed-shape datasets are written blocked (format 2: datasets.stored_block_rows samples per row)
    blocked = True

    def finish(self, table, row_ids, codes, width, dtype, label_dtype, block_rows=0):
        label_sql = _LABEL_TYPES[label_dtype]
        name, table = table, sqltext.quote_qualified(table)
        # the source positions in row-id order, with their splits: a = (row_id, code, ord)
        assignment = ("FROM pg_temp.dbdl_stage s JOIN ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), "
                      "pg_catalog.unnest($2::pg_catalog.int2[])) WITH ORDINALITY AS a(row_id, code, ord) "
                      "ON s.pos OPERATOR(pg_catalog.=) (a.ord OPERATOR(pg_catalog.-) 1)")
        if block_rows:
            # one row per block of block_rows samples: their bytes one after another, their labels
            self.plpy.execute(f"CREATE TABLE {table} (block_id pg_catalog.int8 PRIMARY KEY, features pg_catalog.bytea "
                              f"NOT NULL, labels {label_sql}[] NOT NULL)")
            insert = (f"INSERT INTO {table} SELECT a.row_id OPERATOR(pg_catalog./) {int(block_rows):d}, "
                      "pg_catalog.string_agg(s.features, ''::pg_catalog.bytea ORDER BY a.row_id), "
                      f"pg_catalog.array_agg(s.label ORDER BY a.row_id) {assignment} GROUP BY 1 ORDER BY 1")
        else:
            self.plpy.execute(f"CREATE TABLE {table} (row_id pg_catalog.int8 PRIMARY KEY, features pg_catalog.bytea "
                              f"NOT NULL, label {label_sql} NOT NULL, split pg_catalog.text NOT NULL)")
            insert = (f"INSERT INTO {table} SELECT a.row_id, s.features, s.label, "
                      "(ARRAY['train', 'validation', 'test']::pg_catalog.text[])[a.code OPERATOR(pg_catalog.+) 1] "
                      f"{assignment} ORDER BY a.row_id")
        # tensors are incompressible bytes: store them out of line without trying pglz on each
        self.plpy.execute(f"ALTER TABLE {table} ALTER COLUMN features SET STORAGE EXTERNAL")
        plan = self.plpy.prepare(insert, ["pg_catalog.text", "pg_catalog.text"])
        self.plpy.execute(plan, ["{" + ",".join(map(str, row_ids.tolist())) + "}",
                                 "{" + ",".join(map(str, codes.tolist())) + "}"])
        self.plpy.execute("DROP TABLE pg_temp.dbdl_stage")
        self._insert = None
        self.plpy.execute(f"ANALYZE {table}")
        self.share(name)

    def blocked_view(self, table, block_rows, row_bytes, counts):
        """One row per sample of a blocked table: its slice of the block's bytes (substring of an
        EXTERNAL value fetches only the chunks it covers), its label, its split."""
        R, size = int(block_rows), int(row_bytes)
        train, validation = int(counts[0]), int(counts[0]) + int(counts[1])
        row_id = f"b.block_id OPERATOR(pg_catalog.*) {R:d} OPERATOR(pg_catalog.+) (u.i OPERATOR(pg_catalog.-) 1)"
        return (f"SELECT ({row_id})::pg_catalog.int8 AS row_id, pg_catalog.substring(b.features, "
                f"((u.i OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog.*) {size:d} OPERATOR(pg_catalog.+) 1)"
                f"::pg_catalog.int4, {size:d}) AS features, u.label, (CASE WHEN {row_id} OPERATOR(pg_catalog.<) "
                f"{train:d} THEN 'train' WHEN {row_id} OPERATOR(pg_catalog.<) {validation:d} THEN 'validation' "
                f"ELSE 'test' END)::pg_catalog.text AS split FROM {sqltext.quote_qualified(table)} b CROSS JOIN "
                "LATERAL pg_catalog.unnest(b.labels) WITH ORDINALITY AS u(label, i)")

    def ddl(self, sql: str) -> None:
        self.plpy.execute(sql)

    def share(self, relation: str) -> None:
        self.plpy.execute(f"GRANT SELECT ON {sqltext.quote_qualified(relation)} TO dbdl_user")

    # the catalog: dbdl.datasets is the owner's, read and written by definer functions
    def dataset(self, name: str):
        from .datasets import COLUMNS, _info

        plan = INVOKER.get(self.plpy, "dataset_info", f"SELECT {COLUMNS} FROM dbdl.dataset_info($1)",
                           ["pg_catalog.text"])
        rows = self.plpy.execute(plan, [name])
        return _info(tuple(rows[0][c.strip()] for c in COLUMNS.split(","))) if rows else None

    def record(self, values: dict) -> None:
        plan = INVOKER.get(self.plpy, "record_dataset", "SELECT dbdl.record_dataset($1)", ["pg_catalog.text"])
        self.plpy.execute(plan, [json.dumps(values)])


_LABEL_TYPES = {"int64": "pg_catalog.int8", "float32": "pg_catalog.float4"}


@sql_errors
def train_export(plpy, query, name, label, features, shape, dtype, train_fraction, validation_fraction,
                 seed, ragged=False) -> None:
    """The body of CALL dbdl.train_export(...)."""
    from . import datasets

    spec = datasets.check_spec(
        query, name, "label" if label is None else label, features, shape, dtype,
        0.8 if train_fraction is None else train_fraction,
        0.1 if validation_fraction is None else validation_fraction, 0 if seed is None else seed,
        bool(ragged))
    spec = dataclasses.replace(spec, query=checked_query(plpy, spec.query, "train_export"))
    datasets.export(_PlpySink(plpy), spec)


# -- the result cache: on PostgreSQL only these two definer functions write it ---------------------
# Every dbdl_user shares the cache, so no caller may write it: a caller hands dbdl.cache_fill the
# inputs it missed; the server keys each by the SHA-256 of its own bytes (what dbdl.cache_key
# computes for the look-up), scores it with its own session and adds it, counting it in the same
# transaction. Nothing a caller computed, keyed or claimed ever becomes a cached output.

_FILL_INSERT = (
    "INSERT INTO dbdl.result_cache (cache_id, key, output, label, gen) "
    "SELECT $1, u.k, u.o::real[], u.l, $2 FROM ROWS FROM (pg_catalog.unnest($3::pg_catalog.bytea[]), "
    "pg_catalog.unnest($4::pg_catalog.text[]), pg_catalog.unnest($5::bigint[])) AS u(k, o, l) "
    "ORDER BY u.k USING OPERATOR(pg_catalog.<) ON CONFLICT DO NOTHING RETURNING 1")
_F9 = "{:.9g}".format  # nine significant digits: every float32 reads back exactly


@sql_errors
def cache_fill(plpy, ref: str, inputs: list | None) -> list[tuple[bytes, str, int | None]]:
    """The body of dbdl.cache_fill(ref, inputs bytea[]): (key, output as a real[] literal, label)
    for every input that could be scored, now in the cache."""
    import hashlib

    from . import resultcache

    name, version, sha, signature, output, stored = resolve_options(plpy, ref)
    model_ref = f"{name}@{version}"
    runner = PlpyRunner(plpy, DEFINER)
    options = catalog.model_options(runner, name)
    if not options["cache"]:
        raise ConfigurationError(f"model {name!r} does not keep a result cache; switch it on with "
                                 f"CALL dbdl.set_model_options('{name}', '{{\"cache\": true}}')")
    blobs = [None if b is None else bytes(b) for b in (inputs or [])]
    present = [b for b in blobs if b is not None]
    if not present:
        return []
    columns = decode_inputs(present, signature, model_ref)
    session, signature = _session(plpy, sha, DEFINER, model_ref)
    out, valid = score_columns(session, signature, columns, output, model_ref, "array", stored)
    if out is None:
        return []
    keys = [hashlib.sha256(b).digest() for b, ok in zip(present, valid.tolist()) if ok]
    literals = ["{" + ",".join(map(_F9, row)) + "}" for row in out.tolist()]
    labels = [None] * len(keys) if out.shape[1] == 1 else np.argmax(out, axis=1).tolist()
    entry = resultcache.find_entry(runner, (name, version, sha, output), int(options["cache_max_bytes"]),
                                   width=out.shape[1], create=True)
    plan = DEFINER.get(plpy, "cache_fill", _FILL_INSERT,
                 ["pg_catalog.int4", "pg_catalog.int8", "pg_catalog.bytea[]", "pg_catalog.text[]",
                  "pg_catalog.int8[]"])
    inserted = len(plpy.execute(plan, [entry.cache_id, entry.gen, keys, literals, labels]))
    resultcache.count_fill(runner, entry, misses=len(present), inserted=inserted)
    _FILLED[0] += inserted
    return list(zip(keys, literals, labels))


#: rows this server process added to dbdl.result_cache since it last analyzed the table
_FILLED = [0]
_CACHE_ROWS = ("SELECT c.reltuples AS n FROM pg_catalog.pg_class c "
               "WHERE c.oid OPERATOR(pg_catalog.=) 'dbdl.result_cache'::pg_catalog.regclass")


def _analyze_grown_cache(plpy) -> None:
    """ANALYZE the cache's look-up columns once this process's fills have grown the table by a
    tenth since its statistics were taken. The next statement's look-up (the keys joined with the
    rows of one cache_id) is planned on them: with the new entry's rows not yet in the statistics
    (autovacuum analyzes later) PostgreSQL estimated one matching row and chose a nested loop over
    every key for each cached row — minutes for 200k keys, where the hash join takes a second."""
    filled = _FILLED[0]
    if filled < 1000:
        return
    rows = plpy.execute(DEFINER.get(plpy, "cache_rows", _CACHE_ROWS, []))
    known = float(rows[0]["n"]) if rows else 0.0
    if filled * 10 >= max(known, 0.0):
        plpy.execute("ANALYZE dbdl.result_cache (cache_id, key)")
        _FILLED[0] = 0


@sql_errors
def cache_record(plpy, ref: str, hits: int | None, misses: int | None, refresh: list | None) -> None:
    """The body of dbdl.cache_record(ref, hits, misses, refresh bytea[]): count a statement's hits
    (and the misses it scored without dbdl.cache_fill), move the rows it hit to the current
    generation, and evict down to the bound. A caller can only claim counts (they are statistics)
    and refresh rows that exist; it cannot add or change a cached row."""
    from . import resultcache

    name, version, sha, signature, output = resolve(plpy, ref)
    runner = PlpyRunner(plpy, DEFINER)
    options = catalog.model_options(runner, name)
    entry = resultcache.find_entry(runner, (name, version, sha, output), int(options["cache_max_bytes"]))
    if entry is None or not options["cache"]:
        return
    refreshed = 0
    keys = [bytes(k) for k in (refresh or []) if k is not None]
    if keys:
        plan = DEFINER.get(plpy, "cache_refresh",
                           "UPDATE dbdl.result_cache SET gen = $1 WHERE cache_id OPERATOR(pg_catalog.=) $2 "
                           "AND gen OPERATOR(pg_catalog.<) ($1 OPERATOR(pg_catalog.-) 1) "
                           "AND key OPERATOR(pg_catalog.=) ANY ($3) RETURNING 1",
                           ["pg_catalog.int8", "pg_catalog.int4", "pg_catalog.bytea[]"])
        refreshed = len(plpy.execute(plan, [entry.gen, entry.cache_id, keys]))
    resultcache.record(runner, entry, hits=max(0, int(hits or 0)), misses=max(0, int(misses or 0)),
                       refreshed=refreshed)
    _analyze_grown_cache(plpy)


@sql_errors
def record_dataset(plpy, row_json: str) -> None:
    """The body of dbdl.record_dataset: the catalog row of a dataset train_export just wrote,
    checked against the table it names (which must be the next version's, in dbdl_data)."""
    from . import datasets

    try:
        datasets.record(PlpyRunner(plpy, DEFINER), json.loads(row_json), _table_rows(plpy))
    except Error:
        raise  # sql_errors raises it with its own class
    except (ValueError, TypeError, KeyError) as exc:  # not JSON, or not the row's form
        raise InvalidName(f"dbdl.record_dataset takes the JSON train_export writes: {exc}") from exc


def _table_rows(plpy):
    def count(table: str) -> int | None:
        quoted = sqltext.quote_qualified(table)
        rows = plpy.execute(DEFINER.get(
            plpy, "dataset_table", "SELECT c.relkind FROM pg_catalog.pg_class c "
            "WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)", ["pg_catalog.text"]), [quoted])
        if not rows or rows[0]["relkind"] != "r":
            return None
        # a plain table (no view): reading it runs nothing of its owner's, RLS does not bind the owner
        return int(plpy.execute(f"SELECT pg_catalog.count(*) AS n FROM ONLY {quoted}")[0]["n"])
    return count


@sql_errors
def forget_dataset(plpy, name: str) -> None:
    """The body of dbdl.forget_dataset: db.datasets.drop's catalog row (the caller drops the table)."""
    from . import datasets

    datasets.forget(PlpyRunner(plpy, DEFINER), name)
