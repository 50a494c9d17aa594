"""`kvmcache warmup`: compile the replay kernels ahead of time (for CI images)."""

from __future__ import annotations

import os
import sys
import tempfile
import time

import click


@click.command("warmup")
def command() -> None:
    """Compile every replay kernel now so the first real replay starts warm.

    numba caches the machine code next to the package (``cache=True``); this runs a tiny
    trace through every strategy from memory and from a memory-mapped binary file (a
    read-only array is a separate compiled signature).
    """
    import numpy as np

    from kvmcache.sim.counters import STRATEGIES
    from kvmcache.sim.replay import replay_many
    from kvmcache.trace import InMemoryTrace, open_trace
    from kvmcache.trace.binary import write_binary
    from kvmcache.trace.events import EVENT_DTYPE, OP_FAULT, OP_VCPU_CREATE, TraceHeader

    t0 = time.perf_counter()
    header = TraceHeader("tdx", 4, 1 << 20, 1 << 24, path="warmup")
    ev = np.zeros(3, dtype=EVENT_DTYPE)
    ev[0] = (0, 0, 0, 0, OP_VCPU_CREATE, 0, 0)
    ev[1] = (10, 0x1000, 0x80000, 0, OP_FAULT, 1, 1)
    ev[2] = (20, 0x2000, 0x90000, 0, OP_FAULT, 1, 0)
    replay_many(InMemoryTrace(header, ev), list(STRATEGIES), timeline_every=1)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "warmup.kvmt")
        write_binary(path, header, ev)
        replay_many(open_trace(path), list(STRATEGIES))
    print(f"kvmcache: replay kernels compiled in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
