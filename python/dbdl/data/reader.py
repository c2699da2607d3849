"""PyTorch datasets over a dataset table: ``db.training_set(name, split=...)``.

Reading is by *blocks*: ``block_rows`` consecutive row ids, fetched with one keyset range query
(``WHERE row_id >= a AND row_id < b`` — never OFFSET, never a query per row) and decoded with one
``np.frombuffer`` per block. A block read once is written to the local LMDB cache, so later
epochs read no database at all. What crosses into a DataLoader worker is only the URL and the
dataset's metadata: each process opens its own connection and its own LMDB environment, lazily.

Three forms:

* per sample (default): ``ds[i]`` is ``(features, label)``; ``__getitems__`` serves a whole
  DataLoader batch at once and hands the collate step prebuilt batch tensors;
* batches (``batch_size=B``): ``ds[k]`` is the k-th batch of B consecutive rows, one range read;
  use it with ``DataLoader(ds, batch_size=None, ...)``;
* shuffled stream (``shuffle=True``): an IterableDataset that deals whole blocks to the workers in
  an order drawn from (seed, epoch), shuffles rows within a buffer of blocks, and yields batches;
  ``set_epoch(e)`` moves to the next permutation. Optional read-ahead in a background thread.
"""

from __future__ import annotations

import collections
import math
import os
import queue
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from dbdl_udf.datasets import DTYPES, DatasetInfo, Ragged

from ..errors import ConfigurationError, DTypeMismatch, QueryError
from ..backends.base import Backend, RangeReader
from . import lmdb_cache as cache_mod

try:
    import torch
    from torch.utils.data import Dataset, IterableDataset
except ImportError:  # pragma: no cover - torch is a dependency
    torch = None
    Dataset = IterableDataset = object  # type: ignore[assignment,misc]

#: target bytes of one block (one range query, one LMDB value)
BLOCK_BYTES = 12 << 20
#: the most rows of a per-sample (map-style) dataset's block: a DataLoader deals batches to its
#: workers round-robin, so a block no larger than a batch is read by one worker only
MAP_BLOCK_ROWS = 256
#: threads (each with its own connection) that read the next requests' blocks ahead, without
#: DataLoader workers (with workers, one a worker: the workers already read side by side)
READ_AHEAD_THREADS = 2
#: about how many bytes one read-ahead query brings (whole blocks)
READ_AHEAD_BYTES = 3 << 20
_READ_AHEAD = "dbdl-read-ahead"


@dataclass(frozen=True)
class Source:
    """What a process needs to read a dataset version (picklable: no connection, no environment)."""

    url: str
    info: DatasetInfo
    block_rows: int

    @property
    def elements(self) -> int:
        return math.prod(self.info.shape)

    def block_range(self, block: int) -> tuple[int, int]:
        start = block * self.block_rows
        return start, min(start + self.block_rows, self.info.n_rows)


