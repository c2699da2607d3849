"""The dbdl error tree.

It lives here, in the in-database package, so that the server's Python raises exactly the classes
the client catches; ``dbdl.errors`` re-exports it. Every message says what went wrong and how to
fix it.
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
]


class Error(Exception):
    """Root of every error dbdl raises on purpose."""


class InvalidName(Error, ValueError):
    """A model, dataset or table name that dbdl will not accept."""


class InvalidArgument(Error, ValueError):
    """An argument out of range or of the wrong kind (a batch size of 0, an unknown predict kind)."""


class ModelNotFound(Error, LookupError):
    """An unknown model, or an unknown version of a known model."""


class DatasetNotFound(ModelNotFound):
    """An unknown training dataset (made by train_export)."""


class InvalidModel(Error, ValueError):
    """Model bytes that are not a usable ONNX model (malformed, failing the checker, no batch axis)."""


class ShapeMismatch(Error, ValueError):
    """Features whose length does not match what the model takes."""


class DTypeMismatch(Error, TypeError):
    """Features of a type that cannot be fed to a model (text, nested values, ...)."""


class ModelRuntimeError(Error, RuntimeError):
    """A registered model that fails while it runs: onnxruntime refused a batch (a shape error inside
    the graph, memory), or the model returned outputs of another shape than it declares."""


class MigrationError(Error):
    """The database schema cannot be brought to the version this dbdl expects."""


class QueryError(Error):
    """A query that does not parse or that the database refused."""


class StrategyUnavailable(Error):
    """An execution strategy that cannot run the query, with the reason."""


class ConnectionError(Error):  # noqa: A001 - deliberately shadows the builtin inside dbdl
    """A database URL that cannot be opened."""


class PermissionDenied(Error, PermissionError):
    """The database role may not do this (PostgreSQL: GRANT dbdl_user or dbdl_admin to it)."""


class ConfigurationError(Error):
    """dbdl is installed but cannot run: e.g. the server's Python cannot import dbdl_udf."""


class ConcurrentChange(Error):
    """Another session changed the same model at the same moment; the operation can be retried as is
    (dbdl's own API retries a few times before raising it)."""


def error_class(name: str) -> type[Error]:
    """The error class called ``name`` (used to re-raise errors that crossed the SQL boundary)."""
    cls = globals().get(name)
    if isinstance(cls, type) and issubclass(cls, Error):
        return cls
    return Error
