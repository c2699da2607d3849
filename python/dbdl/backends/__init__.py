"""The databases dbdl runs in, one folder each (``duckdb/``, ``postgres/``); ``base.py`` is the
interface every one implements. A backend's folder is imported when a URL of its scheme is opened
(``base.BACKEND_MODULES``), so a missing driver only matters to that backend's users."""