class BlockStore:
    """One process's reader: memory → LMDB → database, block by block."""

    def __init__(self, source: Source, cache: cache_mod.BlockCache | None, owner: Backend | None = None,
                 memory_blocks: int | None = None) -> None:
        self.source = source
        self.cache = cache
        self._owner = owner  # this process's open backend of the URL, whose connection may be shared
        self._reader: RangeReader | None = None
        self._lock = threading.Lock()
        block_bytes = max(1, source.block_rows * source.info.row_bytes)
        self._memory: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
        self._memory_blocks = memory_blocks or max(2, min(64, (64 << 20) // block_bytes))
        self.queries = 0  # range queries this process sent to the database
        self.rows_read = 0
        self._executor: Any = None  # the read-ahead threads (read_later), started on first use
        self._local = threading.local()  # a read-ahead thread's own reader
        self._thread_readers: list[RangeReader] = []
        self._pending: dict[int, Any] = {}  # block -> the read-ahead future bringing it
        self._last_first: int | None = None  # the first row of the last request of consecutive rows
        self._ahead_next: int | None = None  # the next block the read-ahead window submits

    # -- the database ---------------------------------------------------------------------------

    def read_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop) in row-id order: (rows x elements) features and the labels."""
        info = self.source.info
        with self._lock:
            if self._reader is None:
                self._reader = Backend.class_for(self.source.url).open_range_reader(self.source.url, self._owner)
            features, labels = self._reader.read(info, start, stop)
            self.queries += 1
            self.rows_read += stop - start
        if len(labels) != stop - start:
            raise QueryError(f"dataset table {info.table} returned {len(labels)} rows for row ids [{start}, {stop}); "
                             "it was changed outside dbdl — re-export the dataset")
        return features, labels

    def read_run(self, first: int, last: int) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Blocks first..last of a dataset of one shape with one query: (block, the cache's value
        for it, its features, its labels) each (thread-safe: the read-ahead thread calls it)."""
        info = self.source.info
        bounds = [self.source.block_range(b) for b in range(first, last + 1)]
        if threading.current_thread().name.startswith(_READ_AHEAD):
            # a read-ahead thread: a reader (connection) of its own, so that two reads run at once
            local = self._local
            if getattr(local, "reader", None) is None:
                local.reader = Backend.class_for(self.source.url).open_range_reader(self.source.url, self._owner)
                with self._lock:
                    self._thread_readers.append(local.reader)
            parts = local.reader.read_blocks(info, bounds)
            with self._lock:
                self.queries += 1
                self.rows_read += bounds[-1][1] - bounds[0][0]
        else:
            with self._lock:
                if self._reader is None:
                    self._reader = Backend.class_for(self.source.url).open_range_reader(self.source.url, self._owner)
                parts = self._reader.read_blocks(info, bounds)
                self.queries += 1
                self.rows_read += bounds[-1][1] - bounds[0][0]
        out = []
        for b, (lo, hi), (buf, x, y) in zip(range(first, last + 1), bounds, parts):
            if len(y) != hi - lo:
                raise QueryError(f"dataset table {info.table} returned {len(y)} rows for row ids [{lo}, {hi}); "
                                 "it was changed outside dbdl — re-export the dataset")
            out.append((b, buf, x, y))
        return out

    def read_later(self, blocks: Sequence[int], together: bool = False) -> None:
        """Start reading ``blocks`` (those neither in memory, nor cached, nor on their way) in this
        store's read-ahead thread; ``ensure`` takes them from there. The database sends the next
        blocks while this process turns the current ones into batches."""
        if self.source.info.ragged:
            return
        last_block = (self.source.info.n_rows - 1) // self.source.block_rows
        todo = [b for b in sorted(set(blocks)) if 0 <= b <= last_block and b not in self._memory
                and b not in self._pending and (self.cache is None or not self.cache.has(b))]
        if not todo:
            return
        if self._executor is None:
            import concurrent.futures

            self._executor = concurrent.futures.ThreadPoolExecutor(READ_AHEAD_THREADS, thread_name_prefix=_READ_AHEAD)
        for run in _runs(todo):
            if together:  # one query for the run
                future = self._executor.submit(self.read_run, run[0], run[-1])
                for b in run:
                    self._pending[b] = future
                continue
            for b in run:  # a query a block: the threads read consecutive blocks side by side
                self._pending[b] = self._executor.submit(self.read_run, b, b)

    def _read_window(self, current: int) -> None:
        """Without workers: keep the READ_AHEAD_THREADS × ``per_query`` blocks after ``current``
        on their way, ``per_query`` blocks (about READ_AHEAD_BYTES) a query, each query a thread's."""
        R = self.source.block_rows
        last_block = (self.source.info.n_rows - 1) // R
        per_query = max(1, READ_AHEAD_BYTES // max(1, R * self.source.info.row_bytes))
        depth = READ_AHEAD_THREADS * per_query
        nxt = self._ahead_next
        if nxt is None or nxt <= current or nxt > current + depth + 1:
            nxt = current + 1  # a new pass, or a jump
        while nxt <= min(last_block, current + depth) and (nxt + per_query - 1 <= current + depth
                                                            or nxt + per_query - 1 >= last_block):
            end = min(nxt + per_query, last_block + 1)
            self.read_later(range(nxt, end), together=True)
            nxt = end
        self._ahead_next = nxt

    def _read_next(self, first: int, last: int) -> None:
        """After a request for rows first..last: start reading the blocks of the one this process
        will most likely make next — a DataLoader's sequential sampler deals batches round-robin,
        so with W workers a worker's next batch starts W batches on — when the last two requests
        were that far apart."""
        info = torch.utils.data.get_worker_info() if torch is not None else None
        workers = info.num_workers if info is not None else 1
        step = workers * (last - first + 1)
        previous, self._last_first = self._last_first, first
        if previous is not None and first - previous == step and first + step < self.source.info.n_rows:
            # only once the requests are seen to go that way (not for a shuffled order of batches);
            # without workers a window of blocks ahead, read by READ_AHEAD_THREADS threads
            R, n = self.source.block_rows, self.source.info.n_rows
            if workers == 1:
                self._read_window(last // R)
            else:
                self.read_later(range((first + step) // R, min(last + step, n - 1) // R + 1))

    def _take(self, parts) -> None:
        for b, buf, x, y in parts:
            self._pending.pop(b, None)
            self._remember(b, (x, y))
            if self.cache is not None:  # written by the cache's writer thread while the next block is read
                self.cache.put_later([(b, buf)])

    # -- blocks -----------------------------------------------------------------------------------

    def block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        self.ensure([block])
        return self._memory[block]

    def ensure(self, blocks: Sequence[int], read_ahead: int = 0) -> None:
        """Make ``blocks`` available in memory: from LMDB where cached, else with one range query
        per run of consecutive missing blocks (extended by ``read_ahead`` blocks)."""
        missing = []
        for b in blocks:
            if b in self._memory:
                self._memory.move_to_end(b)
                continue
            future = self._pending.get(b)
            if future is not None:  # on its way from the read-ahead thread
                try:
                    self._take(future.result())
                except BaseException:
                    for k in [k for k, f in self._pending.items() if f is future]:
                        del self._pending[k]
                    raise
                continue
            value = self.cache.get(b) if self.cache is not None else None
            if value is not None:
                self._remember(b, self._decode(b, value))
            else:
                missing.append(b)
        if not missing:
            return
        last_block = (self.source.info.n_rows - 1) // self.source.block_rows
        for run in _runs(sorted(set(missing))):
            end = run[-1]
            while read_ahead and end < last_block and end - run[-1] < read_ahead and \
                    (self.cache is None or not self.cache.has(end + 1)) and end + 1 not in self._pending:
                end += 1
            if not self.source.info.ragged:
                # one query for the run, each block read straight into the buffer the cache stores
                self._take(self.read_run(run[0], end))
                continue
            start_row = self.source.block_range(run[0])[0]
            stop_row = self.source.block_range(end)[1]
            features, labels = self.read_range(start_row, stop_row)
            written = []
            for b in range(run[0], end + 1):
                lo, hi = (r - start_row for r in self.source.block_range(b))
                part = (_slice(features, lo, hi), labels[lo:hi])
                self._remember(b, part)
                if self.cache is not None:
                    written.append((b, _encode(part[0]) + part[1].tobytes()))
            if written:
                self.cache.put(written)

    def _remember(self, block: int, value: tuple[np.ndarray, np.ndarray]) -> None:
        self._memory[block] = value
        self._memory.move_to_end(block)
        while len(self._memory) > self._memory_blocks:
            self._memory.popitem(last=False)

    def _decode(self, block: int, value: bytes) -> tuple["np.ndarray | Ragged", np.ndarray]:
        info = self.source.info
        lo, hi = self.source.block_range(block)
        n = hi - lo
        if info.ragged:  # row lengths (int64), the values, the labels
            lengths = np.frombuffer(value, dtype="<i8", count=n)
            total = int(lengths.sum())
            values = np.frombuffer(value, dtype=np.dtype(info.dtype).newbyteorder("<"), offset=8 * n, count=total)
            labels = np.frombuffer(value, dtype=np.dtype(info.label_dtype).newbyteorder("<"),
                                   offset=8 * n + values.nbytes, count=n)
            return Ragged.from_lengths(values, lengths), labels
        split = n * info.row_bytes
        features = np.frombuffer(value, dtype=np.dtype(info.dtype).newbyteorder("<"), count=n * self.source.elements)
        labels = np.frombuffer(value, dtype=np.dtype(info.label_dtype).newbyteorder("<"), offset=split, count=n)
        return features.reshape(n, self.source.elements), labels

    def rows(self, rows: np.ndarray, read_ahead: int = 0) -> tuple["np.ndarray | Ragged", np.ndarray]:
        """Features (rows x elements, or Ragged rows) and labels of absolute row ids, in the order given."""
        R = self.source.block_rows
        k = len(rows)
        info = self.source.info
        if k == 0:
            empty = Ragged(np.zeros(0, info.dtype), np.zeros(1, np.int64)) if info.ragged else \
                np.zeros((0, self.source.elements), info.dtype)
            return empty, np.zeros(0, info.label_dtype)
        first, last = int(rows[0]), int(rows[-1])
        if last - first == k - 1 and (k == 1 or bool((np.diff(rows) == 1).all())):
            blocks = list(range(first // R, last // R + 1))
            self.ensure(blocks, read_ahead)
            self._read_next(first, last)
            parts = [(self._memory[b], max(first, b * R) - b * R, min(last + 1, (b + 1) * R) - b * R) for b in blocks]
            if len(parts) == 1:
                (x, y), lo, hi = parts[0]
                return _copy(_slice(x, lo, hi)), y[lo:hi].copy()
            return (_cat([_slice(x, lo, hi) for (x, _), lo, hi in parts]),
                    np.concatenate([y[lo:hi] for (_, y), lo, hi in parts]))
        blocks_of = rows // R
        unique = np.unique(blocks_of)
        if info.ragged:
            self._memory_blocks = max(self._memory_blocks, len(unique) + 2)
            self.ensure(unique.tolist(), read_ahead)
            # the blocks one after another, then the rows picked from them
            joined = Ragged.concat([self._memory[b][0] for b in unique.tolist()])
            labels_joined = np.concatenate([self._memory[b][1] for b in unique.tolist()])
            starts = np.array([b * R for b in unique.tolist()], dtype=np.int64)
            base = np.concatenate([[0], np.cumsum([len(self._memory[b][1]) for b in unique.tolist()])[:-1]])
            at = np.searchsorted(unique, blocks_of)
            position = base[at] + (rows - starts[at])
            return joined.take(position), labels_joined[position]
        features = np.empty((k, self.source.elements), dtype=self.source.info.dtype)
        labels = np.empty(k, dtype=self.source.info.label_dtype)
        # keep every block of this request in memory while gathering
        self._memory_blocks = max(self._memory_blocks, len(unique) + 2)
        self.ensure(unique.tolist(), read_ahead)
        order = np.argsort(blocks_of, kind="stable")
        bounds = np.searchsorted(blocks_of[order], unique, side="left").tolist() + [k]
        for j, b in enumerate(unique.tolist()):
            at = order[bounds[j]:bounds[j + 1]]
            x, y = self._memory[b]
            local = rows[at] - b * R
            features[at] = x[local]
            labels[at] = y[local]
        return features, labels

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        self._pending.clear()
        readers, self._thread_readers = self._thread_readers, []
        self._local = threading.local()
        reader, self._reader = self._reader, None
        for each in [reader, *readers]:
            if each is not None:
                each.close()


def _runs(blocks: Sequence[int]) -> list[list[int]]:
    """Sorted block numbers as runs of consecutive ones."""
    runs: list[list[int]] = []
    for b in blocks:
        if runs and b == runs[-1][-1] + 1:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def _slice(x: "np.ndarray | Ragged", lo: int, hi: int):
    return x.slice(lo, hi) if isinstance(x, Ragged) else x[lo:hi]


def _copy(x: "np.ndarray | Ragged"):
    return Ragged(x.values.copy(), x.offsets.copy()) if isinstance(x, Ragged) else x.copy()


def _cat(parts: list):
    if isinstance(parts[0], Ragged):
        return Ragged.concat(parts)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _encode(x: "np.ndarray | Ragged") -> bytes:
    """A block's features as its LMDB value starts: the bytes (a ragged block: row lengths first)."""
    if isinstance(x, Ragged):
        return x.lengths.astype("<i8").tobytes() + np.ascontiguousarray(x.values).tobytes()
    return x.tobytes()


# -- torch datasets --------------------------------------------------------------------------------

#: how a ragged dataset's batches are made (``collate=``)
COLLATES = ("padded", "offsets")


class OffsetsBatch(NamedTuple):
    """A batch as the ``collate_batch`` of PyTorch's AG News tutorial makes it, for
    ``nn.EmbeddingBag``: ``labels`` [B]; ``text`` = every row's tokens one after another;
    ``offsets`` [B] = where each row starts (cumsum of the lengths, from 0). ``model(text, offsets)``."""

    labels: Any
    text: Any
    offsets: Any


class PaddedBatch(NamedTuple):
    """A batch padded to its longest row (``pad_sequence(..., batch_first=True,
    padding_value=pad_id)``): ``labels`` [B]; ``text`` [B, L]; ``lengths`` [B] (int64, as
    ``pack_padded_sequence`` takes them)."""

    labels: Any
    text: Any
    lengths: Any



class _Row(tuple):
    """One (features, label) sample of a batch that __getitems__ already built."""

    __slots__ = ()


class _Rows(Sequence):
    """What __getitems__ returns: a sequence of samples that also carries the whole batch, so that
    DataLoader's default collate takes the batch tensors as they are instead of stacking samples."""

    def __init__(self, features, labels) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return _Row((self.features[i], self.labels[i]))


class _RaggedRows(_Rows):
    """__getitems__ of a ragged dataset with a collate mode: the finished batch, and its samples
    (tokens, label) for a custom collate_fn."""

    def __init__(self, batch, sample) -> None:
        self.batch, self._sample = batch, sample
        self.labels = batch.labels

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return _Row(self._sample(i % len(self)))  # built when asked: default collate looks at one


def _collate_rows(batch, *, collate_fn_map=None):
    if isinstance(batch, _RaggedRows):
        return batch.batch
    if isinstance(batch, _Rows):
        return [batch.features, batch.labels]
    from torch.utils.data import default_collate

    return default_collate([tuple(row) for row in batch])


if torch is not None:
    from torch.utils.data._utils.collate import default_collate_fn_map

    default_collate_fn_map[_Row] = _collate_rows


class _Base:
    """What every form shares: the source, the split's row range, the cache, a per-process store."""

    def __init__(self, backend: Backend, info: DatasetInfo, split: str | None, *, cache: bool | str | Path = True,
                 block_rows: int | None = None, read_ahead: int = 0, cache_map_size: int | None = None,
                 dtype: str | None = None, collate: str | None = None, pad_id: int | float = 0) -> None:
        self.info = info
        self.dtype, self.collate, self.pad_id = _output_options(info, dtype, collate, pad_id)
        self.split = split or "all"
        self.start, self.stop = info.split_range(split)
        rows = block_rows or self._default_block_rows(info)
        self.source = Source(backend.url, info, int(rows))
        self.read_ahead = int(read_ahead)
        self.cache: cache_mod.BlockCache | None = None
        if cache:
            root = cache_mod.default_root() if cache is True else Path(cache)
            path = cache_mod.cache_path(root, backend.url, info.name, info.version, info.uid, self.source.block_rows)
            cache_mod.remove_stale(path, info.name, info.uid)
            block_bytes = rows * (info.row_bytes + 8)
            size = cache_map_size or int(info.n_rows * (info.row_bytes + 8) * 1.25) + 4 * block_bytes + (16 << 20)
            self.cache = cache_mod.BlockCache(path, size)
        self._backend_ref = weakref.ref(backend)
        self._owner_pid = os.getpid()
        self._store: BlockStore | None = None
        self._store_pid: int | None = None

    @staticmethod
    def _default_block_rows(info: DatasetInfo) -> int:
        rows = max(1, BLOCK_BYTES // max(1, info.row_bytes))
        if info.block_rows and rows > info.block_rows:
            rows -= rows % info.block_rows  # whole stored blocks of a blocked table
        return rows

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_backend_ref"] = None
        state["_store"] = None
        state["_store_pid"] = None
        state["_owner_pid"] = None
        return state

    @property
    def store(self) -> BlockStore:
        pid = os.getpid()
        if self._store is None or self._store_pid != pid:
            owner = None
            if self._backend_ref is not None and pid == self._owner_pid:
                owner = self._backend_ref()  # the training process's own backend, if still open
            self._store = BlockStore(self.source, self.cache, owner)
            self._store_pid = pid
        return self._store

    @property
    def cache_path(self) -> Path | None:
        return self.cache.path if self.cache is not None else None

    def fill_cache(self, progress: bool | None = None) -> int:
        """Read the whole split into the LMDB cache from this process; returns the blocks written.
        Afterwards DataLoader workers read only the cache (useful where workers cannot open the
        database, e.g. while this process holds a DuckDB file open for writing)."""
        if self.cache is None:
            raise ConfigurationError("this dataset was opened with cache=False; there is no cache to fill")
        R = self.source.block_rows
        blocks = list(range(self.start // R, (self.stop - 1) // R + 1)) if self.stop > self.start else []
        before = self.cache.writes
        for i in range(0, len(blocks), 16):
            self.store.ensure(blocks[i:i + 16])
        self.cache.flush()
        return self.cache.writes - before

    def close(self) -> None:
        if self._store is not None and self._store_pid == os.getpid():
            self._store.close()
        self._store = None
        if self.cache is not None:
            self.cache.close()

    def _tensors(self, features: np.ndarray, labels: np.ndarray):
        x = torch.from_numpy(features).view(len(labels), *self.info.shape)
        if self.dtype != self.info.dtype:
            x = x.to(_TORCH_DTYPES[self.dtype])
        return x, torch.from_numpy(labels)

    def _batch(self, features: "np.ndarray | Ragged", labels: np.ndarray):
        """One batch in this dataset's form: (features, labels); a ragged one as collate says."""
        if not isinstance(features, Ragged):
            return self._tensors(features, labels)
        if self.collate is None:
            raise ConfigurationError(_NO_COLLATE.format(name=self.info.name))
        values = np.ascontiguousarray(features.values, dtype=self.dtype)
        y = torch.from_numpy(np.ascontiguousarray(labels))
        if self.collate == "offsets":
            return OffsetsBatch(y, torch.from_numpy(values), torch.from_numpy(features.offsets[:-1].copy()))
        lengths = features.lengths
        width = int(lengths.max()) if len(lengths) else 0
        padded = np.full((len(lengths), width), self.pad_id, dtype=self.dtype)
        padded[np.arange(width) < lengths[:, None]] = values
        return PaddedBatch(y, torch.from_numpy(padded), torch.from_numpy(lengths.astype(np.int64)))

    def _samples(self, features: "np.ndarray | Ragged", labels: np.ndarray) -> list:
        """(features, label) per row: a ragged row's features are its tokens [length]."""
        if isinstance(features, Ragged):
            values = torch.from_numpy(np.ascontiguousarray(features.values, dtype=self.dtype))
            offsets = features.offsets.tolist()
            y = torch.from_numpy(np.ascontiguousarray(labels))
            return [(values[offsets[i]:offsets[i + 1]], y[i]) for i in range(len(labels))]
        x, y = self._tensors(features, labels)
        return [(x[i], y[i]) for i in range(len(y))]


class TrainingSet(_Base, Dataset):
    """Map-style: ``ds[i]`` is ``(features, label)`` of the split's i-th row (features shaped as
    the dataset's tensor, e.g. (1, 8, 8)). DataLoader batches go through ``__getitems__``: one
    gather from whole blocks, handed to the collate step as ready batch tensors."""

    def __len__(self) -> int:
        return self.stop - self.start

    @staticmethod
    def _default_block_rows(info: DatasetInfo) -> int:
        # at most MAP_BLOCK_ROWS (a batch of 256 from 2 workers: each reads its own blocks), never
        # less than one stored block of a blocked table
        return max(info.block_rows, min(MAP_BLOCK_ROWS, _Base._default_block_rows(info)))

    def _absolute(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for a split of {n} rows")
        return np.where(idx < 0, idx + n, idx) + self.start

    def __getitem__(self, index: int):
        features, labels = self.store.rows(self._absolute([int(index)]), self.read_ahead)
        return self._samples(features, labels)[0]

    def __getitems__(self, indices):
        features, labels = self.store.rows(self._absolute(indices), self.read_ahead)
        if isinstance(features, Ragged):
            if self.collate is None:  # samples, for the caller's own collate_fn
                return self._samples(features, labels)
            return _RaggedRows(self._batch(features, labels),
                               lambda i: self._samples(features.slice(i, i + 1), labels[i:i + 1])[0])
        return _Rows(*self._tensors(features, labels))

    def arrays(self) -> tuple["np.ndarray | list[np.ndarray]", np.ndarray]:
        """The whole split as numpy: (features shaped (n, *shape), labels); a ragged dataset's
        features are a list of n one-dimensional arrays (as stored)."""
        features, labels = self.store.rows(np.arange(self.start, self.stop), self.read_ahead)
        if isinstance(features, Ragged):
            return [features.row(i) for i in range(len(labels))], labels
        return features.reshape(len(labels), *self.info.shape), labels


class BatchSet(_Base, Dataset):
    """Map-style over batches: ``ds[k]`` is ``(features [B, *shape], labels [B])`` of rows
    k*B..(k+1)*B-1 of the split, one range read. Use ``DataLoader(ds, batch_size=None)``."""

    def __init__(self, backend, info, split, *, batch_size: int, drop_last: bool = False, **options) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        options.setdefault("block_rows", batch_size)
        super().__init__(backend, info, split, **options)
        self.batch_size = int(batch_size)
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = self.stop - self.start
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range ({len(self)} batches)")
        lo = self.start + index * self.batch_size
        hi = min(lo + self.batch_size, self.stop)
        return self._batch(*self.store.rows(np.arange(lo, hi), self.read_ahead))


class ShuffledSet(_Base, IterableDataset):
    """An epoch-seeded shuffled stream of batches (or samples with ``batch_size=None``).

    Blocks of the split are permuted by ``(seed, epoch)`` and dealt to DataLoader workers
    round-robin; each worker loads ``buffer_blocks`` of its blocks at a time (``prefetch`` more
    are read by a background thread meanwhile), permutes their rows with a generator seeded by
    ``(seed, epoch, group)``, and yields batches. The same (seed, epoch, num_workers) gives the
    same stream, every row exactly once per epoch. Call ``set_epoch(e)`` before each epoch.
    """

    def __init__(self, backend, info, split, *, batch_size: int | None = None, seed: int = 0, buffer_blocks: int = 4,
                 prefetch: int = 0, drop_last: bool = False, **options) -> None:
        super().__init__(backend, info, split, **options)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.epoch = 0
        self.buffer_blocks = max(1, int(buffer_blocks))
        self.prefetch = int(prefetch)
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = self.stop - self.start
        if self.batch_size is None:
            return n
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _blocks(self) -> list[int]:
        if self.stop <= self.start:
            return []
        R = self.source.block_rows
        return list(range(self.start // R, (self.stop - 1) // R + 1))

    def plan(self, worker: int = 0, workers: int = 1) -> list[list[int]]:
        """The groups of blocks worker ``worker`` of ``workers`` reads this epoch, in order."""
        blocks = np.array(self._blocks(), dtype=np.int64)
        order = np.random.Generator(np.random.PCG64([self.seed, self.epoch])).permutation(len(blocks))
        mine = blocks[order][worker::workers].tolist()
        return [mine[i:i + self.buffer_blocks] for i in range(0, len(mine), self.buffer_blocks)]

    def order(self, worker: int = 0, workers: int = 1) -> np.ndarray:
        """The absolute row ids worker ``worker`` yields this epoch, in order (what __iter__ follows)."""
        parts = [self._group_rows(group) for group in self.plan(worker, workers)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _group_rows(self, group: list[int]) -> np.ndarray:
        R = self.source.block_rows
        rows = np.concatenate([np.arange(max(b * R, self.start), min((b + 1) * R, self.stop)) for b in group])
        rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch, group[0]]))
        return rows[rng.permutation(len(rows))]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        store = self.store
        groups = self.plan(worker, workers)

        def load(group):
            rows = self._group_rows(group)
            store.ensure(sorted(group))
            return rows, store.rows(rows)

        pending_x: list[np.ndarray] = []
        pending_y: list[np.ndarray] = []
        pending = 0
        B = self.batch_size
        for rows, (features, labels) in _ahead(load, groups, self.prefetch):
            if B is None:
                yield from self._samples(features, labels)
                continue
            if not isinstance(features, Ragged):
                # batches are views of the group's gathered rows; only a batch that spans two
                # groups is copied together
                at, n = 0, len(labels)
                if pending:
                    at = min(B - pending, n)
                    pending_x.append(features[:at])
                    pending_y.append(labels[:at])
                    pending += at
                    if pending < B:
                        continue
                    yield self._batch(np.concatenate(pending_x), np.concatenate(pending_y))
                    pending_x, pending_y, pending = [], [], 0
                full = at + (n - at) // B * B
                for i in range(at, full, B):
                    yield self._batch(features[i:i + B], labels[i:i + B])
                if full < n:
                    pending_x, pending_y, pending = [features[full:]], [labels[full:]], n - full
                continue
            pending_x.append(features)
            pending_y.append(labels)
            pending += len(labels)
            if pending < B:
                continue
            xs = _cat(pending_x)
            ys = np.concatenate(pending_y) if len(pending_y) > 1 else pending_y[0]
            full = (len(ys) // B) * B
            for i in range(0, full, B):
                part = xs.slice(i, i + B) if isinstance(xs, Ragged) else np.ascontiguousarray(xs[i:i + B])
                yield self._batch(part, np.ascontiguousarray(ys[i:i + B]))
            pending_x, pending_y = ([_slice(xs, full, len(ys))], [ys[full:]]) if full < len(ys) else ([], [])
            pending = len(ys) - full
        if B is not None and pending and not self.drop_last:
            xs, ys = _cat(pending_x), np.concatenate(pending_y)
            yield self._batch(xs, ys)
        if store.cache is not None:
            store.cache.flush()


_NO_COLLATE = ("dataset {name!r} holds rows of different lengths (token lists); say how a batch is made: "
               "collate='padded' (tokens [B, L] padded with pad_id, plus lengths) or collate='offsets' (the "
               "AG News tutorial's flat text plus offsets, for nn.EmbeddingBag) — or pass your own collate_fn "
               "to a DataLoader over the per-sample form")

_TORCH_DTYPES: dict[str, Any] = {}
if torch is not None:
    _TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "uint8": torch.uint8, "int8": torch.int8,
                     "int16": torch.int16, "int32": torch.int32, "int64": torch.int64}


def _output_options(info: DatasetInfo, dtype: str | None, collate: str | None,
                    pad_id: int | float) -> tuple[str, str | None, int | float]:
    """(output dtype, collate mode, pad id) checked against the dataset: conversions must be
    lossless; collate applies to ragged datasets, offsets to integer tokens."""
    stored = np.dtype(info.dtype)
    if collate is not None and collate not in COLLATES:
        raise ConfigurationError(f"collate must be one of {', '.join(COLLATES)}, got {collate!r}")
    if collate is not None and not info.ragged:
        raise ConfigurationError(f"dataset {info.name!r} has one shape {list(info.shape)} for every row, so its "
                                 "batches need no collate mode; drop collate=... (it is for ragged datasets, "
                                 "exported with ragged=True)")
    if dtype is None:
        dtype = "int64" if info.ragged and stored.kind in "iu" else info.dtype
    if dtype not in DTYPES:
        raise DTypeMismatch(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if not np.can_cast(stored, np.dtype(dtype), "safe"):
        raise DTypeMismatch(f"dataset {info.name!r} stores {info.dtype}, which {dtype} cannot hold exactly; ask for a "
                            f"wider dtype (e.g. 'float32' for uint8 images, 'float64' for int32), or export with "
                            f"dtype='{dtype}'")
    if collate == "offsets" and (stored.kind not in "iu" or np.dtype(dtype).kind not in "iu"):
        raise DTypeMismatch(f"collate='offsets' gives token ids for nn.EmbeddingBag, but dataset {info.name!r} "
                            f"stores {info.dtype} values" + ("" if stored.kind in "iu" else
                            " — export the token column as integers (e.g. CAST(tokens AS INTEGER[]))")
                            + (f"; and dtype must be int64 or int32, not {dtype}" if np.dtype(dtype).kind not in "iu"
                               else ""))
    if collate == "padded":
        if isinstance(pad_id, bool) or not isinstance(pad_id, (int, float, np.integer, np.floating)):
            raise ConfigurationError(f"pad_id must be a number (the token id that pads short rows), got {pad_id!r}")
        if np.dtype(dtype).kind in "iu":
            limits = np.iinfo(np.dtype(dtype))
            if float(pad_id) != int(pad_id) or not limits.min <= int(pad_id) <= limits.max:
                raise ConfigurationError(f"pad_id {pad_id!r} is not a {dtype} value; pick a token id such as 0")
    return dtype, collate, pad_id


def _ahead(load, items: list, depth: int) -> Iterator[Any]:
    """``load(item)`` for each item in order; with ``depth`` > 0 a background thread runs up to
    ``depth`` loads ahead of the consumer."""
    if depth <= 0:
        for item in items:
            yield load(item)
        return
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def worker():
        try:
            for item in items:
                if stop.is_set():
                    return
                results.put(("ok", load(item)))
            results.put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            results.put(("error", exc))

    thread = threading.Thread(target=worker, daemon=True, name="dbdl-prefetch")
    thread.start()
    try:
        while True:
            kind, value = results.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            try:
                results.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def training_set(backend: Backend, name: str, split: str | None = "train", *, batch_size: int | None = None,
                 shuffle: bool = False, seed: int = 0, cache: bool | str | Path = True, block_rows: int | None = None,
                 prefetch: int = 0, drop_last: bool = False, buffer_blocks: int = 4,
                 cache_map_size: int | None = None, dtype: str | None = None, collate: str | None = None,
                 pad_id: int | float = 0):
    from dbdl_udf import datasets

    info = datasets.get(backend.catalog, name)
    if info.ragged and batch_size is not None and collate is None:
        raise ConfigurationError(_NO_COLLATE.format(name=info.name))
    options = dict(cache=cache, block_rows=block_rows, cache_map_size=cache_map_size, dtype=dtype, collate=collate,
                   pad_id=pad_id)
    if shuffle:
        return ShuffledSet(backend, info, split, batch_size=batch_size, seed=seed, buffer_blocks=buffer_blocks,
                           prefetch=prefetch, drop_last=drop_last, **options)
    if batch_size is not None:
        return BatchSet(backend, info, split, batch_size=batch_size, drop_last=drop_last, read_ahead=prefetch, **options)
    return TrainingSet(backend, info, split, read_ahead=prefetch, **options)
