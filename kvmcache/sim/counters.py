"""Counter names (MODEL.md section 6): one tuple that the kernel indexes and reporters iterate.

No numba here: reporters import this without paying for the JIT.
"""

from __future__ import annotations

CACHES: tuple[str, ...] = ("desc", "header", "spt", "sept", "pamt")
_CACHE_FIELDS = ("topups", "allocated", "consumed", "freed_unused", "held_peak", "held_end")

COUNTERS: tuple[str, ...] = (
    # events
    "events",
    "faults",
    "faults_private",
    "faults_shared",
    "faults_spurious",
    "faults_level_adjusted",
    "fault_retries",
    "collapses",
    "unmaps",
    "unmaps_missing",
    "splits",
    "vcpus_created",
    "vcpus_destroyed",
    # tree
    "tables_linked_mirror",
    "tables_linked_direct",
    "tables_freed",
    "leaves_4k",
    "leaves_2m",
    "leaves_1g",
    # caches
    *(f"{c}_{f}" for c in CACHES for f in _CACHE_FIELDS),
    # pages
    "pages_allocated",
    "pages_freed",
    "pages_live_peak",
    "alloc_direct",
    "alloc_under_lock",
    # DPAMT
    "pamt_get",
    "pamt_get_fast",
    "pamt_put",
    "pamt_put_fast",
    "pamt_add",
    "pamt_remove",
    "pamt_lock_acquired",
    "seamcalls_under_mmu_lock",
    "pamt_pairs_peak",
    "pamt_pairs_end",
    "pairs_discarded",
    "cache_only_ranges_peak",
    # waste
    "cache_pages_idle_peak",
    "cache_pages_idle_end",
    "cache_idle_page_ns",
    "ts_backwards",
    # health
    "refcount_underflow",
    "leaked_ranges",
    # memory (section 9)
    "pamt_bytes_peak",
    # time (section 8), nanoseconds of the model clock
    "time_topup_ns",
    "time_locked_ns",
    "time_locked_max_ns",
    "pamt_lock_wait_ns",
    "pamt_lock_wait_max_ns",
    "pamt_lock_contended",
    "pamt_lock_held_ns",
    "fault_latency_ns",
    "fault_latency_max_ns",
    "vcpu_delay_ns",
)
INDEX: dict[str, int] = {name: i for i, name in enumerate(COUNTERS)}
N_COUNTERS = len(COUNTERS)

HISTOGRAMS: tuple[str, ...] = ("fault_pages", "fault_latency")
FAULT_PAGES_BUCKETS = 17  # 0..16, the last holds 16 and more
#: Bucket 0: latency below 128 ns; bucket b >= 1: [2^(b+6), 2^(b+7)) ns; bucket 31: 2^37 ns and more.
FAULT_LATENCY_BUCKETS = 32
HISTOGRAM_BUCKETS: dict[str, int] = {
    "fault_pages": FAULT_PAGES_BUCKETS,
    "fault_latency": FAULT_LATENCY_BUCKETS,
}

STRATEGIES: tuple[str, ...] = (
    "none",
    "dpamt-install",
    "dpamt-alloc",
    "dpamt-pair",
    "dpamt-prealloc",
)
DEFAULT_STRATEGY = "dpamt-install"
