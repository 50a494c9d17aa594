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


#: The alias of the spinlock cost as a sort key, Pareto objective or plot axis.
SPINLOCK_COST = "alloc_under_lock + fault_retries"
#: Figures computed from a run's counters and histograms, usable wherever a counter is
#: (sweep --sort and --pareto, plot --x and --y), beside every counter name.
DERIVED_METRICS: dict[str, str] = {
    "fault_latency_p99_ns": "upper bound of the fault_latency bucket holding the 99th "
    "percentile (a bucket bound, a power of two; 0 without faults)",
    "fault_latency_mean_ns": "fault_latency_ns / non-spurious faults, rounded down",
    SPINLOCK_COST: "allocations under mmu_lock plus fault retries",
}
#: Where the last fault_latency bucket (2^37 ns and more, unbounded) is placed on an axis.
LATENCY_OVERFLOW_NS = 1 << 38


def latency_bucket_bounds(b: int) -> tuple[int, int]:
    """[low, high) in ns of fault_latency bucket ``b`` (MODEL.md 8.3); the last is open
    (2^37 and more), its high given as :data:`LATENCY_OVERFLOW_NS`."""
    if b == 0:
        return 0, 128
    if b >= 31:
        return 1 << 37, LATENCY_OVERFLOW_NS
    return 1 << (b + 6), 1 << (b + 7)


def latency_percentile_bound(histogram: list[int] | None, q: float = 0.99) -> int | None:
    """The upper bound (ns) of the fault_latency bucket that holds the ``q`` quantile: a
    bucket bound, not an exact latency. None when there is no histogram; 0 without faults."""
    if not histogram:
        return None
    total = sum(histogram)
    if total == 0:
        return 0
    rank = -(-int(total * q * 1_000_000) // 1_000_000)  # ceil(total * q), exact enough
    rank = max(1, min(total, rank))
    seen = 0
    for b, n in enumerate(histogram):
        seen += n
        if seen >= rank:
            return latency_bucket_bounds(b)[1]
    return latency_bucket_bounds(len(histogram) - 1)[1]


def metric_names() -> tuple[str, ...]:
    """Every name a sort, objective or axis may use: the counters, then the derived ones."""
    from kvmcache.sim.counters import COUNTERS

    return (*COUNTERS, *DERIVED_METRICS)


def metric_value(
    name: str, counters: Mapping[str, int], histograms: Mapping[str, list[int]] | None = None
) -> int | None:
    """The value of a counter or derived metric for one run (None: not available, e.g. a
    p99 from a CSV without histograms, or a counter an old report lacks)."""
    if name == "fault_latency_p99_ns":
        return latency_percentile_bound((histograms or {}).get("fault_latency"))
    if name == "fault_latency_mean_ns":
        if "fault_latency_ns" not in counters:
            return None
        n = counters.get("faults", 0) - counters.get("faults_spurious", 0)
        return counters["fault_latency_ns"] // n if n > 0 else 0
    if name == SPINLOCK_COST:
        return spinlock_cost(counters)
    return counters.get(name)


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
