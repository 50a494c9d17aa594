"""The identity of a trace: a digest of its header geometry and its event records.

A CI baseline recognises its trace by this digest, not by its file name: a copy under
another name matches, a different trace under the same name does not. The digest covers
what the replay reads (VM type, root level, the two limits and every record in the
canonical 32-byte layout), so a YAML scenario and its binary conversion have the same
digest, while the file name, the format and the parameters sidecar do not count (the
parameters are compared on their own). It is updated chunk by chunk as the replay reads
them: one pass, constant memory.

The scheme (``kvh1``) is built to cost far less than the replay: every little-endian
64-bit word ``w`` of the records, at its position ``j`` in the trace, is mixed twice
(SplitMix64's finalizer of ``w + j * K1`` and of ``w ^ (j * K2 + K3)``) and each mix is
added into one of two 64-bit lanes (sums modulo 2^64). The lanes do not depend on how the
trace is cut into chunks, so the compiled replay (``sim/kernel.digest_lanes``, about a
nanosecond per word) and the numpy code here give the same value. The digest is SHA-256 of
a fixed prefix, the geometry, the two lanes and the word count. It identifies a trace
against accidents (a different trace, a truncated copy); it is not built to resist a
trace crafted to collide.
"""

from __future__ import annotations

import hashlib

import numpy as np

from kvmcache.trace.events import EVENT_DTYPE, TraceHeader

#: The scheme, as it prefixes every digest ("kvh1:<64 hex digits>").
ALGORITHM = "kvh1"
_PREFIX = b"kvmcache-trace-digest/kvh1\n"
#: The lane constants (odd 64-bit values from SplitMix64 and xxHash).
K1 = 0x9E3779B97F4A7C15
K2 = 0xC2B2AE3D27D4EB4F
K3 = 0x165667B19E3779F9
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on an array of uint64 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(M1)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(M2)
    return x ^ (x >> np.uint64(31))


class TraceDigest:
    """A running digest of one trace: ``update`` with each chunk (or ``add`` the lanes the
    compiled replay computed for it), then ``hexdigest``."""

    def __init__(self, header: TraceHeader) -> None:
        self._geometry = (
            f"{header.vm_type} {header.root_level} {header.gfn_limit} {header.host_pfn_limit}\n"
        ).encode("ascii")
        self._lanes = np.zeros(2, dtype=np.uint64)
        self.words = 0  # 64-bit words of records added so far
        self.events = 0

    def update(self, chunk: np.ndarray) -> None:
        """Add a chunk of records (any array of the event dtype, in trace order)."""
        if chunk.dtype != EVENT_DTYPE:
            chunk = chunk.astype(EVENT_DTYPE)
        w = np.ascontiguousarray(chunk).view("<u8").astype(np.uint64, copy=False)
        j = np.arange(self.words, self.words + len(w), dtype=np.uint64)
        a = np.add.reduce(_mix(w + j * np.uint64(K1)), dtype=np.uint64)
        b = np.add.reduce(_mix(w ^ (j * np.uint64(K2) + np.uint64(K3))), dtype=np.uint64)
        self.add(int(a), int(b), len(w))

    def add(self, a: int, b: int, words: int) -> None:
        """Add the two lane sums of the next ``words`` words (computed elsewhere)."""
        self._lanes[0] = (int(self._lanes[0]) + a) % 2**64
        self._lanes[1] = (int(self._lanes[1]) + b) % 2**64
        self.words += words
        self.events += words // 4

    def hexdigest(self) -> str:
        """``kvh1:<hex>`` of the geometry and every record added so far."""
        h = hashlib.sha256(_PREFIX + self._geometry)
        h.update(self._lanes.astype("<u8").tobytes())
        h.update(self.words.to_bytes(8, "little"))
        return f"{ALGORITHM}:{h.hexdigest()}"


def digest_events(header: TraceHeader, events: np.ndarray) -> str:
    """The digest of an in-memory trace (tests, tools)."""
    d = TraceDigest(header)
    d.update(events)
    return d.hexdigest()
