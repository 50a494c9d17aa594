"""Reading and writing traces. No numba, no rich: this package only moves events around."""

from __future__ import annotations

import io
import os
import stat
import sys
from collections.abc import Iterator
from typing import BinaryIO, Protocol

import numpy as np

from kvmcache.errors import KvmcacheError, reading
from kvmcache.trace.binary import DEFAULT_CHUNK, MAGIC, BinaryTrace, Warn
from kvmcache.trace.events import TraceHeader

YAML_EXTS = (".yaml", ".yml")


class TraceSource(Protocol):
    """A trace opened for reading: its header now, its events as chunks on demand."""

    header: TraceHeader

    def chunks(self) -> Iterator[np.ndarray]: ...


class InMemoryTrace:
    """A trace whose events are already in memory (YAML scenarios, tests, synth)."""

    def __init__(self, header: TraceHeader, events: np.ndarray, chunk_events: int = DEFAULT_CHUNK):
        self.header = header
        self.events = events
        self.chunk_events = max(1, int(chunk_events))
        if header.count is None:
            header.count = len(events)

    def chunks(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self.events), self.chunk_events):
            yield self.events[start : start + self.chunk_events]


def _stat(path: str) -> os.stat_result:
    with reading(path):
        st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise KvmcacheError(f"{path}: is a directory, not a trace")
    return st


def detect_format(path: str) -> str:
    """'binary' or 'yaml' for an existing regular file: the magic decides, then the extension.

    A pipe or device is refused (peeking at it would consume what a second open needs):
    :func:`open_trace` reads those once, as a stream.
    """
    st = _stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise KvmcacheError(
            f"{path}: not a regular file (a pipe or device can be read only once); "
            "give a trace file"
        )
    with reading(path, what="a trace"), open(path, "rb") as f:
        first = f.read(len(MAGIC))
    if first == MAGIC:
        return "binary"
    if path.lower().endswith(YAML_EXTS):
        return "yaml"
    if path.lower().endswith(".kvmt"):
        raise KvmcacheError(f"{path}: not a kvmcache binary trace (bad magic)")
    return "yaml"


def open_trace(
    path: str,
    *,
    strict: bool = False,
    chunk_events: int = DEFAULT_CHUNK,
    warn: Warn | None = None,
) -> TraceSource:
    """Open a binary or YAML trace (``-`` reads standard input, binary or YAML).

    A file that is not a regular file (a FIFO, ``<(...)``, a character device) is opened
    once and read as a stream, like standard input.
    """
    from kvmcache.trace import yamlfmt

    if path == "-":
        return _open_stream("-", "<stdin>", sys.stdin.buffer, strict, chunk_events, warn)
    st = _stat(path)
    if not stat.S_ISREG(st.st_mode):
        try:
            f = open(path, "rb")  # noqa: SIM115 - kept open by the trace it returns
        except OSError as e:
            raise KvmcacheError(f"{path}: cannot read: {e.strerror or e}") from None
        try:
            trace = _open_stream(path, path, f, strict, chunk_events, warn)
        except BaseException:
            f.close()
            raise
        if trace.header.format == "binary":
            _load_sidecar(trace.header)  # a named FIFO may have one
        else:
            f.close()  # a YAML trace is in memory now
        return trace
    fmt = detect_format(path)
    if fmt == "binary":
        trace = BinaryTrace(path, strict=strict, chunk_events=chunk_events, warn=warn)
        _load_sidecar(trace.header)
        return trace
    header, events = yamlfmt.read_yaml(path)
    return InMemoryTrace(header, events, chunk_events)


def _open_stream(
    path: str,
    name: str,
    stream: BinaryIO,
    strict: bool,
    chunk_events: int,
    warn: Warn | None,
) -> TraceSource:
    """A trace read once from ``stream``: the magic decides; anything else must be YAML text
    (binary data is refused at its first block, never read into memory)."""
    from kvmcache.trace import yamlfmt
    from kvmcache.yamlio import BINARY_TEXT, read_text_stream

    try:
        first = _read_upto(stream, len(MAGIC))
        if first == MAGIC:
            return BinaryTrace(
                path,
                strict=strict,
                chunk_events=chunk_events,
                warn=warn,
                stream=stream,
                prefix=first,
            )
        text = read_text_stream(_Prefixed(first, stream), name, "a YAML trace", binary=BINARY_TEXT)
    except OSError as e:
        raise KvmcacheError(f"{name}: cannot read: {e.strerror or e}") from None
    header, events = yamlfmt.read_yaml(name, text=text)
    return InMemoryTrace(header, events, chunk_events)


def _read_upto(stream: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end of the stream (a pipe may return less)."""
    out = b""
    while len(out) < n:
        b = stream.read(n - len(out))
        if not b:
            break
        out += b
    return out


class _Prefixed(io.RawIOBase):
    """Bytes already read from a stream, then the rest of the stream."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self._prefix = prefix
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        if self._prefix:
            if n is None or n < 0:
                out, self._prefix = self._prefix, b""
                return out + self._stream.read()
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            if len(out) < n:
                out += self._stream.read(n - len(out))
            return out
        return self._stream.read(n)


def sidecar_path(path: str) -> str:
    """Where a binary trace keeps the model parameters its YAML source asked for."""
    return path + ".params.yaml"


def import_sidecar_path(path: str) -> str:
    """Where `kvmcache import` records its sources, producer and vCPU map (read by `info`)."""
    return path + ".import.yaml"


def _load_sidecar(header: TraceHeader) -> None:
    side = sidecar_path(header.path)
    if not os.path.exists(side):
        return
    from kvmcache.yamlio import load_yaml_file

    # One line naming the sidecar for non-UTF-8 bytes, invalid YAML or a duplicate key.
    data = load_yaml_file(side, "a parameters sidecar")
    if data is None:
        return
    if not isinstance(data, dict):
        raise KvmcacheError(f"{side}: parameters sidecar must be a mapping of NAME: VALUE")
    from kvmcache.params import parse_mapping

    parse_mapping(data, side)  # a bad name or value is an error naming the sidecar
    header.params = dict(data)
