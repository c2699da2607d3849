"""dmPython as dbdl uses it: the URL, the connection, the cursor description's types, LOBs, errors.

Nothing here needs a server: every function takes what dmPython hands over (its type objects, its
exceptions, its values) and is tested on those (tests/test_dm8_driver.py). What dmPython does, read
from its source (dmPython 2.5.22, ``var.c``: ``dmVar_TypeBySQLType``; ``vLob.c``) and its interface
document (eco.dameng.com, "dmPython 接口"):

- ``dmPython.connect(user=, password=, server=, port=, schema=, login_timeout=, …)``; an unknown
  keyword is a TypeError, a failure a ``dmPython.DatabaseError`` whose one argument is a
  ``dmPython.DmError`` (``code``, ``message`` "[CODE:-70028]Create SOCKET connection failure").
- ``cursor.description``'s type codes are dmPython's type objects: INT, SMALLINT and TINYINT are
  ``NUMBER``; BIGINT ``BIGINT``; REAL/FLOAT(≤24) ``REAL``; DOUBLE ``DOUBLE``; DEC/NUMBER(p,s)
  ``DECIMAL``; BIT ``BOOLEAN``; CHAR ``FIXED_STRING``, VARCHAR ``STRING``; BINARY ``FIXED_BINARY``,
  VARBINARY ``BINARY``; BLOB ``BLOB``, CLOB ``CLOB``; DATE, TIME, TIMESTAMP theirs.
- A BLOB or CLOB value comes back as ``bytes``/``str`` (dmPython ≥ 2.5 reads the LOB while it
  fetches the row) or, from older releases and LOB variables, as a ``dmPython.LOB`` with ``read()``
  and ``size()``, valid only until the cursor fetches again: :func:`plain` reads it at once.
- ``cursor.arraysize`` sizes the buffers the statement is defined with: set it before ``execute``.
"""

from __future__ import annotations

import decimal
import ipaddress
import re
from typing import Any, Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

import pyarrow as pa

from ...errors import ConcurrentChange, ConnectionError, Error, PermissionDenied, QueryError, error_class

try:
    import dmPython
except ImportError as _exc:  # pragma: no cover - reported by Backend.open
    raise ImportError("dmPython (pip install 'dbdl[dm8]')") from _exc

DEFAULT_PORT = 5236
#: the URL's query options and what dmPython.connect takes them as (value parser)
OPTIONS: dict[str, Any] = {
    "schema": str,                  # the session's current schema (unqualified names)
    "login_timeout": int,           # the connection handshake's limit
    "connection_timeout": int,      # a statement's limit (seconds; 0: none)
    "app_name": str,                # the session's application name (V$SESSIONS)
    "ssl_path": str,                # folder of the client's certificates
    "dmsvc_path": str,              # folder of a dm_svc.conf naming the server (host: its service name)
}


def parse_url(url: str) -> dict[str, Any]:
    """``dm://user:password@host:port?schema=…`` as dmPython.connect's keyword arguments.

    User and password are percent-decoded (a password holding ``@``, ``:`` or ``/`` is written
    ``%40``, ``%3A``, ``%2F``); the port defaults to 5236; an IPv6 host is written in brackets
    (``dm://u:p@[::1]:5236``) and handed to dmPython in brackets too. Autocommit is dbdl's: off."""
    if not isinstance(url, str) or not url.lower().startswith("dm://"):
        raise ConnectionError(f"a DM8 URL starts with dm://, as in dm://SYSDBA:password@localhost:5236; got {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConnectionError(f"the DM8 URL {_redacted(url)!r} does not parse ({exc}); write "
                              "dm://user:password@host:port, the port a number (5236 by default)") from exc
    if parts.path not in ("", "/"):
        raise ConnectionError(f"the DM8 URL {_redacted(url)!r} names a path ({parts.path!r}); a DM8 server is one "
                              "database: name the schema with ?schema=NAME instead")
    host = parts.hostname
    if not host:
        raise ConnectionError(f"the DM8 URL {_redacted(url)!r} names no host; write dm://user:password@host:port")
    if parts.username is None or not unquote(parts.username):
        raise ConnectionError(f"the DM8 URL {_redacted(url)!r} names no user; write dm://user:password@host:port")
    try:
        server = f"[{ipaddress.IPv6Address(host)}]" if ":" in host else host
    except ValueError as exc:
        raise ConnectionError(f"the DM8 URL {_redacted(url)!r} has host {host!r}, which is no IPv6 address") from exc
    kwargs: dict[str, Any] = {"user": unquote(parts.username), "password": unquote(parts.password or ""),
                              "server": server, "port": DEFAULT_PORT if port is None else port,
                              "autoCommit": False}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in OPTIONS:
            raise ConnectionError(f"unknown option {key!r} in the DM8 URL {_redacted(url)!r}; it takes "
                                  + ", ".join(sorted(OPTIONS)))
        try:
            kwargs[key] = OPTIONS[key](value)
        except ValueError as exc:
            raise ConnectionError(f"option {key}={value!r} of the DM8 URL must be a whole number") from exc
    return kwargs


