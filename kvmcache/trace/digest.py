"""The identity of a trace: a digest of its header geometry and its event records.

A CI baseline recognises its trace by this digest, not by its file name: a copy under
another name matches, a different trace under the same name does not. The digest covers
what the replay reads (VM type, root level, the two limits and every record in the
canonical 32-byte layout), so a YAML scenario and its binary conversion have the same
digest, while the file name, the format and the parameters sidecar do not count (the
parameters are compared on their own). It is updated chunk by chunk as the replay reads
them: one pass, constant memory.
"""

from __future__ import annotations

import hashlib

import numpy as np

from kvmcache.trace.events import EVENT_DTYPE, TraceHeader

#: The algorithm, as it prefixes every digest ("blake2b-128:<32 hex digits>").
ALGORITHM = "blake2b-128"


class TraceDigest:
    """A running digest of one trace: ``update`` with each chunk, then ``hexdigest``."""

    def __init__(self, header: TraceHeader) -> None:
        self._h = hashlib.blake2b(digest_size=16, person=b"kvmcache-trace1")
        geometry = (
            f"{header.vm_type} {header.root_level} {header.gfn_limit} {header.host_pfn_limit}\n"
        )
        self._h.update(geometry.encode("ascii"))
        self.events = 0

    def update(self, chunk: np.ndarray) -> None:
        """Add a chunk of records (any array of the event dtype, in trace order)."""
        if chunk.dtype != EVENT_DTYPE:
            chunk = chunk.astype(EVENT_DTYPE)
        # hashlib releases the GIL on large buffers: this overlaps with the kernel.
        self._h.update(np.ascontiguousarray(chunk).data)
        self.events += len(chunk)

    def hexdigest(self) -> str:
        """``blake2b-128:<hex>`` of the geometry and every record added so far."""
        return f"{ALGORITHM}:{self._h.hexdigest()}"


def digest_events(header: TraceHeader, events: np.ndarray) -> str:
    """The digest of an in-memory trace (tests, tools)."""
    d = TraceDigest(header)
    d.update(events)
    return d.hexdigest()
