"""Model names and references (``'fraud'``, ``'fraud@3'``, ``'fraud@3:probs'``), what a reference
resolves to (``ResolvedModel``), and the names dbdl gives the tables it makes for a model.

Names double as parts of SQL identifiers (weight tables, cache tables), so they are kept to the
portable identifier alphabet and PostgreSQL's 63-byte limit. The rules live in the in-database
package so that the server applies exactly the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbdl_udf.catalog import NAME_RE, check_name, parse_ref
from dbdl_udf.runtime import Signature, TensorSpec

__all__ = ["NAME_RE", "ModelRef", "ResolvedModel", "check_name", "weight_table", "weight_table_prefix"]


@dataclass(frozen=True)
class ModelRef:
    """What a predict call names: a model, optionally a pinned version and an output."""

    name: str
    version: int | None = None
    output: str | None = None

    @classmethod
    def parse(cls, text: object) -> "ModelRef":
        return cls(*parse_ref(text))

    def __str__(self) -> str:
        text = self.name if self.version is None else f"{self.name}@{self.version}"
        return text if self.output is None else f"{text}:{self.output}"


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference pinned to one stored version: what a query actually runs."""

    name: str
    version: int
    sha256: str
    signature: Signature
    output: str | None = None

    @property
    def ref(self) -> str:
        return str(ModelRef(self.name, self.version, self.output))

    @property
    def output_index(self) -> int:
        return self.signature.output_index(self.output)

    @property
    def output_spec(self) -> TensorSpec:
        return self.signature.outputs[self.output_index]


def weight_table_prefix(sha256: str) -> str:
    """What the names of a model's relation-centric weight tables start with (one per content hash)."""
    return f"rel_{sha256[:16]}_"


def weight_table(sha256: str, kind: str) -> str:
    """The (unqualified) name of one relation-centric weight table of the bytes ``sha256``."""
    return weight_table_prefix(sha256) + kind