def address(kwargs: dict[str, Any]) -> str:
    """host:port as a message names it."""
    return f"{kwargs['server']}:{kwargs['port']}"


def connect(url: str, *, read_only: bool = False) -> Any:
    """A dmPython connection, autocommit off (read-only: access_mode DSQL_MODE_READ_ONLY); a dbdl
    ConnectionError naming host, port and the DM error code where the server cannot be reached or
    refuses the login."""
    kwargs = parse_url(url)
    if read_only:
        kwargs["access_mode"] = dmPython.DSQL_MODE_READ_ONLY
    try:
        return dmPython.connect(**kwargs)
    except dmPython.Error as exc:
        code, message = code_and_message(exc)
        raise ConnectionError(
            f"cannot connect to DM8 at {address(kwargs)} as {kwargs['user']!r} (DM error {code}: {message}); "
            "is the DM8 server running, is the port right, are user and password right?") from exc


def _redacted(url: str) -> str:
    """The URL without its password (messages quote URLs)."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


# -- cursor description -> Arrow --------------------------------------------------------------------

_INTS = (dmPython.NUMBER, dmPython.BIGINT)
_FLOATS = (dmPython.REAL, dmPython.DOUBLE, dmPython.DECIMAL)
_TEXTS = (dmPython.STRING, dmPython.FIXED_STRING, dmPython.LONG_STRING, dmPython.CLOB)
_BYTES = (dmPython.BINARY, dmPython.FIXED_BINARY, dmPython.LONG_BINARY, dmPython.BLOB)
_LOBS = (dmPython.BLOB, dmPython.CLOB)


def arrow_type(description: Sequence[Any]) -> pa.DataType:
    """The Arrow type of one column of ``cursor.description`` (name, type_code, display_size,
    internal_size, precision, scale, null_ok): INT/SMALLINT/TINYINT/BIGINT int64, REAL float32,
    DOUBLE float64, DECIMAL with scale 0 (and precision ≤ 18) int64, other decimals float64, BIT bool,
    character types and CLOB string, binary types and BLOB binary, DATE date32, TIMESTAMP
    timestamp[us]; anything else string (its text)."""
    code = description[1]
    if code is dmPython.BIGINT or code is dmPython.NUMBER:
        return pa.int64()
    if code is dmPython.REAL:
        return pa.float32()
    if code is dmPython.DOUBLE:
        return pa.float64()
    if code is dmPython.DECIMAL:
        precision, scale = _int(description, 4), _int(description, 5)
        return pa.int64() if scale == 0 and 0 < precision <= 18 else pa.float64()
    if code is dmPython.BOOLEAN:
        return pa.bool_()
    if code in _TEXTS:
        return pa.string()
    if code in _BYTES:
        return pa.binary()
    if code is dmPython.DATE:
        return pa.date32()
    if code is dmPython.TIMESTAMP:
        return pa.timestamp("us")
    return pa.string()


def kind(description: Sequence[Any]) -> str:
    """The column's kind as dbdl_udf.datasets' rules name them: int, float, bytes or other."""
    t = arrow_type(description)
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_binary(t):
        return "bytes"
    return "other"


def type_name(description: Sequence[Any]) -> str:
    """The column's type as a message names it (dmPython.DOUBLE → DOUBLE)."""
    return getattr(description[1], "__name__", str(description[1])).rsplit(".", 1)[-1]


#: dmPython's type objects -> the names DM8's SQL gives them, for messages ("got VARCHAR")
_SQL_NAMES = {"NUMBER": "INT", "STRING": "VARCHAR", "FIXED_STRING": "CHAR", "LONG_STRING": "TEXT",
              "BINARY": "VARBINARY", "FIXED_BINARY": "BINARY", "LONG_BINARY": "IMAGE", "BOOLEAN": "BIT"}


def form(description: Sequence[Any]) -> tuple[str, str]:
    """What a predict call's argument is (Backend.argument_forms): "number", "text", "boolean",
    "bytes" or "other", and its type as DM8's SQL names it."""
    name = type_name(description)
    t = arrow_type(description)
    what = ("boolean" if pa.types.is_boolean(t) else "number" if pa.types.is_integer(t) or pa.types.is_floating(t)
            else "text" if pa.types.is_string(t) else "bytes" if pa.types.is_binary(t) else "other")
    return what, _SQL_NAMES.get(name, name)


def _int(description: Sequence[Any], i: int) -> int:
    try:
        return int(description[i] or 0)
    except (TypeError, ValueError, IndexError):
        return 0


def is_lob(description: Sequence[Any]) -> bool:
    return description[1] in _LOBS


def plain(value: Any) -> Any:
    """A fetched value as plain Python: a LOB object (``read()``/``size()``) read whole into bytes
    or str; a DECIMAL (dmPython's ``decimal.Decimal``) an int where it has no fraction digits, else a
    float (dbdl's catalog code does arithmetic and JSON with them); anything else as it is."""
    if value is None or isinstance(value, (bytes, str, int, float)):
        return value
    if isinstance(value, decimal.Decimal):
        return int(value) if value.is_finite() and value.as_tuple().exponent >= 0 else float(value)
    read = getattr(value, "read", None)
    if read is not None and hasattr(value, "size"):
        data = read()
        return bytes(data) if isinstance(data, (bytearray, memoryview)) else data
    return value


