"""The local LMDB cache of a dataset's blocks.

A block is ``block_rows`` consecutive row ids (the last one of the table may be shorter), stored as
one value: the features' bytes, then the labels' bytes. The cache's folder names the dataset's
version and export uid, so a re-exported dataset never meets an old cache (and the old folder is
removed when the new version is opened). The environment is opened lazily in the process that uses
it — never before a DataLoader forks its workers (py-lmdb #346) — and grows its map when full.
Several workers may write at once: LMDB serialises writers with its lock, and each block is one
short write transaction. ``put_later`` hands blocks to a writer thread of the process (py-lmdb
releases the GIL while it copies and commits), so that the next block's database read overlaps
this one's write; ``flush`` waits for them, and so do a fork and the process's exit (the thread is
not a daemon).
"""

from __future__ import annotations

import collections
import hashlib
import os
import shutil
import threading
import weakref
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError

_BLOCK_KEY = b"b"
# this process's open environments by folder: LMDB forbids opening the same files twice in one
# process, so every BlockCache of one folder shares one environment
_ENVS: dict[str, Any] = {}
_ENVS_PID = [os.getpid()]
_LOCK = threading.Lock()
#: caches with a writer thread in this process (flushed before a fork)
_WRITING: "weakref.WeakSet[BlockCache]" = weakref.WeakSet()
#: blocks a cache may hold queued for its writer thread before put_later waits
QUEUED_BLOCKS = 4


def _close_before_fork() -> None:
    # LMDB environments must not cross a fork (py-lmdb #346, and py-lmdb refuses to open a second
    # one on the same files in the child): finish the queued writes, close ours now; each process
    # reopens its own lazily
    for cache in list(_WRITING):
        cache.wait()  # a write's error stays for the cache's next put_later / flush in this process
    with _LOCK:
        for env in _ENVS.values():
            env.close()
        _ENVS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_close_before_fork)


