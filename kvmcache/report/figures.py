"""What every counter is, for reports: its label, its group, its unit and how to format it.

The one catalogue of figures behind the compare and sweep tables (and ``docs/figures.md``,
which a test keeps in step with it). Groups come in a fixed order, so tables list figures
in the same order every time: memory, safety, DPAMT traffic, waste, time, then the events,
tree and cache counters that only ``--all-counters`` shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kvmcache.report.units import (
    PAGE_BYTES,
    PAIR_BYTES,
    compact,
    duration,
    fmt_int,
    human_bytes,
    page_seconds,
    percent,
    signed,
)
from kvmcache.sim.counters import CACHES, COUNTERS, FAULT_LATENCY_BUCKETS

#: Where the definitions live, for table footers and --help texts.
DOC = "docs/figures.md"

GROUPS: tuple[str, ...] = (
    "memory",
    "safety",
    "DPAMT traffic",
    "waste",
    "time",
    "events",
    "tree",
    "caches",
    "other",  # a counter not in the catalogue yet (a test keeps this group empty)
)

# unit kinds: count, pages, pairs (8 KiB each), bytes, ns, page_ns, objects (cache objects)


@dataclass(frozen=True)
class Figure:
    """One row of a report: a counter (or a statistic of a histogram) and how to read it."""

    counter: str  # the counters key (what --limit takes), or "fault_latency p50" etc.
    label: str
    group: str
    unit: str
    key: bool = False  # among the key figures of the compare table
    short: str = ""  # a shorter label for narrow layouts (default: the label)

    @property
    def short_label(self) -> str:
        return self.short or self.label

    @property
    def limitable(self) -> bool:
        """A real counter (``--limit`` takes it), not a statistic of a histogram."""
        return self.counter in COUNTERS


def _f(counter: str, label: str, group: str, unit: str = "count", key: bool = False) -> Figure:
    return Figure(counter, label, group, unit, key)


#: Histogram statistics shown as figures: (name, quantile).
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("fault_latency p50", 0.50),
    ("fault_latency p99", 0.99),
)

_CATALOGUE: tuple[Figure, ...] = (
    # memory
    _f("pamt_bytes_peak", "PAMT memory at peak", "memory", "bytes", True),
    _f("pages_live_peak", "live pages at peak", "memory", "pages", True),
    _f("pages_allocated", "pages allocated", "memory", "pages", True),
    _f("pages_freed", "pages freed", "memory", "pages"),
    _f("alloc_direct", "pages allocated directly", "memory", "pages"),
    # safety
    _f("alloc_under_lock", "allocated under mmu_lock", "safety", "count", True),
    _f("fault_retries", "fault retries", "safety", "count", True),
    _f("refcount_underflow", "refcount underflows", "safety"),
    _f("leaked_ranges", "leaked ranges", "safety"),
    # DPAMT traffic
    _f("pamt_pairs_peak", "PAMT pairs at peak", "DPAMT traffic", "pairs", True),
    _f("pamt_pairs_end", "PAMT pairs at end", "DPAMT traffic", "pairs", True),
    _f("pamt_add", "PAMT.ADD", "DPAMT traffic", "count", True),
    _f("pamt_remove", "PAMT.REMOVE", "DPAMT traffic", "count", True),
    _f("pamt_lock_acquired", "pamt_lock acquisitions", "DPAMT traffic", "count", True),
    _f("seamcalls_under_mmu_lock", "PAMT.ADD under mmu_lock", "DPAMT traffic", "count", True),
    _f("pairs_discarded", "pairs discarded", "DPAMT traffic", "pairs", True),
    _f("pamt_get", "refcount gets", "DPAMT traffic"),
    _f("pamt_get_fast", "gets on the fast path", "DPAMT traffic"),
    _f("pamt_put", "refcount puts", "DPAMT traffic"),
    _f("pamt_put_fast", "puts on the fast path", "DPAMT traffic"),
    # waste
    _f("cache_pages_idle_peak", "idle cache pages at peak", "waste", "pages", True),
    _f("cache_pages_idle_end", "idle cache pages at end", "waste", "pages", True),
    _f("cache_idle_page_ns", "idle cache page-seconds", "waste", "page_ns", True),
    Figure(
        "cache_only_ranges_peak",
        "ranges pinned only by cached pages",
        "waste",
        "count",
        True,
        short="ranges pinned by caches",
    ),
    # time
    _f("time_topup_ns", "top-up time (no lock)", "time", "ns", True),
    _f("time_locked_ns", "time under mmu_lock", "time", "ns", True),
    _f("time_locked_max_ns", "longest mmu_lock section", "time", "ns", True),
    _f("pamt_lock_wait_ns", "pamt_lock wait", "time", "ns", True),
    _f("pamt_lock_wait_max_ns", "longest pamt_lock wait", "time", "ns", True),
    _f("pamt_lock_contended", "pamt_lock waited (count)", "time", "count", True),
    _f("pamt_lock_held_ns", "pamt_lock held", "time", "ns", True),
    _f("fault_latency p50", "fault latency p50", "time", "ns", True),
    _f("fault_latency p99", "fault latency p99", "time", "ns", True),
    _f("fault_latency_max_ns", "fault latency max", "time", "ns", True),
    _f("fault_latency_ns", "fault latency, sum", "time", "ns"),
    _f("vcpu_delay_ns", "vCPU delay", "time", "ns", True),
    # events
    _f("events", "events", "events"),
    _f("faults", "faults", "events"),
    _f("faults_private", "private faults", "events"),
    _f("faults_shared", "shared faults", "events"),
    _f("faults_spurious", "spurious faults", "events"),
    _f("faults_level_adjusted", "faults mapped lower", "events"),
    _f("collapses", "collapses", "events"),
    _f("unmaps", "unmaps", "events"),
    _f("unmaps_missing", "unmaps that missed", "events"),
    _f("splits", "splits", "events"),
    _f("vcpus_created", "vCPUs created", "events"),
    _f("vcpus_destroyed", "vCPUs destroyed", "events"),
    _f("ts_backwards", "timestamps going backwards", "events"),
    # tree
    _f("tables_linked_mirror", "tables linked, mirror", "tree"),
    _f("tables_linked_direct", "tables linked, direct", "tree"),
    _f("tables_freed", "tables freed", "tree"),
    _f("leaves_4k", "4 KiB leaves mapped", "tree"),
    _f("leaves_2m", "2 MiB leaves mapped", "tree"),
    _f("leaves_1g", "1 GiB leaves mapped", "tree"),
)

_CACHE_LABELS = {
    "topups": "top-ups",
    "allocated": "objects allocated",
    "consumed": "objects consumed",
    "freed_unused": "freed unused",
    "held_peak": "held at peak",
    "held_end": "held at end",
}

FIGURES: dict[str, Figure] = {f.counter: f for f in _CATALOGUE}
for _c in CACHES:
    for _field, _label in _CACHE_LABELS.items():
        _name = f"{_c}_{_field}"
        FIGURES[_name] = Figure(
            _name, f"{_c} {_label}", "caches", "count" if _field == "topups" else "objects"
        )
for _name in COUNTERS:
    if _name not in FIGURES:  # new in sim/counters.py: shown by its name until catalogued
        _unit = "ns" if _name.endswith("_ns") else "bytes" if _name.endswith("_bytes") else "count"
        FIGURES[_name] = Figure(_name, _name.replace("_", " "), "other", _unit)


def ordered(all_counters: bool = False) -> list[Figure]:
    """The figures of a table in their stable order: by group, then catalogue order."""
    figs = [f for f in FIGURES.values() if all_counters or f.key]
    rank = {g: i for i, g in enumerate(GROUPS)}
    return sorted(figs, key=lambda f: rank[f.group])  # stable: catalogue order within a group


KEY_FIGURES: tuple[Figure, ...] = tuple(ordered())


# --------------------------------------------------------------------------- histograms


def latency_bucket_bounds(b: int) -> tuple[int, int | None]:
    """Bucket ``b`` of ``fault_latency`` as [low, high) ns; high is None for the last one."""
    if b == 0:
        return 0, 128
    if b == FAULT_LATENCY_BUCKETS - 1:
        return 1 << (b + 6), None
    return 1 << (b + 6), 1 << (b + 7)


def latency_bucket_label(b: int) -> str:
    low, high = latency_bucket_bounds(b)
    if high is None:
        return f">= {duration(low)}"
    if low == 0:
        return f"< {duration(high)}"
    return f"{duration(low)} - {duration(high)}"


def fault_pages_label(b: int, buckets: int) -> str:
    return f"{b}+" if b == buckets - 1 else str(b)


def percentile_bucket(hist: Sequence[int], q: float) -> int | None:
    """The bucket holding the ``q`` quantile (the ceil(q * n)-th value), None when empty."""
    n = sum(hist)
    if n == 0:
        return None
    rank = max(1, -(-int(q * 10**6) * n // 10**6))  # ceil(q * n), exact for q to 6 places
    seen = 0
    for b, count in enumerate(hist):
        seen += count
        if seen >= rank:
            return b
    return len(hist) - 1  # pragma: no cover - seen reaches n


def latency_percentile_ns(hist: Sequence[int], q: float) -> int:
    """The upper bound (exclusive) of the bucket of the ``q`` latency quantile; 0 if none.

    The last bucket has no upper bound: its lower bound is returned, doubled, so that it
    still sorts above every other bucket.
    """
    b = percentile_bucket(hist, q)
    if b is None:
        return 0
    low, high = latency_bucket_bounds(b)
    return high if high is not None else 2 * low


def percentile_text(hist: Sequence[int], q: float) -> str:
    """``< 8.19 us`` (the bucket's upper bound), ``>= 137 s`` for the last bucket, ``-``."""
    b = percentile_bucket(hist, q)
    if b is None:
        return "-"
    low, high = latency_bucket_bounds(b)
    return f">= {duration(low)}" if high is None else f"< {duration(high)}"


# --------------------------------------------------------------------------- values


def value_of(
    fig: Figure, counters: Mapping[str, int], histograms: Mapping[str, Sequence[int]]
) -> int:
    """The integer behind a figure (a percentile is its bucket's upper bound in ns)."""
    for name, q in PERCENTILES:
        if fig.counter == name:
            return latency_percentile_ns(histograms.get("fault_latency", ()), q)
    return counters[fig.counter]


def fmt_value(
    fig: Figure,
    value: int,
    histograms: Mapping[str, Sequence[int]] | None = None,
    narrow: bool = False,
) -> str:
    """A figure's value in its unit; memory counted in pages or pairs gets its bytes.
    ``narrow``: no bytes, counts above ten million compacted (``263.4M``)."""
    for name, q in PERCENTILES:
        if fig.counter == name:
            hist = (histograms or {}).get("fault_latency")
            if hist is not None:
                return percentile_text(hist, q)
            return f"< {duration(value)}" if value else "-"
    if fig.unit == "bytes":
        return human_bytes(value) if value else "0"
    if fig.unit == "ns":
        return duration(value)
    if fig.unit == "page_ns":
        return page_seconds(value, short=narrow)
    if narrow:
        return compact(value)
    text = fmt_int(value)
    if value and fig.unit in ("pages", "pairs"):
        size = PAGE_BYTES if fig.unit == "pages" else PAIR_BYTES
        text += f" ({human_bytes(value * size)})"
    return text


def fmt_difference(fig: Figure, value: int, ref: int, narrow: bool = False) -> str:
    """The difference from the reference: ``+56, +4.8%``; ``narrow``: the percent alone
    (the absolute difference when the reference is 0)."""
    d = value - ref
    if fig.unit == "bytes":
        absolute = signed(human_bytes(d))
    elif fig.unit == "ns":
        absolute = signed(duration(d))
    elif fig.unit == "page_ns":
        absolute = signed(page_seconds(d, short=True))
    else:
        absolute = signed(compact(d)) if narrow else f"{d:+,}"
    pct = percent(value, ref)
    if narrow:
        return absolute if ref == 0 else pct
    return f"{absolute}, {pct}"
