"""Binary traces (`.kvmt`, INTERFACES.md section 3): header, streaming chunk reader, crash-safe writer."""

from __future__ import annotations

import io
import os
import struct
import sys
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np

from kvmcache import verbosity
from kvmcache.atomic import open_output, unlink_quietly
from kvmcache.errors import KvmcacheError
from kvmcache.limits import MAX_CHUNK_BYTES, MAX_HEADER_SIZE, MAX_RECORD_SIZE
from kvmcache.trace.events import EVENT_DTYPE, VM_TYPES, TraceHeader

MAGIC = b"KVMCTRC\0"
MAJOR = 1
MINOR = 0
HEADER_SIZE = 64
RECORD_SIZE = 32
FLAG_COMPLETE = 0x1
#: magic, major, minor, header size, record size, vm type, root level, flags, count, gfn_limit, host_pfn_limit
_HEADER = struct.Struct("<8sHHIIBBHQQQ16x")
assert _HEADER.size == HEADER_SIZE

#: Records per chunk: 2**20 records = 32 MiB, large enough to amortise the kernel call and
#: the hand-over between the reader thread and the strategy threads, small enough to stay a
#: modest, constant slice of memory. Tuned (16M-event steady trace, replay / five-strategy
#: compare): 2**14: 13.6 M events/s; 2**16: 15.9; 2**18: 16.9 / 5.5-5.8 s; 2**20: 16.9 /
#: 5.0-5.1 s; 2**22: 14.6 (the chunk no longer fits the caches).
DEFAULT_CHUNK = 1 << 20

Warn = Callable[[str], None]


def stderr_warn(msg: str) -> None:
    verbosity.note(f"warning: {msg}")


def pack_header(h: TraceHeader, count: int = 0, complete: bool = False) -> bytes:
    """The 64-byte header for ``h`` with the given record count and complete flag."""
    if h.vm_type not in VM_TYPES:
        raise KvmcacheError(f"unknown vm type {h.vm_type!r}")
    return _HEADER.pack(
        MAGIC,
        MAJOR,
        MINOR,
        HEADER_SIZE,
        RECORD_SIZE,
        VM_TYPES.index(h.vm_type),
        h.root_level,
        FLAG_COMPLETE if complete else 0,
        count,
        h.gfn_limit,
        h.host_pfn_limit,
    )


def is_binary(first_bytes: bytes) -> bool:
    """True when ``first_bytes`` start with the binary trace magic."""
    return first_bytes[:8] == MAGIC


def parse_header(raw: bytes, path: str) -> tuple[TraceHeader, int, int]:
    """Parse the fixed part of a header; returns (header, header size, record size)."""
    if len(raw) < 8 or not is_binary(raw):
        raise KvmcacheError(f"{path}: not a kvmcache binary trace (bad magic)")
    if len(raw) < HEADER_SIZE:
        raise KvmcacheError(f"{path}: truncated header ({len(raw)} of {HEADER_SIZE} bytes)")
    (_, major, minor, hsize, rsize, vmt, root, flags, count, gfn_limit, pfn_limit) = _HEADER.unpack(
        raw[:HEADER_SIZE]
    )
    if major > MAJOR:
        raise KvmcacheError(
            f"{path}: trace format version {major}.{minor} is newer than this kvmcache "
            f"reads ({MAJOR}.x); upgrade kvmcache"
        )
    if major < 1:
        raise KvmcacheError(f"{path}: unknown trace format version {major}.{minor}")
    if hsize < HEADER_SIZE or rsize < RECORD_SIZE:
        raise KvmcacheError(f"{path}: invalid header (header size {hsize}, record size {rsize})")
    _check_sizes(path, hsize, rsize)
    if vmt >= len(VM_TYPES):
        raise KvmcacheError(f"{path}: invalid header: unknown vm type code {vmt}")
    if root not in (4, 5):
        raise KvmcacheError(f"{path}: invalid header: root level {root} (must be 4 or 5)")
    if gfn_limit == 0 or pfn_limit == 0:
        raise KvmcacheError(f"{path}: invalid header: gfn_limit and host_pfn_limit must be > 0")
    header = TraceHeader(
        vm_type=VM_TYPES[vmt],
        root_level=root,
        gfn_limit=gfn_limit,
        host_pfn_limit=pfn_limit,
        count=count if count else None,
        complete=bool(flags & FLAG_COMPLETE),
        version=(major, minor),
        path=path,
        format="binary",
    )
    return header, hsize, rsize


def _check_sizes(path: str, hsize: int, rsize: int) -> None:
    """Header and record sizes a later minor version may declare, up to the limits of
    docs/limits.md (a larger value is a corrupt header, not an extension)."""
    if hsize > MAX_HEADER_SIZE or rsize > MAX_RECORD_SIZE:
        raise KvmcacheError(
            f"{path}: invalid header (header size {hsize}, record size {rsize}; "
            f"each at most {MAX_RECORD_SIZE >> 20} MiB)"
        )


