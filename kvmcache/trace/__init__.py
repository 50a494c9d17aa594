"""Reading and writing traces. No numba, no rich: this package only moves events around."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from kvmcache.errors import KvmcacheError
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


def detect_format(path: str) -> str:
    """'binary' or 'yaml' for an existing file: the magic decides, then the extension."""
    try:
        with open(path, "rb") as f:
            first = f.read(len(MAGIC))
    except FileNotFoundError:
        raise KvmcacheError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise KvmcacheError(f"{path}: is a directory, not a trace") from None
    except OSError as e:
        raise KvmcacheError(f"{path}: cannot read: {e.strerror or e}") from None
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
    """Open a binary or YAML trace (``-`` reads standard input, binary or YAML)."""
    from kvmcache.trace import yamlfmt

    if path == "-":
        stream = sys.stdin.buffer
        first = stream.read(len(MAGIC))
        if first == MAGIC:
            return BinaryTrace(
                "-",
                strict=strict,
                chunk_events=chunk_events,
                warn=warn,
                stream=stream,
                prefix=first,
            )
        text = (first + stream.read()).decode("utf-8", errors="replace")
        header, events = yamlfmt.read_yaml("<stdin>", text=text)
        return InMemoryTrace(header, events, chunk_events)
    if os.path.isdir(path):
        raise KvmcacheError(f"{path}: is a directory, not a trace")
    fmt = detect_format(path)
    if fmt == "binary":
        trace = BinaryTrace(path, strict=strict, chunk_events=chunk_events, warn=warn)
        _load_sidecar(trace.header)
        return trace
    header, events = yamlfmt.read_yaml(path)
    return InMemoryTrace(header, events, chunk_events)


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
    import yaml

    try:
        with open(side, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise KvmcacheError(f"{side}: cannot read parameters sidecar: {e}") from None
    if data is None:
        return
    if not isinstance(data, dict):
        raise KvmcacheError(f"{side}: parameters sidecar must be a mapping of NAME: VALUE")
    header.params = dict(data)
