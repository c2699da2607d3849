"""dbdl: deep learning inside the database.

    import dbdl
    db = dbdl.connect()                                   # embedded DuckDB (dbdl_data.duckdb)
    db.models.register("fraud", module, example=torch.randn(1, 30))
    db.sql("SELECT id, predict('fraud', feats) FROM txns").df()
"""

from .database import Database, connect
from .errors import (
    ConcurrentChange,
    ConfigurationError,
    ConnectionError,
    DatasetNotFound,
    DTypeMismatch,
    Error,
    InvalidModel,
    InvalidName,
    InvalidArgument,
    MigrationError,
    ModelRuntimeError,
    ModelNotFound,
    PermissionDenied,
    QueryError,
    ShapeMismatch,
    StrategyUnavailable,
)
from .data import DatasetInfo
from .registry import LoadedModel, ModelInfo
from .result import Result

__version__ = "0.1.0"

__all__ = [
    "ConcurrentChange",
    "ConfigurationError",
    "ConnectionError",
    "DTypeMismatch",
    "DatasetNotFound",
    "Database",
    "DatasetInfo",
    "Error",
    "InvalidModel",
    "InvalidName",
    "LoadedModel",
    "InvalidArgument",
    "MigrationError",
    "ModelRuntimeError",
    "ModelInfo",
    "ModelNotFound",
    "PermissionDenied",
    "QueryError",
    "Result",
    "ShapeMismatch",
    "StrategyUnavailable",
    "connect",
    "__version__",
]
