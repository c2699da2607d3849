"""Model names and references (``'fraud'``, ``'fraud@3'``, ``'fraud@3:probs'``).

Names double as parts of SQL identifiers (weight tables, cache tables), so they are kept to the
portable identifier alphabet and PostgreSQL's 63-byte limit. The rules live in the in-database
package so that the server applies exactly the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbdl_udf.catalog import NAME_RE, check_name, parse_ref

__all__ = ["NAME_RE", "ModelRef", "check_name"]


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
