"""Where a ``duckdb://`` URL's database lives: ``duckdb:///rel.db`` is ``rel.db`` in the current
folder, ``duckdb:////abs/x.db`` the absolute path, ``duckdb:///:memory:`` (or no path) in memory."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit


def path_from_url(url: str) -> str:
    parts = urlsplit(url)
    path = unquote(parts.netloc + parts.path)
    if path.startswith("/"):
        path = path[1:]  # duckdb:///rel.db -> rel.db ; duckdb:////abs.db -> /abs.db
    return path or ":memory:"
