"""The registry's rules, shared by the client and the database server.

The same functions serve ``db.models`` (through a client Backend) and ``SELECT
dbdl.register_model(...)`` (through PL/Python's ``plpy``): anything with ``fetchall(sql, params)``
and ``execute(sql, params)`` taking ``?`` placeholders. Callers own the transaction.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from .errors import ConfigurationError, InvalidName, ModelNotFound
from .runtime import Signature

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_REF_RE = re.compile(r"(?P<name>[^@:]*)(?:@(?P<version>[^:]*))?(?::(?P<output>.*))?", re.S)
MAX_REF_CHARS = 512  # a name (63) + a version + an ONNX output name; longer text is not a reference
MAX_VERSION = 2**31 - 1  # versions are stored as integer


class SQLRunner(Protocol):
    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...


def check_name(name: object, what: str = "model") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidName(
            f"{what} name {name!r} is not valid; use 1-63 letters, digits or underscores, "
            f"starting with a letter or underscore (e.g. 'fraud_v2')"
        )
    return name


def parse_ref(text: object) -> tuple[str, int | None, str | None]:
    """'name', 'name@3' or 'name@3:output' -> (name, version, output)."""
    if not isinstance(text, str):
        raise InvalidName(f"a model reference must be text like 'fraud' or 'fraud@3', got {text!r}")
    if len(text) > MAX_REF_CHARS:
        raise InvalidName(f"model reference {text[:40]!r}… is {len(text)} characters long; a reference is "
                          f"'name', 'name@version' or 'name@version:output', at most {MAX_REF_CHARS} characters")
    m = _REF_RE.fullmatch(text.strip())
    if m is None:  # several ':' or '@' in odd places
        raise InvalidName(f"model reference {text!r} is not valid; write 'name', 'name@3' or 'name@3:output'")
    name = check_name(m["name"])
    version = None
    if m["version"] is not None:
        digits = m["version"]
        if not (digits.isascii() and digits.isdigit()) or not 1 <= int(digits) <= MAX_VERSION:
            raise InvalidName(
                f"model reference {text!r} has version {m['version']!r}; a version is a whole number from 1, "
                f"as in '{name}@1'"
            )
        version = int(digits)
    output = m["output"]
    if output is not None and not output.strip():
        raise InvalidName(f"model reference {text!r} names an empty output after ':'; name one of the model's "
                          f"outputs, as in '{name}:probabilities', or leave out the ':' for the first output")
    return name, version, output

def _one(db: SQLRunner, sql: str, params: Sequence[Any] = ()) -> tuple | None:
    rows = db.fetchall(sql, params)
    return rows[0] if rows else None


@dataclass(frozen=True)
class Pinned:
    name: str
    version: int
    sha256: str
    signature: Signature


def resolve(db: SQLRunner, name: str, version: int | None = None) -> Pinned:
    """Pin a model to a stored version (the serving one when ``version`` is None)."""
    if version is None:
        row = _one(db, "SELECT serving_version FROM dbdl.models WHERE name = ?", (name,))
        if row is None:
            raise not_found(db, name)
        version = row[0]
    row = _one(db, "SELECT sha256, signature FROM dbdl.model_versions WHERE name = ? AND version = ?", (name, version))
    if row is None:
        raise not_found(db, name, version)
    return Pinned(name, int(version), row[0], Signature.from_json(row[1]))


def not_found(db: SQLRunner, name: str, version: int | None = None) -> ModelNotFound:
    if version is not None:
        versions = [r[0] for r in db.fetchall(
            "SELECT version FROM dbdl.model_versions WHERE name = ? ORDER BY version", (name,))]
        if versions:
            return ModelNotFound(
                f"model {name!r} has no version {version} (its versions: {', '.join(map(str, versions))}); "
                f"use one of those, e.g. '{name}@{versions[-1]}', or '{name}' for the serving version"
            )
    names = [r[0] for r in db.fetchall("SELECT name FROM dbdl.models ORDER BY name")]
    known = ", ".join(repr(n) for n in names[:20]) or "none"
    return ModelNotFound(
        f"no model named {name!r} (registered models: {known}); register it first: "
        f"db.models.register({name!r}, model) in Python, `dbdl register URL {name} model.onnx`, or on PostgreSQL "
        f"SELECT dbdl.register_model('{name}', <onnx bytes>)"
    )


#: the conflict target is spelled (the key of each table) so that DM8's dialect can write the upsert
#: as MERGE INTO (backends/dm8/dialect.py); DuckDB and PostgreSQL take it as written
_STORE_BLOB = "INSERT INTO dbdl.blobs (sha256, bytes, size_bytes) VALUES (?, ?, ?) ON CONFLICT (sha256) DO NOTHING"


def store_version(db: SQLRunner, name: str, *, sha256: str, onnx_bytes: bytes, source: str, signature: Signature,
                  n_params: int, flops_per_row: int, opset: int, torch_program: bytes | None = None,
                  description: str | None = None, promote: bool = True, original_bytes: bytes | None = None,
                  rewrites: Sequence[Any] = ()) -> int:
    """Add ``onnx_bytes`` as the next version of ``name`` (or return the version that has them).

    ``original_bytes`` are the bytes as given when registration rewrote them (dbdl_udf.adapt),
    kept in dbdl.blobs too; ``rewrites`` what was rewritten (``adapt.Rewrite``s)."""
    check_name(name)
    # concurrent registrations of one name: the models row exists (or waits for the session that is
    # creating it), then its lock serializes them, so each reads the next_version the previous left
    db.execute("INSERT INTO dbdl.models (name, next_version) VALUES (?, 1) ON CONFLICT (name) DO NOTHING", (name,))
    next_version, serving = lock_model(db, name)
    same = _one(db, "SELECT version FROM dbdl.model_versions WHERE name = ? AND sha256 = ?", (name, sha256))
    if same is not None:
        version = int(same[0])
    else:
        version = int(next_version)
        # another model may be storing the same bytes at this moment
        db.execute(_STORE_BLOB, (sha256, onnx_bytes, len(onnx_bytes)))
        original_sha = None
        if original_bytes is not None:
            original_sha = hashlib.sha256(original_bytes).hexdigest()
            db.execute(_STORE_BLOB, (original_sha, original_bytes, len(original_bytes)))
        values = {"name": name, "version": version, "sha256": sha256, "source": source,
                  "signature": signature.to_json(), "n_features": signature.n_features, "n_params": int(n_params),
                  "flops_per_row": int(flops_per_row), "opset": int(opset), "torch_program": torch_program,
                  "description": description, "original_sha256": original_sha,
                  "rewrites": json.dumps([r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in rewrites])
                  if rewrites else None}
        # columns without a value are left to their default (NULL): no typed NULL parameters needed
        columns = [c for c, v in values.items() if v is not None]
        db.execute(f"INSERT INTO dbdl.model_versions ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                   tuple(values[c] for c in columns))
        db.execute("UPDATE dbdl.models SET next_version = ? WHERE name = ?", (version + 1, name))
    if (promote or serving is None) and serving != version:
        set_serving(db, name, version)
    return version


def lock_model(db: SQLRunner, name: str) -> tuple[int, int | None] | None:
    """Lock the model's row until the transaction ends (PostgreSQL: a row lock that makes a
    concurrent writer of the same model wait; DuckDB: a write that makes a concurrent writer's
    commit fail as a conflict, which the client retries); (next_version, serving_version), None
    for an unknown model. Every writer of a model calls it first, so they cannot deadlock."""
    db.execute("UPDATE dbdl.models SET next_version = next_version WHERE name = ?", (name,))
    return _one(db, "SELECT next_version, serving_version FROM dbdl.models WHERE name = ?", (name,))


def set_serving(db: SQLRunner, name: str, version: int) -> None:
    db.execute("UPDATE dbdl.models SET serving_version = ? WHERE name = ?", (version, name))
    seq = _one(db, "SELECT coalesce(max(seq), 0) + 1 FROM dbdl.alias_history WHERE name = ?", (name,))[0]
    db.execute("INSERT INTO dbdl.alias_history (name, seq, version) VALUES (?, ?, ?)", (name, seq, version))


def promote(db: SQLRunner, name: str, version: int) -> None:
    lock_model(db, check_name(name))
    pinned = resolve(db, name, int(version))
    serving = _one(db, "SELECT serving_version FROM dbdl.models WHERE name = ?", (name,))[0]
    if serving != pinned.version:  # promoting what already serves changes nothing, history included
        set_serving(db, name, pinned.version)


def rollback(db: SQLRunner, name: str) -> int:
    """Serve the previously promoted version again; returns it."""
    lock_model(db, check_name(name))
    history = db.fetchall(
        "SELECT h.seq, h.version FROM dbdl.alias_history h JOIN dbdl.model_versions v "
        "ON v.name = h.name AND v.version = h.version WHERE h.name = ? ORDER BY h.seq DESC",
        (name,),
    )
    if not history and _one(db, "SELECT 1 FROM dbdl.models WHERE name = ?", (name,)) is None:
        raise not_found(db, name)
    if len(history) < 2:
        raise ModelNotFound(
            f"model {name!r} has no earlier promoted version to roll back to; promote one explicitly with "
            f"db.models.promote({name!r}, version)"
        )
    (top_seq, _), (_, previous) = history[0], history[1]
    db.execute("DELETE FROM dbdl.alias_history WHERE name = ? AND seq >= ?", (name, top_seq))
    db.execute("UPDATE dbdl.models SET serving_version = ? WHERE name = ?", (previous, name))
    return int(previous)


def drop(db: SQLRunner, name: str, version: int | None = None) -> int:
    """Delete one version or the whole model; returns how many versions were deleted.

    Dropping the serving version moves serving to the previously promoted version that still
    exists, else to the latest remaining one. Bytes no version uses any more are deleted.
    """
    lock_model(db, check_name(name))
    if version is None:
        if _one(db, "SELECT 1 FROM dbdl.models WHERE name = ?", (name,)) is None:
            raise not_found(db, name)
        count = _one(db, "SELECT count(*) FROM dbdl.model_versions WHERE name = ?", (name,))[0]
        _forget_model(db, name)
    else:
        resolve(db, name, int(version))
        count = 1
        clear_cache(db, name, int(version))
        db.execute("DELETE FROM dbdl.model_versions WHERE name = ? AND version = ?", (name, version))
        db.execute("DELETE FROM dbdl.alias_history WHERE name = ? AND version = ?", (name, version))
        remaining = _one(db, "SELECT max(version) FROM dbdl.model_versions WHERE name = ?", (name,))[0]
        if remaining is None:
            _forget_model(db, name)
        elif _one(db, "SELECT serving_version FROM dbdl.models WHERE name = ?", (name,))[0] == version:
            prior = _one(db, "SELECT version FROM dbdl.alias_history WHERE name = ? ORDER BY seq DESC LIMIT 1", (name,))
            db.execute("UPDATE dbdl.models SET serving_version = ? WHERE name = ?",
                       (prior[0] if prior else remaining, name))
    db.execute("DELETE FROM dbdl.blobs WHERE sha256 NOT IN (SELECT sha256 FROM dbdl.model_versions) AND sha256 NOT IN "
               "(SELECT original_sha256 FROM dbdl.model_versions WHERE original_sha256 IS NOT NULL)")
    return int(count)


def _forget_model(db: SQLRunner, name: str) -> None:
    clear_cache(db, name)
    for table in ("model_versions", "alias_history", "models"):
        db.execute(f"DELETE FROM dbdl.{table} WHERE name = ?", (name,))


# -- model options ---------------------------------------------------------------------------

#: option -> (type, default, what it does); see docs/cache.md
OPTIONS: dict[str, tuple[type, Any, str]] = {
    "cache": (bool, False, "keep predictions in the result cache (dbdl.result_cache) and reuse them"),
    "cache_max_bytes": (int, 512 << 20, "the cache's bound for this model; least recently hit rows go first"),
    # the feeding layer (runtime.build_feeds, docs/reference.md "Input forms")
    "pad_id": (int, None, "the value that pads variable-length rows (token lists) to a batch's longest row"),
    "feed": (str, "auto", "how one argument feeds a model of two 1-D integer inputs: 'offsets' (tokens + offsets), "
                          "'columns', 'concat' or 'auto'"),
}


def model_options(db: SQLRunner, name: str) -> dict[str, Any]:
    """The model's options, defaults filled in."""
    row = _one(db, "SELECT options FROM dbdl.models WHERE name = ?", (check_name(name),))
    if row is None:
        raise not_found(db, name)
    stored = json.loads(row[0] or "{}")
    return {key: stored.get(key, default) for key, (_, default, _) in OPTIONS.items()}