def column_names(description: Sequence[Sequence[Any]]) -> list[str]:
    """Result column names: those DM8 gives all upper case (an unquoted name, folded) lower-cased,
    a name of mixed case (quoted) as it is; repeats numbered as PostgreSQL's run_query does."""
    seen: dict[str, int] = {}
    out = []
    for d in description:
        name = str(d[0])
        if name == name.upper():
            name = name.lower()
        k = seen.get(name, 0)
        seen[name] = k + 1
        out.append(name if k == 0 else f"{name}_{k}")
    return out


def rows_to_arrow(description: Sequence[Sequence[Any]], rows: Sequence[Sequence[Any]]) -> pa.Table:
    """Fetched rows as an Arrow table typed by the description (``arrow_type``); LOBs read."""
    names = column_names(description)
    arrays = []
    for j, d in enumerate(description):
        t = arrow_type(d)
        values = [plain(r[j]) for r in rows]
        try:
            arrays.append(pa.array(_coerce(values, t), type=t))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            arrays.append(pa.array([None if v is None else str(v) for v in values], pa.string()))
    return pa.Table.from_arrays(arrays, names=names)


def _coerce(values: list, t: pa.DataType) -> list:
    """DECIMAL values (decimal.Decimal or text, by dmPython's release) as the Arrow type's numbers."""
    if pa.types.is_integer(t):
        return [None if v is None else int(v) for v in values]
    if pa.types.is_floating(t):
        return [None if v is None else float(v) for v in values]
    if pa.types.is_boolean(t):
        return [None if v is None else bool(int(v)) if isinstance(v, (str, int)) else bool(v) for v in values]
    return values


# -- errors ---------------------------------------------------------------------------------------

_CODE = re.compile(r"\[CODE:(-?\d+)\]")
#: "dbdl.<Class>: message", as dbdl.fail (RAISE_APPLICATION_ERROR(-20001, …)) raises it
_DBDL_ERROR = re.compile(r"dbdl\.([A-Z]\w*): (.*)", re.S)
#: DM's unique-constraint violation (code -6602: "违反表[…]唯一性约束" / "Violate unique constraint")
_UNIQUE = re.compile(r"唯一性约束|unique constraint|unique key|primary key", re.I)
UNIQUE_CODES = (-6602,)
#: DM's refusals of a right ("没有…权限", "no … privilege", "insufficient privileges")
_DENIED = re.compile(r"权限|privilege|permission denied|not authori[sz]ed", re.I)
#: a write that another session's lock or change made fail (deadlock, lock wait timed out)
_CONFLICT = re.compile(r"死锁|deadlock|锁超时|lock (wait )?time ?out|serializ", re.I)


def code_and_message(exc: BaseException) -> tuple[int | None, str]:
    """The DM error code and message of a dmPython exception: from its DmError (``code``,
    ``message``) where it carries one, else read from the text ("[CODE:-6602]…")."""
    first = exc.args[0] if getattr(exc, "args", None) else None
    code = getattr(first, "code", None)
    message = getattr(first, "message", None)
    if message is None:
        message = str(first) if first is not None else str(exc)
    message = str(message).strip()
    if code is None:
        found = _CODE.search(message)
        code = int(found[1]) if found else None
    return (int(code) if code is not None else None), message


def translate(exc: BaseException) -> Error:
    """A dmPython error as dbdl's: ``dbdl.<Class>: message`` in DM's text (dbdl.fail in
    relation-centric SQL, the migrations' own checks) → that class; a unique-constraint violation
    → QueryError saying "duplicate key" (Backend.write retries a concurrent first registration on
    it); a refused right → PermissionDenied naming the roles; a deadlock or lock timeout →
    ConcurrentChange; anything else → QueryError with DM's code and message."""
    if isinstance(exc, Error):
        return exc
    code, message = code_and_message(exc)
    text = _CODE.sub("", message).strip()
    found = _DBDL_ERROR.search(text)
    if found:
        try:
            cls = error_class(found[1])
        except Exception:  # noqa: BLE001 - an unknown class name: the message stays whole
            cls = None
        if cls is not None:
            return cls(found[2].strip())
    where = f"DM error {code}: " if code is not None else ""
    if code in UNIQUE_CODES or (isinstance(exc, dmPython.IntegrityError) and _UNIQUE.search(text)) \
            or (code is None and _UNIQUE.search(text)):
        return QueryError(f"duplicate key: another row holds the same key ({where}{text})")
    if _DENIED.search(text):
        return PermissionDenied(
            f"{where}{text}; ask an administrator for GRANT DBDL_USER TO <user> (predict, read the catalog) or "
            "GRANT DBDL_ADMIN TO <user> (also register models and export datasets)")
    if _CONFLICT.search(text):
        return ConcurrentChange(f"another session changed the same rows at the same moment; run it again ({where}{text})")
    return QueryError(f"{where}{text}")
