"""DM8 through dmPython (issue 16: being written; this placeholder only registers the scheme)."""

from __future__ import annotations

from ..base import Backend
from .dialect import RELATIONAL, DbdlDM8


class DM8Backend(Backend):  # pragma: no cover - replaced by the backend proper
    name = "dm8"
    schemes = ("dm",)
    dialect = DbdlDM8
    relational = RELATIONAL
    has_python_udfs = False
