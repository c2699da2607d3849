"""The model registry: versioned ONNX models stored in the database (the Python admin API)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlglot.expressions as exp

from dbdl_udf import catalog
from dbdl_udf.adapt import Rewrite
from dbdl_udf.runtime import SESSIONS, Signature, TensorSpec, feed_options, run_batch

from .cachestore import CacheStats, stats
from .errors import InvalidArgument, InvalidModel
from .modelio import load_torch_program, prepare
from .names import ModelRef, check_name, weight_table_prefix

if TYPE_CHECKING:
    from .backends.base import Backend



@dataclass(frozen=True)
class ModelInfo:
    """One registered version of a model, as the registry stores it."""

    name: str
    version: int
    sha256: str
    source: str
    signature: Signature
    n_params: int
    flops_per_row: int
    opset: int
    size_bytes: int
    created_at: dt.datetime
    serving: bool
    description: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: the sha256 of the bytes as given, when registration rewrote them (model_bytes(original=True))
    original_sha256: str | None = None
    #: what registration rewrote (dbdl_udf.adapt.Rewrite: kind and note), in order
    rewrites: tuple[Rewrite, ...] = ()

    @property
    def batch(self) -> int | None:
        """The fixed batch size this version is scored in slices of, None for any number of rows."""
        return self.signature.batch

    @property
    def batch_mode(self) -> str:
        """How rows reach the model: ``dynamic`` (any number per run, as exported), ``symbolic``
        (the export fixed the batch size and registration made it symbolic), ``slices`` (the
        batch size stays fixed: rows go ``batch`` at a time, the last slice padded)."""
        kinds = {r.kind for r in self.rewrites}
        if self.signature.batch is not None:
            return "slices"
        return "symbolic" if "batch_symbolic" in kinds else "dynamic"

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.signature.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.signature.outputs

    @property
    def n_features(self) -> int:
        return self.signature.n_features

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass
class LoadedModel:
    """A registered version ready to run in this process."""

    info: ModelInfo
    session: Any  # onnxruntime.InferenceSession
    torch: Any = None  # the torch module, when the version was registered from torch

    def __call__(self, *features: Any, output: str | None = None) -> np.ndarray:
        """Score rows exactly as SQL predict_array does, in the same input forms.

        Each positional argument is one SQL argument's values for all rows: a numpy array (rows
        first: (rows x features), (rows, 3, 32, 32), a 1-D array of one number per row) or a list
        of per-row values (lists of different lengths, bytes, None for a NULL row). One argument
        per model input, or one vector of all of them; a single 1-D array of the model's width is
        one row. The model's options (``pad_id``, ``feed``) apply. Rows that would give NULL in
        SQL (a None row or element) give a row of NaN."""
        from dbdl_udf.runtime import Column, valid_rows

        if not features:
            raise InvalidArgument("pass the features: model(x), or one argument per model input: model(a, b)")
        signature = self.info.signature
        columns = []
        for f in features:
            if isinstance(f, np.ndarray) or (not isinstance(f, (list, tuple)) and hasattr(f, "__array__")):
                x = np.asarray(f)
                if x.ndim == 1 and len(features) == 1 and signature.n_features and len(x) == signature.n_features \
                        and any(s.shape for s in signature.inputs):
                    x = x[None, :]  # one row
                if x.dtype.kind not in "fiub":
                    raise InvalidArgument(f"features must be numbers, got an array of {x.dtype}")
                columns.append(Column.from_matrix(x))
            else:
                columns.append(Column.from_rows(list(f)))
        valid = valid_rows(columns)
        output_index = signature.output_index(output)
        y = run_batch(self.session, signature, columns, output_index, self.info.ref,
                      feed_options(self.info.options))
        if valid.all():
            return y
        full = np.full((len(valid), y.shape[1]), np.nan, dtype=np.float32 if y.dtype.kind == "f" else object)
        full[valid] = y
        return full


# read through the dbdl.model_catalog view, which PostgreSQL's dbdl_user role may read
_VERSION_COLUMNS = (
    "name, version, sha256, source, signature, n_params, flops_per_row, opset, size_bytes, created_at, serving, "
    "description, options, original_sha256, rewrites"
)


class ModelRegistry:
    """``db.models``: register, inspect, load, promote and drop model versions."""

    def __init__(self, backend: "Backend") -> None:
        self._backend = backend

    def _changed(self) -> None:
        self._backend.invalidate()  # caches keyed by model name (DuckDB's per-statement models)

    # -- writing ---------------------------------------------------------------------------

    def register(
        self,
        name: str,
        model: Any,
        example: Any = None,
        *,
        description: str | None = None,
        promote: bool = True,
        opset: int | None = None,
        dataset: str | None = None,
    ) -> int:
        """Store ``model`` as the next version of ``name`` and return that version number.

        ``model`` is a ``torch.nn.Module`` (exported to ONNX with a dynamic batch axis; ``example``
        is an input of the right shape, e.g. ``torch.randn(1, 30)``), an ``onnx.ModelProto``, ONNX
        bytes, or the path of a ``.onnx`` file. The model is checked with onnx's checker and an
        onnxruntime session before anything is written. Registering bytes this model already has
        returns that version instead of adding a copy. With ``promote`` (the default) the version
        becomes the one that ``predict('name', ...)`` serves. ``dataset="name"`` registers a
        module trained on an exported dataset: the example input is taken from the dataset's
        tensor shape, so ``predict('name', features)`` scores the dataset's own features column.
        """
        check_name(name)
        if dataset is not None:
            # a model trained on an exported dataset: its input is one row of the dataset's tensor
            from dbdl_udf.datasets import get as get_dataset

            info = get_dataset(self._backend.catalog, dataset)
            if example is None and info.ragged:
                raise InvalidModel(
                    f"dataset {info.name!r} holds token lists of different lengths, so its shape gives no example "
                    "input; pass example= as the model takes it: (torch.tensor([1, 2, 3]), torch.tensor([0])) for "
                    "an EmbeddingBag model's (text, offsets), torch.ones(1, 8, dtype=torch.long) for a padded "
                    "sequence model")
            if example is None:
                import torch

                example = torch.zeros((1, *info.shape), dtype=torch.float32)
            if description is None:
                description = f"trained on dataset {info.name}@{info.version}"
        prepared = prepare(model, example, opset=opset)
        version = self._backend.store_version(name, prepared, description=description, promote=promote)
        self._changed()
        return version

    def promote(self, name: str, version: int) -> None:
        """Make ``version`` the one that ``predict('name', ...)`` serves (rollback() undoes it)."""
        self._backend.promote_version(check_name(name), int(version))
        self._changed()

    def rollback(self, name: str) -> int:
        """Serve the previously promoted version again; returns it."""
        version = self._backend.rollback_version(check_name(name))
        self._changed()
        return version

    def drop(self, name: str, version: int | None = None) -> int:
        """Delete one version, or the whole model; returns how many versions were deleted.

        Dropping the serving version moves serving to the previously promoted version that still
        exists, else to the latest remaining one. Model bytes no other version uses are deleted.
        """
        b = self._backend
        before = {r[0] for r in b.catalog.fetchall("SELECT DISTINCT sha256 FROM dbdl.model_catalog")}
        count = b.drop_versions(check_name(name), None if version is None else int(version))
        gone = before - {r[0] for r in b.catalog.fetchall("SELECT DISTINCT sha256 FROM dbdl.model_catalog")}
        for sha in gone:  # relation-centric weight tables of bytes no version uses any more
            prefix = weight_table_prefix(sha)
            for table in b.tables_in(b.data_schema):
                if table.startswith(prefix):  # a prefix test, not LIKE: "_" would match any character
                    target = exp.Table(this=exp.to_identifier(table, quoted=True),
                                       db=exp.to_identifier(b.data_schema, quoted=True))
                    b.execute(exp.Drop(tables=[target], kind="TABLE", exists=True).sql(dialect=b.dialect))
        self._changed()
        return count

    # -- options and the result cache ------------------------------------------------------

    def set_options(self, name: str, **options: Any) -> dict[str, Any]:
        """Change a model's options (all versions); returns them all. ``cache=True`` keeps its
        predictions in the result cache; ``cache_max_bytes`` bounds it (default 512 MiB). Switching
        the cache off drops what it holds. See docs/cache.md."""
        result = self._backend.set_model_options(check_name(name), options)
        self._changed()
        return result

    def options(self, name: str) -> dict[str, Any]:
        """A model's options, defaults included."""
        return catalog.model_options(self._backend.catalog, check_name(name))

    def cache_stats(self, name: str | None = None) -> list["CacheStats"]:
        """Hits, misses, rows, bytes and evictions per cached version (of one model, or all)."""
        return stats(self._backend, check_name(name) if name else None)

    def clear_cache(self, name: str) -> None:
        """Empty a model's result cache (every version, counters too); the option stays on."""
        self.options(name)  # an unknown model is an error, not a silent no-op
        self._backend.clear_model_cache(name)

    # -- reading ---------------------------------------------------------------------------

    def list(self, name: str | None = None) -> list[ModelInfo]:
        """Every stored version (of one model, or of all), ordered by name and version."""
        sql = (
            f"SELECT {_VERSION_COLUMNS} FROM dbdl.model_catalog"
        )
        params: tuple = ()
        if name is not None:
            check_name(name)
            sql += " WHERE name = ?"
            params = (name,)
        return [self._info(row) for row in self._backend.catalog.fetchall(sql + " ORDER BY name, version", params)]

    def names(self) -> list[str]:
        return [r[0] for r in self._backend.catalog.fetchall("SELECT DISTINCT name FROM dbdl.model_catalog ORDER BY name")]

    def get(self, name: str, version: int | None = None) -> ModelInfo:
        """The stored facts of one version (the serving one when ``version`` is None)."""
        resolved = self._backend.resolve(ModelRef(check_name(name), version))
        row = self._backend.catalog.fetchone(
            f"SELECT {_VERSION_COLUMNS} FROM dbdl.model_catalog WHERE name = ? AND version = ?",
            (name, resolved.version),
        )
        return self._info(row)

    def load(self, name: str, version: int | None = None, *, threads: int = 0) -> LoadedModel:
        """An onnxruntime session for the version (and its torch module when it came from torch)."""
        info = self.get(name, version)
        session, _ = SESSIONS.get(info.sha256, lambda: self._backend.model_bytes(info.sha256), threads,
                                  model=info.ref)
        program = self._backend.torch_program(info.name, info.version) if info.source == "torch" else None
        return LoadedModel(info, session, load_torch_program(program) if program is not None else None)

    def model_bytes(self, name: str, version: int | None = None, *, original: bool = False) -> bytes:
        """The stored ONNX bytes of a version: what runs, or with ``original=True`` the bytes as
        they were registered (the same bytes when registration rewrote nothing)."""
        info = self.get(name, version)
        return self._backend.model_bytes(info.original_sha256 if original and info.original_sha256 else info.sha256)

    @staticmethod
    def _info(row: tuple) -> ModelInfo:
        (name, version, sha, source, signature, n_params, flops, opset, size, created, serving, desc, options,
         original_sha, rewrites) = row
        return ModelInfo(
            name=name, version=int(version), sha256=sha, source=source, signature=Signature.from_json(signature),
            n_params=int(n_params), flops_per_row=int(flops), opset=int(opset or 0), size_bytes=int(size),
            created_at=created, serving=bool(serving), description=desc,
            options=json.loads(options) if isinstance(options, str) else (options or {}),
            original_sha256=original_sha,
            rewrites=tuple(Rewrite(r["kind"], r["note"]) for r in json.loads(rewrites)) if rewrites else (),
        )
