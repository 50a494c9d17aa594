"""Opening recorded traces: plain or compressed text, standard input, and binary recordings
(`trace.dat`, `perf.data`) rendered to text by `trace-cmd report` / `perf script`."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, BinaryIO

import numpy as np

from kvmcache.errors import KvmcacheError, reading
from kvmcache.importers.mapping import Importer, ImportOptions, ImportStats
from kvmcache.trace.events import TraceHeader

TRACE_DAT_MAGIC = b"\x17\x08\x44tracing"
PERF_DATA_MAGIC = b"PERFILE2"
_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    lzma.LZMAError,
    zlib.error,
)

#: binary magic -> (producer, command line before the file, what to install)
TOOLS: dict[bytes, tuple[str, tuple[str, ...], str]] = {
    TRACE_DAT_MAGIC: ("trace-cmd", ("trace-cmd", "report", "-i"), "trace-cmd"),
    PERF_DATA_MAGIC: ("perf-script", ("perf", "script", "-i"), "perf (linux-tools / linux-perf)"),
}


def _decompressor(raw: BinaryIO, name: str) -> BinaryIO:
    """``raw`` itself, or a decompressing reader chosen by the stream's magic bytes."""
    head = _peek(raw, 6)
    if head.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if head.startswith(_BZIP2_MAGIC):
        return bz2.BZ2File(raw, mode="rb")  # type: ignore[return-value]
    if head.startswith(_XZ_MAGIC):
        return lzma.LZMAFile(raw, mode="rb")  # type: ignore[return-value]
    if head.startswith(_ZSTD_MAGIC):
        try:
            import zstandard
        except ImportError:
            raise KvmcacheError(
                f"{name}: zstd-compressed input needs the Python module 'zstandard' "
                "(pip install zstandard), or decompress it first (zstd -d)"
            ) from None
        global _DECOMPRESS_ERRORS
        if zstandard.ZstdError not in _DECOMPRESS_ERRORS:
            _DECOMPRESS_ERRORS = (*_DECOMPRESS_ERRORS, zstandard.ZstdError)
        tracked = _ZstdFrames(raw)
        reader = zstandard.ZstdDecompressor().stream_reader(tracked, read_across_frames=True)
        return io.BufferedReader(_ZstdChecked(reader, tracked))  # type: ignore[arg-type]
    return raw