def chunk_records(chunk_events: int, rsize: int) -> int:
    """Records per chunk: at most ``chunk_events`` and at most
    :data:`~kvmcache.limits.MAX_CHUNK_BYTES` of records of ``rsize`` bytes."""
    return max(1, min(chunk_events, MAX_CHUNK_BYTES // rsize))


def _record_view_dtype(rsize: int) -> np.dtype:
    """Record dtype for a file whose records are ``rsize`` bytes (minor versions may grow them)."""
    if rsize == RECORD_SIZE:
        return EVENT_DTYPE
    return np.dtype(
        {
            "names": list(EVENT_DTYPE.names),
            "formats": [EVENT_DTYPE.fields[n][0] for n in EVENT_DTYPE.names],
            "offsets": [EVENT_DTYPE.fields[n][1] for n in EVENT_DTYPE.names],
            "itemsize": rsize,
        }
    )


class BinaryTrace:
    """A binary trace opened for streaming: ``header`` now, ``chunks()`` on demand.

    A regular file is memory-mapped read-only; a pipe (``-`` is standard input) is read
    chunk by chunk. Neither ever holds more than one chunk of records in memory.
    """

    def __init__(
        self,
        path: str,
        *,
        strict: bool = False,
        chunk_events: int = DEFAULT_CHUNK,
        warn: Warn | None = None,
        stream: BinaryIO | None = None,
        prefix: bytes = b"",
    ) -> None:
        self.path = path
        self.strict = strict
        self.chunk_events = max(1, int(chunk_events))
        self.warn = warn or stderr_warn
        self._stream = stream
        self._prefix = prefix
        self._mmap_ok = stream is None and path != "-"
        if self._mmap_ok:
            try:
                with open(path, "rb") as f:
                    raw = f.read(HEADER_SIZE)
                    self.header, self._hsize, self._rsize = parse_header(raw, path)
                    size = os.fstat(f.fileno()).st_size
            except OSError as e:
                raise KvmcacheError(f"{path}: cannot read: {e.strerror or e}") from None
            if size < self._hsize:
                raise KvmcacheError(f"{path}: truncated header ({size} of {self._hsize} bytes)")
            body = size - self._hsize
            avail, tail = divmod(body, self._rsize)
            self._records = self._reconcile(avail, tail)
        else:
            if self._stream is None:
                self._stream = sys.stdin.buffer
            raw = self._prefix + _read_exact(self._stream, HEADER_SIZE - len(self._prefix))
            self.header, self._hsize, self._rsize = parse_header(raw, path)
            extra = self._hsize - HEADER_SIZE
            if extra and len(_read_exact(self._stream, extra)) < extra:
                raise KvmcacheError(f"{path}: truncated header")
            self._records = None

    def _reconcile(self, avail: int, tail: int) -> int:
        """How many records to read, given those present and a trailing byte count."""
        declared = self.header.count
        if tail:
            self._partial(tail)
        if declared is None:
            return avail
        if declared > avail:
            msg = f"{self.path}: header declares {declared} records but the file holds {avail}"
            if self.strict:
                raise KvmcacheError(msg)
            self.warn(msg + "; reading those")
            return avail
        if declared < avail:
            self._surplus(f"the file holds {avail} whole records")
        return declared

    def _surplus(self, holds: str) -> None:
        """More records than the header's count: only ``count`` are read (INTERFACES.md 3)."""
        msg = f"{self.path}: header declares {self.header.count} records but {holds}"
        if self.strict:
            raise KvmcacheError(msg)
        self.warn(f"{msg}; reading only {self.header.count}")

    def _partial(self, nbytes: int) -> None:
        msg = f"{self.path}: trailing partial record ({nbytes} bytes) ignored"
        if self.strict:
            raise KvmcacheError(f"{self.path}: trailing partial record ({nbytes} bytes)")
        self.warn(msg)

    def chunks(self) -> Iterator[np.ndarray]:
        """Yield arrays of EVENT_DTYPE records, at most ``chunk_events`` each, in file order."""
        if self._mmap_ok:
            yield from self._mmap_chunks()
        else:
            yield from self._pipe_chunks()

    def _mmap_chunks(self) -> Iterator[np.ndarray]:
        """One read-only mapping per chunk window, dropped when the next chunk is mapped.

        A single mapping of the whole file would keep every page it touched resident
        (file-backed pages count in RSS), so memory would grow with the trace.
        """
        n = self._records or 0
        if n == 0:
            return
        view_dtype = _record_view_dtype(self._rsize)
        step = chunk_records(self.chunk_events, self._rsize)
        for start in range(0, n, step):
            count = min(step, n - start)
            part = np.memmap(
                self.path,
                dtype=view_dtype,
                mode="r",
                offset=self._hsize + start * self._rsize,
                shape=(count,),
            )
            if view_dtype is EVENT_DTYPE:
                yield part
            else:
                out = np.empty(count, dtype=EVENT_DTYPE)
                for name in EVENT_DTYPE.names:
                    out[name] = part[name]
                yield out
            del part

    def _pipe_chunks(self) -> Iterator[np.ndarray]:
        assert self._stream is not None
        rs = self._rsize
        view_dtype = _record_view_dtype(rs)
        remaining = self.header.count
        step = chunk_records(self.chunk_events, rs)
        buf = bytearray(step * rs)
        while remaining is None or remaining > 0:
            want = step if remaining is None else min(step, remaining)
            got = _readinto_full(self._stream, memoryview(buf)[: want * rs])
            nrec, tail = divmod(got, rs)
            if nrec:
                part = np.frombuffer(bytes(buf[: nrec * rs]), dtype=view_dtype)
                if view_dtype is not EVENT_DTYPE:
                    out = np.empty(nrec, dtype=EVENT_DTYPE)
                    for name in EVENT_DTYPE.names:
                        out[name] = part[name]
                    part = out
                yield part
                if remaining is not None:
                    remaining -= nrec
            if got < want * rs:
                if tail:
                    self._partial(tail)
                if remaining:
                    msg = f"{self.path}: header declares {self.header.count} records but the stream ended {remaining} short"
                    if self.strict:
                        raise KvmcacheError(msg)
                    self.warn(msg)
                return
        # ``count`` records read: look one record further (never more) for a surplus.
        extra = _read_exact(self._stream, rs)
        if len(extra) == rs:
            self._surplus("the stream holds more")
        elif extra:
            self._partial(len(extra))


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        b = stream.read(n - len(out))
        if not b:
            break
        out += b
    return bytes(out)


def _readinto_full(stream: BinaryIO, view: memoryview) -> int:
    got = 0
    total = len(view)
    readinto = getattr(stream, "readinto", None)
    while got < total:
        if readinto is not None:
            n = readinto(view[got:])
        else:
            b = stream.read(total - got)
            n = len(b)
            view[got : got + n] = b
        if not n:
            break
        got += n
    return got


class BinaryWriter:
    """Crash-safe streaming writer: a temporary file next to ``path``, renamed on close.

    The header is written first with count 0 and the complete flag clear; ``close()``
    patches both, so even the temporary file of a crashed writer is a readable trace.
    A ``path`` that is a device or a FIFO is written in place (:func:`open_output`); where it
    cannot seek back, the header keeps count 0 ("unknown: derive it from the file size").
    Write failures (a full disk) are usage errors naming ``path``; the destination is then
    left as it was.
    """

    def __init__(self, path: str, header: TraceHeader) -> None:
        self.path = path
        self.header = header
        self.count = 0
        fd, self._tmp, self._real = open_output(path)
        self._f: io.BufferedWriter = os.fdopen(fd, "wb")
        self._closed = False
        self._guard(lambda: self._f.write(pack_header(header, 0, False)))

    def _guard(self, action) -> None:
        try:
            action()
        except OSError as e:
            self.abort()
            raise KvmcacheError(f"{self.path}: cannot write: {e.strerror or e}") from None

    def write(self, events: np.ndarray) -> None:
        """Append records (an array of EVENT_DTYPE)."""
        if events.dtype != EVENT_DTYPE:
            events = events.astype(EVENT_DTYPE)
        # The array's own buffer, not a tobytes() copy: one less pass over every block.
        self._guard(lambda: self._f.write(memoryview(np.ascontiguousarray(events)).cast("B")))
        self.count += len(events)

    def _finish(self) -> None:
        self._f.flush()
        if self._tmp is not None or self._f.seekable():
            self._f.seek(0)
            self._f.write(pack_header(self.header, self.count, True))
        self._f.close()
        if self._tmp is not None:
            os.replace(self._tmp, self._real)

    def close(self) -> None:
        """Patch count and complete flag, then atomically rename into place."""
        if self._closed:
            return
        self._guard(self._finish)
        self._closed = True

    def abort(self) -> None:
        """Drop the temporary file; the destination is left untouched."""
        if self._closed:
            return
        self._closed = True
        try:
            self._f.close()
        except OSError:
            pass
        if self._tmp is not None:
            unlink_quietly(self._tmp)

    def __enter__(self) -> BinaryWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_binary(path: str, header: TraceHeader, events: np.ndarray) -> None:
    """Write a whole in-memory trace to ``path`` (atomically)."""
    with BinaryWriter(path, header) as w:
        w.write(events)
