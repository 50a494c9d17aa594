"""What a replay computed, as plain dataclasses, and the verdict rule over its counters.

The replay driver (:mod:`kvmcache.sim.replay`) fills these; the reporters (:mod:`kvmcache.report`)
and the gates read them without importing the driver. No numba, no rich, no file I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from kvmcache.trace.events import TraceHeader

#: The verdicts of a replay (MODEL.md section 6): name -> the counters that must all be 0.
VERDICTS: dict[str, tuple[str, ...]] = {
    "spinlock_safe": ("alloc_under_lock", "fault_retries"),
    "balanced": ("refcount_underflow", "leaked_ranges"),
}

#: Timeline CSV columns after `alloc`, in the kernel's T_* order (the kernel checks the count).
TIMELINE_COLUMNS: tuple[str, ...] = (
    "event",
    "ts",
    "pages_live",
    "cache_pages_idle",
    "pamt_pairs_live",
    "alloc_under_lock",
    "fault_retries",
    "pages_allocated",
)


def verdict(counters: Mapping[str, int]) -> dict[str, bool]:
    """Each verdict of :data:`VERDICTS`: True when its counters are all 0."""
    return {name: all(counters[c] == 0 for c in names) for name, names in VERDICTS.items()}


def spinlock_cost(counters: Mapping[str, int]) -> int:
    """Allocations under mmu_lock plus fault retries: what makes a run not spinlock-safe."""
    return sum(counters[c] for c in VERDICTS["spinlock_safe"])


def spinlock_problem(counters: Mapping[str, int]) -> str | None:
    """Why a run is not spinlock-safe, in words, or None when it is.

    Two different faults: "allocates under mmu_lock" (a page allocated inside the locked
    section) and "retries" (a fault dropped the lock to retry, which allocates nothing
    under it), or both.
    """
    under = counters["alloc_under_lock"] > 0
    retries = counters["fault_retries"] > 0
    if under and retries:
        return "allocates under mmu_lock and retries"
    if under:
        return "allocates under mmu_lock"
    if retries:
        return "retries"
    return None


@dataclass
class ReplayResult:
    """What one replay of one trace under one strategy computed."""

    alloc: str  # the strategy asked for
    effective_alloc: str  # what ran ("none" for every strategy on a vmx trace)
    params: dict[str, int | bool]
    header: TraceHeader
    counters: dict[str, int]
    histograms: dict[str, list[int]]
    elapsed: float = 0.0
    timeline: np.ndarray | None = None  # rows of TIMELINE_COLUMNS
    notes: list[str] = field(default_factory=list)
    ts_first: int | None = None
    ts_last: int | None = None
    trace_digest: str | None = None  # kvmcache.trace.digest of the header and records

    @property
    def spinlock_safe(self) -> bool:
        return all(self.counters[c] == 0 for c in VERDICTS["spinlock_safe"])

    @property
    def balanced(self) -> bool:
        return all(self.counters[c] == 0 for c in VERDICTS["balanced"])