class _ZstdFrames(io.RawIOBase):
    """The compressed stream, read through while following its frame structure (RFC 8878:
    frame headers, block headers, checksums, skippable frames), so that an input that ends
    inside a frame is known; python-zstandard's reader ends quietly there."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.pending = bytearray()  # bytes of the structure being parsed
        self.skip = 0  # payload bytes still to pass over
        self.state = "magic"
        self.need = 4
        self.checksum = False
        self.eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.raw.read(len(b))
        if not data:
            self.eof = True
            return 0
        b[: len(data)] = data
        self._feed(memoryview(data))
        return len(data)

    def _feed(self, data: memoryview) -> None:
        i = 0
        while i < len(data):
            if self.skip:
                n = min(self.skip, len(data) - i)
                self.skip -= n
                i += n
                continue
            n = min(self.need - len(self.pending), len(data) - i)
            self.pending += data[i : i + n]
            i += n
            if len(self.pending) == self.need:
                self._parsed(bytes(self.pending))

    def _parsed(self, got: bytes) -> None:
        self.pending.clear()
        state = self.state
        if state == "magic":
            magic = int.from_bytes(got, "little")
            if magic & 0xFFFFFFF0 == 0x184D2A50:
                self.state, self.need = "skippable", 4
            elif magic == 0xFD2FB528:
                self.state, self.need = "fhd", 1
            else:
                raise EOFError("not a zstd frame (bad magic inside the stream)")
        elif state == "skippable":
            self.skip = int.from_bytes(got, "little")
            self.state, self.need = "magic", 4
        elif state == "fhd":
            fhd = got[0]
            single = bool(fhd & 0x20)
            self.checksum = bool(fhd & 0x04)
            fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
            rest = (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
            self.state, self.need = "block", 3
            if rest:
                self.state, self.need = "header", rest
        elif state == "header":
            self.state, self.need = "block", 3
        elif state == "block":
            head = int.from_bytes(got, "little")
            last, kind, size = head & 1, (head >> 1) & 3, head >> 3
            self.skip = 1 if kind == 1 else size
            if last:
                self.state, self.need = ("checksum", 4) if self.checksum else ("magic", 4)
        elif state == "checksum":
            self.state, self.need = "magic", 4

    @property
    def complete(self) -> bool:
        """At a frame boundary (the input ended between frames, or is empty)."""
        return self.state == "magic" and not self.pending and not self.skip


class _ZstdChecked(io.RawIOBase):
    """The decompressed stream; an input that ends inside a frame is an error (EOFError)."""

    def __init__(self, reader: Any, frames: _ZstdFrames) -> None:
        self.reader = reader
        self.frames = frames

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.reader.read(len(b))
        if not data:
            if not self.frames.complete:
                raise EOFError("compressed file ended before the end-of-stream marker was reached")
            return 0
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.reader.close()
        super().close()


def _peek(stream: BinaryIO, n: int) -> bytes:
    return bytes(stream.peek(n)[:n])  # type: ignore[attr-defined]


class _ToolOutput:
    """The standard output of a converter program, read as a binary stream; the exit status
    is checked when the output ends."""

    def __init__(self, argv: list[str], name: str, stack: ExitStack) -> None:
        self.argv = argv
        self.name = name
        err = stack.enter_context(tempfile.TemporaryFile())
        try:
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL
            )
        except OSError as e:
            raise KvmcacheError(f"{name}: cannot run {argv[0]}: {e}") from None
        self.err = err
        stack.callback(self._stop)

    def read(self, n: int = -1) -> bytes:
        assert self.proc.stdout is not None
        data = self.proc.stdout.read(n)
        if not data:
            self._check()
        return data

    def _stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            self.proc.terminate()
        self.proc.wait()

    def _check(self) -> None:
        code = self.proc.wait()
        if code != 0:
            self.err.seek(0)
            tail = self.err.read().decode("utf-8", "replace").strip().splitlines()
            why = tail[-1] if tail else "no message"
            cmd = " ".join([os.path.basename(self.argv[0]), *self.argv[1:-1]])
            raise KvmcacheError(f"{self.name}: `{cmd} {self.name}` failed (exit {code}): {why}")


@contextmanager
def open_text(path: str) -> Iterator[tuple[BinaryIO, str | None]]:
    """(binary stream of text, producer or None) of one input: a text file (maybe compressed),
    ``-`` for standard input, or a binary `trace.dat` / `perf.data` rendered by its own tool."""
    name = "<stdin>" if path == "-" else path
    with ExitStack() as stack:
        if path == "-":
            raw: BinaryIO = sys.stdin.buffer
            if not hasattr(raw, "peek"):  # e.g. a BytesIO standing in for stdin
                raw = io.BufferedReader(raw)  # type: ignore[arg-type]
        else:
            with reading(path, what="a trace"):
                raw = stack.enter_context(open(path, "rb"))
        stream = _decompressor(raw, name)
        if stream is not raw:
            stack.enter_context(stream)
        try:
            head = _peek(stream, 10)
        except _DECOMPRESS_ERRORS as e:
            raise KvmcacheError(f"{name}: cannot decompress: {e}") from None
        for magic, (producer, cmd, package) in TOOLS.items():
            if head.startswith(magic):
                exe = shutil.which(cmd[0])
                if exe is None:
                    raise KvmcacheError(
                        f"{name}: is a binary {producer} recording; reading it runs "
                        f"`{' '.join(cmd)} FILE`, but {cmd[0]} is not on PATH: install {package}, "
                        f"or convert it to text elsewhere (`{' '.join(cmd)} {name} > trace.txt`)"
                    )
                if stream is raw and path != "-":
                    file = path
                else:  # compressed or piped: the tool needs a real file
                    spool = stack.enter_context(
                        tempfile.NamedTemporaryFile(prefix="kvmcache-import-", suffix=".dat")
                    )
                    shutil.copyfileobj(stream, spool)
                    spool.flush()
                    file = spool.name
                yield _ToolOutput([exe, *cmd[1:], file], name, stack), producer  # type: ignore[misc]
                return
        try:
            yield stream, None
        except _DECOMPRESS_ERRORS as e:
            raise KvmcacheError(f"{name}: cannot read: {e}") from None


def import_paths(
    paths: Sequence[str], options: ImportOptions | None = None
) -> tuple[TraceHeader, np.ndarray, ImportStats]:
    """Import recorded traces from files (or ``-``): one trace, events sorted by time."""
    options = options or ImportOptions()
    imp = Importer(options)
    for path in paths:
        with open_text(path) as (stream, producer):
            imp.feed_stream(stream, "<stdin>" if path == "-" else path, fmt=producer)
    return imp.finish()


def import_paths_stream(
    paths: Sequence[str], options: ImportOptions | None = None
) -> tuple[TraceHeader, Iterator[np.ndarray], ImportStats]:
    """:func:`import_paths` in bounded memory: (header, the events in time order as chunks,
    stats); the stats are complete once the chunks are read."""
    imp = Importer(options or ImportOptions())
    for path in paths:
        with open_text(path) as (stream, producer):
            imp.feed_stream(stream, "<stdin>" if path == "-" else path, fmt=producer)
    return imp.finish_stream()
