"""Sweep throughput: grid points replayed per second, one unit at a time (--jobs 1) and two
at once on two threads (--jobs 2), on a small synthetic TDX trace.

``run()`` returns rows for benchmarks/run.py; ``python benchmarks/bench_sweep.py`` prints them.
Each figure is the wall time of a whole ``run_sweep`` (thread pool start-up included for
--jobs 2) after one warm-up sweep, the best of ``REPEAT``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from kvmcache.sim import sweep  # noqa: E402
from kvmcache.trace.binary import write_binary  # noqa: E402
from kvmcache.trace.events import (  # noqa: E402
    FLAG_PRIVATE,
    LEVEL_4K,
    OP_FAULT,
    OP_UNMAP,
    OP_VCPU_CREATE,
    OP_VM_CREATE,
    OP_VM_DESTROY,
    TraceHeader,
    empty,
)

EVENTS = 50_000
ALLOCS = ("dpamt-install", "dpamt-alloc")
GRID = ("capacity=16:64:8", "pamt_pairs=1,2,5")  # 7 x 3 points x 2 strategies = 42 points
REPEAT = 2


def make_trace(
    path: str, events: int = EVENTS, vcpus: int = 4, seed: int = 1, scatter: float = 0.3
) -> str:
    """A steady TDX guest: random 4 KiB faults (90% private) over a 256 MiB working set,
    each 2 MiB guest region backed by one random 2 MiB host range except a ``scatter``
    fraction of faults whose page lands anywhere in host memory (a PAMT pair each), and
    10% private unmaps. Written as a binary trace; returns ``path``."""
    rng = np.random.default_rng(seed)
    gfn_limit, host_pfn_limit = 1 << 20, 1 << 22  # 4 GiB guest, 16 GiB host
    n_body = events - 2 - vcpus
    ev = empty(events)
    ev["op"][0] = OP_VM_CREATE
    ev["op"][1 : 1 + vcpus] = OP_VCPU_CREATE
    ev["vcpu"][1 : 1 + vcpus] = np.arange(vcpus)
    body = ev[1 + vcpus : 1 + vcpus + n_body]
    gfn = rng.integers(0, 1 << 16, n_body, dtype=np.uint64) + (1 << 18)
    regions = host_pfn_limit >> 9
    host_region = rng.permutation(regions)[: gfn_limit >> 9].astype(np.uint64)
    body["gfn"] = gfn
    contiguous = (host_region[gfn >> 9] << 9) | (gfn & 511)
    anywhere = rng.integers(0, host_pfn_limit, n_body, dtype=np.uint64)
    body["pfn"] = np.where(rng.random(n_body) < scatter, anywhere, contiguous)
    body["vcpu"] = rng.integers(0, vcpus, n_body)
    body["level"] = LEVEL_4K
    private = rng.random(n_body) < 0.9
    body["flags"] = np.where(private, FLAG_PRIVATE, 0)
    unmap = rng.random(n_body) < 0.1
    body["op"] = np.where(unmap, OP_UNMAP, OP_FAULT)
    body["flags"][unmap] = FLAG_PRIVATE
    ev["op"][-1] = OP_VM_DESTROY
    ev["ts"] = np.cumsum(rng.integers(1_000, 40_000, events, dtype=np.uint64))
    header = TraceHeader("tdx", 4, gfn_limit, host_pfn_limit, count=events)
    write_binary(path, header, ev)
    return path


def _points_per_second(trace: str, jobs: int) -> tuple[float, int]:
    grid = sweep.parse_grid(GRID)
    best = float("inf")
    n = 0
    for _ in range(REPEAT + 1):  # the first one warms the JIT cache
        t0 = time.perf_counter()
        result = sweep.run_sweep([trace], list(ALLOCS), grid, jobs=jobs)
        dt = time.perf_counter() - t0
        n = len(result.points)
        best = min(best, dt)
    return n / best, n


def run() -> list[dict]:
    """Rows {"figure", "value", "unit", "target"}: sweep points per second."""
    with tempfile.TemporaryDirectory() as tmp:
        trace = make_trace(os.path.join(tmp, "steady-tdx.kvmt"))
        rows = []
        rates = {}
        for jobs, target in ((1, 30.0), (2, 50.0)):
            pps, n = _points_per_second(trace, jobs)
            rates[jobs] = pps
            rows.append(
                {
                    "figure": f"sweep points/s, --jobs {jobs} ({n} points, {EVENTS:,}-event trace)",
                    "value": round(pps, 1),
                    "unit": "points/s",
                    "target": target,
                }
            )
        rows.append(
            {
                "figure": "sweep speed-up, --jobs 2 over --jobs 1",
                "value": round(rates[2] / rates[1], 2),
                "unit": "x",
                "target": 1.5,
            }
        )
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row['figure']}: {row['value']} {row['unit']} (target >= {row['target']})")
