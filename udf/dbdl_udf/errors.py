"""The dbdl error tree.

It lives here, in the in-database package, so that the server's Python raises exactly the classes
the client catches; ``dbdl.errors`` re-exports it. Every message says what went wrong and how to
fix it.

Each class declares the SQLSTATE a database error carrying it has (``sqlstate``, as psycopg 3
declares its classes'), one per class, so a client maps a code back with
:func:`error_for_sqlstate`. Where a standard code means exactly the class's error it is that code
(these are also what PostgreSQL raises for its own errors of that kind, so a client that maps them
back should confirm the ``dbdl.<Class>:`` prefix of the message); the other classes take codes of
dbdl's own class ``DB`` (``DB000`` for the root). The codes PostgreSQL has shown since dbdl's
first release (42704, 22023, 42804, 42602, 38000) are kept.
"""

from __future__ import annotations

__all__ = [
    "Error",
    "InvalidName",
    "InvalidArgument",
    "ModelNotFound",
    "DatasetNotFound",
    "InvalidModel",
    "ShapeMismatch",
    "DTypeMismatch",
    "ModelRuntimeError",
    "MigrationError",
    "QueryError",
    "StrategyUnavailable",
    "ConnectionError",
    "PermissionDenied",
    "ConfigurationError",
    "ConcurrentChange",
    "error_class",
    "error_for_sqlstate",
]


class Error(Exception):
    """Root of every error dbdl raises on purpose."""

    sqlstate = "DB000"  # dbdl's own class: any dbdl error without a code of its own


class InvalidName(Error, ValueError):
    """A model, dataset or table name that dbdl will not accept."""

    sqlstate = "42602"  # invalid_name


class InvalidArgument(Error, ValueError):
    """An argument out of range or of the wrong kind (a batch size of 0, an unknown predict kind)."""

    sqlstate = "DB001"  # dbdl's own: 22023 is ShapeMismatch's


class ModelNotFound(Error, LookupError):
    """An unknown model, or an unknown version of a known model."""

    sqlstate = "42704"  # undefined_object


class DatasetNotFound(Error, LookupError):
    """An unknown training dataset (made by train_export)."""

    sqlstate = "DB002"  # dbdl's own: 42704 is ModelNotFound's


class InvalidModel(Error, ValueError):
    """Model bytes that are not a usable ONNX model (malformed, failing the checker, no batch axis)."""

    sqlstate = "DB003"  # dbdl's own: bytes that are no usable model (22023 before, shared with ShapeMismatch)


class ShapeMismatch(Error, ValueError):
    """Features whose length does not match what the model takes."""

    sqlstate = "22023"  # invalid_parameter_value (also what dbdl.fail raises, migration 0004)


class DTypeMismatch(Error, TypeError):
    """Features of a type that cannot be fed to a model (text, nested values, ...)."""

    sqlstate = "42804"  # datatype_mismatch


class ModelRuntimeError(Error, RuntimeError):
    """A registered model that fails while it runs: onnxruntime refused a batch (a shape error inside
    the graph, memory), or the model returned outputs of another shape than it declares."""

    sqlstate = "38000"  # external_routine_exception: the model failed while it ran


class MigrationError(Error):
    """The database schema cannot be brought to the version this dbdl expects."""

    sqlstate = "DB004"  # dbdl's own


class QueryError(Error):
    """A query that does not parse or that the database refused."""

    sqlstate = "42601"  # syntax_error


class StrategyUnavailable(Error):
    """An execution strategy that cannot run the query, with the reason."""

    sqlstate = "DB005"  # dbdl's own


class ConnectionError(Error):  # noqa: A001 - deliberately shadows the builtin inside dbdl
    """A database URL that cannot be opened."""

    sqlstate = "08001"  # sqlclient_unable_to_establish_sqlconnection


class PermissionDenied(Error, PermissionError):
    """The database role may not do this (PostgreSQL: GRANT dbdl_user or dbdl_admin to it)."""

    sqlstate = "42501"  # insufficient_privilege


class ConfigurationError(Error):
    """dbdl is installed but cannot run: e.g. the server's Python cannot import dbdl_udf."""

    sqlstate = "55000"  # object_not_in_prerequisite_state (what dbdl._bootstrap raises, migration 0002)


class ConcurrentChange(Error):
    """Another session changed the same model at the same moment; the operation can be retried as is
    (dbdl's own API retries a few times before raising it)."""

    sqlstate = "40001"  # serialization_failure: retry the operation


def error_class(name: str) -> type[Error]:
    """The error class called ``name`` (used to re-raise errors that crossed the SQL boundary)."""
    cls = globals().get(name)
    if isinstance(cls, type) and issubclass(cls, Error):
        return cls
    return Error


def _by_sqlstate() -> dict[str, type[Error]]:
    table: dict[str, type[Error]] = {}
    for cls in [Error, *(globals()[n] for n in __all__ if n[0].isupper() and n != "Error")]:
        code = cls.__dict__.get("sqlstate")
        if not (isinstance(code, str) and len(code) == 5 and code.isalnum() and code.upper() == code):
            raise TypeError(f"{cls.__name__} declares no five-character SQLSTATE")
        if code in table:
            raise TypeError(f"{cls.__name__} and {table[code].__name__} declare one SQLSTATE, {code}")
        table[code] = cls
    return table


_SQLSTATES = _by_sqlstate()


def error_for_sqlstate(code: str | None) -> type[Error] | None:
    """The dbdl error class whose ``sqlstate`` is ``code`` (``"42704"`` -> ModelNotFound), None for
    a code no dbdl class declares."""
    return _SQLSTATES.get(code) if isinstance(code, str) else None
