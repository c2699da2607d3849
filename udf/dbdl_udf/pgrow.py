"""Row-at-a-time scoring on PostgreSQL without per-call overheads: ``dbdl.predict('m', feats)``.

One call scores one row, so what surrounds onnxruntime is what a row costs. Two things are kept
between calls (both plain Python state in the server process; nothing here runs SQL):

- ``RowScorer``: one model version's output bound once to an onnxruntime IOBinding over
  preallocated input and output buffers. A call copies the row's bytes into the input buffer
  (array_send() bytes of a real[]: one memcpy and one strided byte-swapping copy; a bytea of
  little-endian float32: one memcpy), runs the binding, and reads the value out of the output
  buffer: no feed dict, no validation pass in onnxruntime's Python wrapper, no output allocation.
  Only the common case has one (one float32 input and a float32 output of fixed per-row shapes, a
  model that takes any number of rows); for anything else ``score`` answers ``NOT_FAST`` and the
  caller takes the general path.
- ``RowCache``: the resolved model references of one *registry view*. The SQL wrappers hand every
  call a token, ``pg_snapshot_send(pg_current_snapshot()) || timestamptz_send(transaction_timestamp())``:
  two calls with the same token see the same committed transactions, hence the same registry rows,
  so one resolution serves them all (the first call's, made under that very snapshot). A version
  another session promotes is in the next snapshot that sees its commit, a new token. What a token
  does not show is this transaction's own writes: the registry's triggers call ``forget`` (and no
  resolution is cached again in the writing transaction). A token is only cached after the
  resolving query computed the same token itself, so a caller that hands the internal function a
  made-up token can make its own call slower, never another call stale.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

import numpy as np

from .runtime import Signature

#: ``score``'s answer when the row or the model is not the common case
NOT_FAST = object()

_HEADER = struct.pack(">iiI", 1, 0, 700)  # array_send() of a real[]: one dimension, no NULLs, element oid 700
_BE_F4 = np.dtype(">f4")
_LITTLE = sys.byteorder == "little"
_KINDS = ("scalar", "array", "class")


class RowScorer:
    """One model version's output, scored one row at a time through a bound onnxruntime call."""

    __slots__ = ("kinds", "width", "_run", "_row", "_row_bytes", "_raw", "_src", "_flat", "_vector", "_in", "_out",
                 "_binding", "_session")

    def __init__(self, session, input_name: str, input_shape: tuple[int, ...], output_name: str,
                 output_shape: tuple[int, ...]) -> None:
        width = int(np.prod(input_shape))
        per_row = int(np.prod(output_shape))
        self.width = width
        self.kinds = frozenset(k for k, ok in zip(_KINDS, (per_row == 1, True, per_row >= 2)) if ok)
        self._in = np.zeros((1, *input_shape), dtype=np.float32)
        self._out = np.zeros((1, *output_shape), dtype=np.float32)
        self._row = self._in.reshape(-1)
        self._row_bytes = memoryview(self._in).cast("B") if _LITTLE else None
        self._flat = self._out.reshape(-1)
        self._vector = vector_format(per_row)
        # array_send() bytes land here as they are; _src reads their values (every 8 bytes, after
        # each element's length word) as big-endian float32
        self._raw = bytearray(20 + 8 * width)
        self._src = np.ndarray((width,), _BE_F4, self._raw, 24, (8,))
        binding = session.io_binding()
        binding.bind_input(input_name, "cpu", 0, np.float32, list(self._in.shape), self._in.ctypes.data)
        binding.bind_output(output_name, "cpu", 0, np.float32, list(self._out.shape), self._out.ctypes.data)
        self._binding, self._session = binding, session
        c_session, c_binding = getattr(session, "_sess", None), getattr(binding, "_iobinding", None)
        if c_session is not None and c_binding is not None and hasattr(c_session, "run_with_iobinding"):
            # the C++ method the Python wrapper calls, without the wrapper's frame
            self._run = lambda run=c_session.run_with_iobinding: run(c_binding, None)
        else:  # pragma: no cover - another onnxruntime layout
            self._run = lambda: session.run_with_iobinding(binding)

    @classmethod
    def build(cls, session, signature: Signature, output: int) -> "RowScorer | None":
        """The scorer of ``signature.outputs[output]``, or None where the fast path does not apply."""
        if len(signature.inputs) != 1 or signature.batch not in (None, 1) or not 0 <= output < len(signature.outputs):
            return None
        spec, out = signature.inputs[0], signature.outputs[output]
        if spec.dtype != "float32" or out.dtype != "float32" or spec.per_row is None or out.per_row is None:
            return None
        if not spec.per_row or not out.per_row:
            return None
        try:
            return cls(session, spec.name, tuple(spec.shape), out.name, tuple(out.shape))
        except Exception:  # onnxruntime refused the binding: the general path will say why, if anything
            return None

    def score(self, data: bytes, packed: bool, kind: str) -> Any:
        """predict (``scalar``), predict_array or predict_class of one row, or NOT_FAST.

        ``data`` is array_send() of a real[] when ``packed``, else a bytea of little-endian float32."""
        if kind not in self.kinds:
            return NOT_FAST
        if packed:
            if len(data) != len(self._raw) or not data.startswith(_HEADER):
                return NOT_FAST
            self._raw[:] = data
            self._row[:] = self._src
        elif len(data) == 4 * self.width and self._row_bytes is not None:
            self._row_bytes[:] = data
        else:
            return NOT_FAST
        try:
            self._run()
        except Exception:  # the model refused the row (or returned another shape): the general path explains
            return NOT_FAST
        if kind == "class":
            return int(self._flat.argmax())
        if kind == "array":
            return self._vector % tuple(self._flat.tolist())
        return self._flat[0].item()