def default_root() -> Path:
    """$DBDL_CACHE_DIR, else ~/.cache/dbdl/datasets."""
    env = os.environ.get("DBDL_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dbdl" / "datasets"


def database_key(url: str) -> str:
    """A short stable key of the database (its backend's ``database_key``: the URL without its
    password; DuckDB: the file's absolute path)."""
    from ..backends.base import Backend

    url = url if "://" in url else f"duckdb:///{url}"  # a bare path is a DuckDB file
    text = Backend.class_for(url).database_key(url)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(root: Path, url: str, name: str, version: int, uid: str, block_rows: int) -> Path:
    return root / database_key(url) / f"{name}-v{version}-{uid}-r{block_rows}"


def remove_stale(path: Path, name: str, uid: str) -> list[Path]:
    """Remove the caches of this dataset's other exports (older versions, a dropped namesake)."""
    removed = []
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.iterdir():
        if entry.name.startswith(f"{name}-v") and f"-{uid}-" not in entry.name:
            rest = entry.name[len(name) + 2:].split("-", 1)[0]
            if rest.isdigit():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def remove_all(root: Path, url: str, name: str) -> None:
    folder = root / database_key(url)
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.startswith(f"{name}-v") and entry.name[len(name) + 2:].split("-", 1)[0].isdigit():
                shutil.rmtree(entry, ignore_errors=True)


class BlockCache:
    """One dataset version's blocks in an LMDB environment (opened lazily, once per process)."""

    def __init__(self, path: Path, map_size: int) -> None:
        self.path = Path(path)
        self.map_size = int(map_size)
        self.writes = 0
        self.hits = 0
        self._queue: collections.deque[list[tuple[int, Any]]] = collections.deque()
        self._cv = threading.Condition()
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    def __getstate__(self) -> dict:
        self.flush()  # what is pickled (into a DataLoader worker) finds its blocks written
        return {"path": self.path, "map_size": self.map_size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["map_size"])

    @property
    def env(self):
        with _LOCK:
            if _ENVS_PID[0] != os.getpid():  # forked without the hook: never touch the parent's
                _ENVS.clear()
                _ENVS_PID[0] = os.getpid()
            env = _ENVS.get(str(self.path))
            if env is None:
                try:
                    import lmdb
                except ImportError as exc:
                    raise ConfigurationError("the dataset cache needs the lmdb package: pip install lmdb — or "
                                             "pass cache=False") from exc
                self.path.mkdir(parents=True, exist_ok=True)
                env = lmdb.open(str(self.path), map_size=self.map_size, subdir=True, readahead=False,
                                meminit=False, max_readers=512, lock=True,
                                # a cache, not a record: no fsync per block (a crash costs a refill)
                                sync=False, metasync=False)
                _ENVS[str(self.path)] = env
            return env

    @staticmethod
    def key(block: int) -> bytes:
        return _BLOCK_KEY + block.to_bytes(8, "big")

    def get(self, block: int) -> bytes | None:
        import lmdb

        with self._cv:  # queued for the writer thread, not in LMDB yet
            for items in self._queue:
                for b, value in items:
                    if b == block:
                        self.hits += 1
                        return bytes(value)
        for _ in range(2):
            try:
                with self.env.begin(buffers=True) as txn:
                    value = txn.get(self.key(block))
                    if value is None:
                        return None
                    self.hits += 1
                    return bytes(value)
            except lmdb.MapResizedError:
                self._adopt_size()
        return None

    def has(self, block: int) -> bool:
        with self._cv:
            if any(b == block for items in self._queue for b, _ in items):
                return True
        with self.env.begin() as txn:
            return txn.get(self.key(block)) is not None

    def put(self, items: list[tuple[int, bytes]]) -> None:
        import lmdb

        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for block, value in items:
                        txn.put(self.key(block), value, overwrite=False)
                self.writes += len(items)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(max(self.env.info()["map_size"] * 2, 1 << 20))
            except lmdb.MapResizedError:
                self._adopt_size()

    def put_later(self, items: list[tuple[int, Any]]) -> None:
        """put(items) in this process's writer thread (values: bytes-like, left untouched until
        written); waits while QUEUED_BLOCKS are already queued."""
        with self._cv:
            self._raise_error()
            while len(self._queue) >= QUEUED_BLOCKS and self._writer is not None:
                self._cv.wait()
            self._raise_error()
            self._queue.append(items)
            if self._writer is None:
                _WRITING.add(self)
                self._writer = threading.Thread(target=self._drain, name="dbdl-lmdb-writer")
                self._writer.start()

    def _drain(self) -> None:
        while True:
            with self._cv:
                if not self._queue or self._error is not None:
                    self._queue.clear()
                    self._writer = None
                    self._cv.notify_all()
                    return
                items = self._queue[0]
            try:
                self.put(items)
            except BaseException as exc:  # raised in the reading thread by its next put_later / flush
                with self._cv:
                    self._error = exc
            with self._cv:
                if self._queue:
                    self._queue.popleft()
                self._cv.notify_all()

    def flush(self) -> None:
        """Wait until every block handed to put_later is written; raise a write's error."""
        self.wait()
        with self._cv:
            self._raise_error()

    def wait(self) -> None:
        """Wait until the writer thread is done."""
        with self._cv:
            while self._writer is not None:
                self._cv.wait()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _adopt_size(self) -> None:
        # another process grew the map: take its size (LMDB's mdb_env_set_mapsize(0))
        self.env.set_mapsize(0)

    def count(self) -> int:
        self.flush()
        with self.env.begin() as txn:
            return int(txn.stat()["entries"])

    def map_bytes(self) -> int:
        return int(self.env.info()["map_size"])

    def close(self) -> None:
        self.flush()
        with _LOCK:
            env = _ENVS.pop(str(self.path), None) if _ENVS_PID[0] == os.getpid() else None
        if env is not None:
            self.map_size = max(self.map_size, int(env.info()["map_size"]))
            env.close()