def set_options(db: SQLRunner, name: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Merge ``changes`` into the model's options (checked first); returns them all. Switching the
    cache off drops what it holds; a smaller bound takes effect on the next cached query."""
    current = model_options(db, name)
    for key, value in changes.items():
        if key not in OPTIONS:
            raise ConfigurationError(f"unknown model option {key!r}; the options are: "
                                     + ", ".join(f"{k} ({t.__name__}: {doc})" for k, (t, _, doc) in OPTIONS.items()))
        kind = OPTIONS[key][0]
        if kind is bool and not isinstance(value, bool):
            raise ConfigurationError(f"model option {key!r} takes true or false, got {value!r}")
        if key == "pad_id":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not -(1 << 63) <= value < (1 << 63)):
                raise ConfigurationError(f"model option 'pad_id' takes a whole number (the id that pads token lists, "
                                         f"e.g. 0), or null to unset it; got {value!r}")
        elif key == "feed":
            if value not in ("auto", "offsets", "columns", "concat"):
                raise ConfigurationError(f"model option 'feed' takes 'auto', 'offsets', 'columns' or 'concat'; got "
                                         f"{value!r}")
        elif kind is int and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_BYTES):
            raise ConfigurationError(f"model option {key!r} takes a whole number of bytes from 1 to {MAX_BYTES} "
                                     f"(1 PiB; e.g. {1 << 30} for 1 GiB), got {value!r}")
        current[key] = value
    stored = {k: v for k, v in current.items() if v != OPTIONS[k][1]}
    db.execute("UPDATE dbdl.models SET options = ? WHERE name = ?", (json.dumps(stored, sort_keys=True), name))
    if not current["cache"]:
        clear_cache(db, name)
    return current


#: bound of byte-valued options: sums of them stay far inside a bigint (dbdl.cache_stats adds them up)
MAX_BYTES = 1 << 50
MAX_OPTIONS_CHARS = 4096


def parse_options(text: object) -> dict[str, Any]:
    """Options given as JSON text (the SQL form), e.g. '{"cache": true}'."""
    if isinstance(text, str) and len(text) > MAX_OPTIONS_CHARS:
        raise ConfigurationError(f"model options are {len(text)} characters of JSON; options are a small object "
                                 f"such as '{{\"cache\": true}}' (at most {MAX_OPTIONS_CHARS} characters)")
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except RecursionError as exc:
        raise ConfigurationError("model options nest too deeply; pass a flat JSON object such as "
                                 "'{\"cache\": true}'") from exc
    except ValueError as exc:
        raise ConfigurationError(f"model options must be a JSON object such as '{{\"cache\": true}}': {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigurationError(f"model options must be a JSON object such as '{{\"cache\": true}}', got {text!r}")
    return value


def clear_cache(db: SQLRunner, name: str, version: int | None = None) -> None:
    """Forget the cached results of a model (of one version), counters included."""
    where, params = ("name = ?", (name,)) if version is None else ("name = ? AND version = ?", (name, version))
    db.execute(f"DELETE FROM dbdl.result_cache WHERE cache_id IN (SELECT cache_id FROM dbdl.cache_entries "
               f"WHERE {where})", params)
    db.execute(f"DELETE FROM dbdl.cache_entries WHERE {where}", params)