_VECTOR_FORMATS: dict[int, str] = {}


def vector_format(n: int) -> str:
    """The %-format of a real[] literal of ``n`` float32 values: 9 significant digits give every
    float32 back exactly (NaN, infinities and -0 included), and one format call plus PostgreSQL's
    array_in cost a fraction of PL/Python's per-element conversion (str() and float4in per value)."""
    text = _VECTOR_FORMATS.get(n)
    if text is None:
        text = _VECTOR_FORMATS[n] = "{" + ",".join(["%.9g"] * n) + "}"
    return text


def vector_text(values: list | None) -> str | None:
    """A list of float32 values (the general path's predict_array result) as a real[] literal."""
    return None if values is None else vector_format(len(values)) % tuple(values)


class RowEntry:
    """One model reference as resolved under one registry view."""

    __slots__ = ("name", "version", "sha256", "signature", "output", "ref", "session", "scorer", "options")

    def __init__(self, name: str, version: int, sha256: str, signature: Signature, output: int, session,
                 scorer: RowScorer | None) -> None:
        self.name, self.version, self.sha256, self.signature, self.output = name, version, sha256, signature, output
        self.ref = f"{name}@{version}"
        self.session, self.scorer = session, scorer
        self.options: dict | None = None  # read when the general path first needs them


class RowCache:
    """The resolved references of the current registry view (see the module's docstring)."""

    def __init__(self) -> None:
        self.token: bytes | None = None
        self.entries: dict[str, RowEntry] = {}
        self._dirty: bytes | None = None  # transaction_timestamp() bytes of a transaction that wrote the registry
        self._scorers: dict[tuple[str, int], RowScorer | None] = {}

    def keep(self, token: bytes | None, checked: bytes, ref: str, entry: RowEntry) -> None:
        """Cache ``entry`` for ``ref`` under ``token`` when the resolving query's own token
        ``checked`` is the same (the caller's token is genuine) and this transaction has not
        written the registry."""
        if token is None or token != checked or len(token) < 8 or token[-8:] == self._dirty:
            return
        if token != self.token:
            self.token, self.entries = token, {}
        if len(self.entries) >= 256:
            self.entries.clear()
        self.entries[ref] = entry

    def scorer(self, session, signature: Signature, sha256: str, output: int) -> RowScorer | None:
        key = (sha256, output)
        if key not in self._scorers:
            if len(self._scorers) >= 64:
                self._scorers.clear()
            self._scorers[key] = RowScorer.build(session, signature, output)
        scorer = self._scorers[key]
        if scorer is not None and scorer._session is not session:  # the session was rebuilt: bind the new one
            del self._scorers[key]
            return self.scorer(session, signature, sha256, output)
        return scorer

    def forget(self, transaction: bytes | None) -> None:
        """The registry was written in this process, in the transaction whose start is ``transaction``."""
        self.token, self.entries, self._dirty = None, {}, transaction


ROWS = RowCache()
