"""Model names and references (``'fraud'``, ``'fraud@3'``, ``'fraud@3:probs'``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidName

# Names double as parts of SQL identifiers (weight tables, cache tables), so they are kept to the
# portable identifier alphabet and PostgreSQL's 63-byte limit.
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_REF_RE = re.compile(r"(?P<name>[^@:]*)(?:@(?P<version>[^:]*))?(?::(?P<output>.+))?", re.S)


def check_name(name: object, what: str = "model") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidName(
            f"{what} name {name!r} is not valid; use 1-63 letters, digits or underscores, "
            f"starting with a letter or underscore (e.g. 'fraud_v2')"
        )
    return name


@dataclass(frozen=True)
class ModelRef:
    """What a predict call names: a model, optionally a pinned version and an output."""

    name: str
    version: int | None = None
    output: str | None = None

    @classmethod
    def parse(cls, text: object) -> "ModelRef":
        if not isinstance(text, str):
            raise InvalidName(f"a model reference must be text like 'fraud' or 'fraud@3', got {text!r}")
        m = _REF_RE.fullmatch(text.strip())
        assert m is not None  # the pattern matches any string
        name = check_name(m["name"])
        version = None
        if m["version"] is not None:
            if not m["version"].isdigit() or int(m["version"]) < 1:
                raise InvalidName(
                    f"model reference {text!r} has version {m['version']!r}; a version is a whole number "
                    f"from 1, as in '{name}@1'"
                )
            version = int(m["version"])
        return cls(name, version, m["output"])

    def __str__(self) -> str:
        text = self.name if self.version is None else f"{self.name}@{self.version}"
        return text if self.output is None else f"{text}:{self.output}"
