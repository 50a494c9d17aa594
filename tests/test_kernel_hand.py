"""Hand-computed scenarios: every expected number below is derived in the comments.

Notation: K = kernel_base = align_up(host_pfn_limit, 512) = 0x1000000 with the header
used here; R0 = K >> 9 is the first 2 MiB range of the kernel region. With spread = 1
fresh pages are K, K+1, K+2, ... so the first 512 of them share range R0.
"""

from __future__ import annotations

import numpy as np
import pytest

from kvmcache.sim.replay import replay_events
from kvmcache.trace.events import (
    EVENT_DTYPE,
    OP_FAULT,
    OP_VCPU_CREATE,
    OP_VM_CREATE,
    TraceHeader,
)

TDX = TraceHeader("tdx", 4, 0x100000, 0x1000000)
VMX = TraceHeader("vmx", 4, 0x100000, 0x1000000)


def events(*rows: tuple) -> np.ndarray:
    """rows of (ts, op, vcpu, gfn, pfn, level, private)."""
    ev = np.zeros(len(rows), dtype=EVENT_DTYPE)
    for i, (ts, op, vcpu, gfn, pfn, level, private) in enumerate(rows):
        ev[i] = (ts, gfn, pfn, vcpu, op, level, 1 if private else 0)
    return ev


FIRST_FAULT = events(
    (0, OP_VM_CREATE, 0, 0, 0, 0, False),
    (10, OP_VCPU_CREATE, 0, 0, 0, 0, False),
    (20, OP_FAULT, 0, 0x1000, 0x80000, 1, True),
)


def run(header, ev, alloc, **params):
    params.setdefault("teardown", False)
    r = replay_events(header, ev, alloc, params)
    return r.counters, r.histograms["fault_pages"]


def hist_at(bucket: int) -> list[int]:
    h = [0] * 17
    h[bucket] = 1
    return h


# Scenario 1: the first private 4 KiB fault on a fresh TD, default parameters, no teardown.
#
# Common to the DPAMT strategies:
#   vm_create: TDR + TDCS = 5 control pages. Page K is allocated, its get installs a pair
#     (K+1, K+2) in R0 (alloc_direct +2); pages K+3..K+6 take the fast path.
#     -> 7 pages, alloc_direct 7, pamt_get 5 (4 fast), PAMT.ADD 1.
#   vcpu_create: TDVPR + TDCX = 6 control pages K+7..K+12, all fast in R0.
#     -> 13 pages, alloc_direct 13, pamt_get 11 (10 fast).
#   load top-up: desc 0 < 14 -> 40 objects; sept 0 < 5 -> 40; pamt 0 < 10 -> 10;
#     spt 0 < 5 -> 40; header -> 40. Roots: mirror then direct, one header + one spt each.
#   fault: top-up adds nothing; three tables (levels 3, 2, 1) linked below the mirror
#     root, each consuming header, spt, sept; the leaf's get pops two pamt pages.
#
# none: 5 + 6 control pages, sept 40 + spt 40 pages = 91; no pamt cache; links pop
#   3 spt + 3 sept = 6 pages in the locked section -> fault_pages[6].
#   Idle: 80 after the top-up, 78 after the roots, end 35 spt + 37 sept = 72.
#   Page-ns: 0 x 10 (after vm_create) + 78 x 10 (after vcpu_create) = 780.
# dpamt-install: 13 + 40 sept + 10 pamt + 40 spt = 103 pages. S-EPT pages K+13..K+52 are
#   in R0, so each link's get is fast (3); the leaf's pfn 0x80000 is range 0x400, refcount
#   0: pops a pair from the pamt cache and PAMT.ADDs under mmu_lock.
#   pamt_get 11 + 3 + 1 = 15, fast 13, add 2, seamcalls_under_mmu_lock 1.
#   fault_pages: 3 spt + 3 sept + 2 pamt = 8. Idle peak 90, after roots 88, end
#   35 + 37 + 8 = 80; page-ns 88 x 10 = 880.
# dpamt-alloc: as install, but each of the 40 S-EPT pages does get(p, NULL) when it enters
#   the cache (all fast in R0: pamt_get +40), links take no get. pamt_get 11 + 40 + 1 = 52,
#   fast 10 + 40 = 50, add 2. R0 has refcount 5 + 6 + 40 = 51 > cached 40: not cache-only.
# dpamt-pair: each sept object is a page plus a pair: 120 pages, so 13 + 120 + 10 + 40 =
#   183. Each link's get finds R0 live: fast path and the object's pair is discarded
#   (3 pairs, 6 pages freed). fault_pages 3 spt + 3 x 3 sept + 2 pamt = 14.
#   Idle after top-up 120 + 10 + 40 = 170, after roots 168, end 37 x 3 + 8 + 35 = 154.
# dpamt-prealloc: one list of prealloc_sept + 2 x pamt_pairs = 15 pages, no sept cache:
#   13 + 15 + 40 = 68 pages. Links pop their S-EPT page from the list (3) and get fast; the
#   leaf pops a pair (2): pamt_consumed 5, list end 10. fault_pages 3 + 3 + 2 = 8.
#   Idle 55 after the top-up, 53 after roots, end 10 + 35 = 45; page-ns 530.
FIRST_FAULT_EXPECTED = {
    "none": dict(
        pages_allocated=91,
        alloc_direct=11,
        pamt_get=0,
        pamt_add=0,
        sept_topups=1,
        sept_allocated=40,
        sept_consumed=3,
        pamt_topups=0,
        spt_consumed=5,
        header_consumed=5,
        desc_topups=1,
        desc_allocated=40,
        cache_pages_idle_peak=80,
        cache_pages_idle_end=72,
        cache_idle_page_ns=780,
        pairs_discarded=0,
        tables_linked_mirror=3,
        hist=6,
    ),
    "dpamt-install": dict(
        pages_allocated=103,
        alloc_direct=13,
        pamt_get=15,
        pamt_get_fast=13,
        pamt_add=2,
        seamcalls_under_mmu_lock=1,
        pamt_topups=1,
        pamt_allocated=10,
        pamt_consumed=2,
        pamt_held_end=8,
        sept_consumed=3,
        cache_pages_idle_peak=90,
        cache_pages_idle_end=80,
        cache_idle_page_ns=880,
        pamt_pairs_peak=2,
        pamt_pairs_end=2,
        pairs_discarded=0,
        hist=8,
    ),
    "dpamt-alloc": dict(
        pages_allocated=103,
        alloc_direct=13,
        pamt_get=52,
        pamt_get_fast=50,
        pamt_add=2,
        seamcalls_under_mmu_lock=1,
        cache_only_ranges_peak=0,
        cache_pages_idle_peak=90,
        cache_pages_idle_end=80,
        hist=8,
    ),
    "dpamt-pair": dict(
        pages_allocated=183,
        pages_freed=6,
        alloc_direct=13,
        pamt_get=15,
        pamt_get_fast=13,
        pamt_add=2,
        pairs_discarded=3,
        cache_pages_idle_peak=170,
        cache_pages_idle_end=154,
        cache_idle_page_ns=1680,
        pages_live_peak=183,
        hist=14,
    ),
    "dpamt-prealloc": dict(
        pages_allocated=68,
        alloc_direct=13,
        pamt_get=15,
        pamt_get_fast=13,
        pamt_add=2,
        sept_topups=0,
        sept_consumed=0,
        pamt_topups=1,
        pamt_allocated=15,
        pamt_consumed=5,
        pamt_held_end=10,
        cache_pages_idle_peak=55,
        cache_pages_idle_end=45,
        cache_idle_page_ns=530,
        hist=8,
    ),
}


@pytest.mark.parametrize("alloc", sorted(FIRST_FAULT_EXPECTED))
def test_first_private_fault(alloc):
    c, h = run(TDX, FIRST_FAULT, alloc)
    want = dict(FIRST_FAULT_EXPECTED[alloc])
    assert h == hist_at(want.pop("hist"))
    assert {k: c[k] for k in want} == want
    assert c["faults"] == 1 and c["leaves_4k"] == 1 and c["alloc_under_lock"] == 0


# Scenario 2: a second private fault in the same 2 MiB host range (dpamt-install).
# Before it, the pamt cache holds 8 < 2 x pamt_pairs = 10, so the fault's top-up adds
# exactly 2 pages (pamt_topups 2, allocated 12; pages 103 + 2 = 105). The tables exist;
# the leaf's pfn 0x80001 is in range 0x400, already live: get takes the fast path, no
# page is popped, so the locked section obtains 0 pages (fault_pages[0]).
def test_second_fault_same_range_fast_path():
    ev = np.concatenate([FIRST_FAULT, events((30, OP_FAULT, 0, 0x1001, 0x80001, 1, True))])
    c, h = run(TDX, ev, "dpamt-install")
    want = [0] * 17
    want[0] = want[8] = 1  # the first fault obtained 8 pages, the second none
    assert h == want
    assert c["pamt_topups"] == 2 and c["pamt_allocated"] == 12
    assert c["pages_allocated"] == 105
    assert c["pamt_get"] == 16 and c["pamt_get_fast"] == 14 and c["pamt_add"] == 2
    assert c["pamt_pairs_end"] == 2 and c["tables_linked_mirror"] == 3


# Scenario 3: dpamt-alloc pins ranges with idle cached pages. No control pages,
# spread 4: fresh page k is at K + 512 (k mod 4) + k div 4, i.e. range R(k mod 4).
# The sept top-up takes page k=0 (R0) and its get installs a pair k=1, k=2; page k=3
# (R3) installs k=4, k=5; page k=6 (R2) installs k=7, k=8; page k=9 (R1) installs k=10,
# k=11. The other 36 pages find their range live. So 48 fresh pages for sept, 8 of them
# alloc_direct, 4 PAMT.ADDs, 40 gets (36 fast), and every live range is held only by
# cached pages: cache_only_ranges_peak 4. Then pamt 10 and spt 40: 98 pages.
# Under dpamt-install the same trace allocates 40 + 10 + 40 = 90 pages and pins nothing.
def test_dpamt_alloc_pins_ranges_with_idle_cache_pages():
    ev = events((0, OP_VCPU_CREATE, 0, 0, 0, 0, False))
    p = dict(spread=4, tdr_pages=0, tdcs_pages=0, tdvpr_pages=0, tdcx_pages=0)
    c, _ = run(TDX, ev, "dpamt-alloc", **p)
    assert c["cache_only_ranges_peak"] == 4
    assert c["pamt_add"] == 4 and c["pamt_pairs_end"] == 4
    assert c["alloc_direct"] == 8
    assert c["pamt_get"] == 40 and c["pamt_get_fast"] == 36
    assert c["pages_allocated"] == 98
    c2, _ = run(TDX, ev, "dpamt-install", **p)
    assert c2["pages_allocated"] == 90 and c2["cache_only_ranges_peak"] == 0
    assert c2["pamt_add"] == 0
    # With teardown the vCPU destroy drops every cached ref, put, and frees: balanced.
    c3, _ = run(TDX, ev, "dpamt-alloc", teardown=True, **p)
    assert c3["pamt_remove"] == 4 and c3["leaked_ranges"] == 0
    assert c3["pages_freed"] == c3["pages_allocated"] == 98


# Scenario 4: caches that never fill. vmx, capacity 1 and every min 0: a top-up adds
# nothing (n < 0 never holds), so every consume is an empty-cache fallback.
# vcpu_create: direct root: header fallback (1) + spt fallback (2, one page).
# fault (shared 4K at gfn 0): three tables, each header + spt fallback: +6 -> 8
# allocations under lock, 3 pages, fault_pages[3]. Total pages 4, none alloc_direct.
def test_empty_caches_allocate_under_lock():
    ev = events(
        (0, OP_VCPU_CREATE, 0, 0, 0, 0, False),
        (5, OP_FAULT, 0, 0, 0x100, 1, False),
    )
    p = dict(capacity=1, min_desc=0, min_sept=0, min_spt=0, min_header=0)
    c, h = run(VMX, ev, "dpamt-install", **p)
    assert c["alloc_under_lock"] == 8
    assert c["pages_allocated"] == 4 and c["alloc_direct"] == 0
    assert c["header_consumed"] == 0 and c["spt_consumed"] == 0 and c["desc_topups"] == 0
    assert c["tables_linked_direct"] == 3 and c["leaves_4k"] == 1
    assert h == hist_at(3)


# Scenario 5: pamt_pairs = 1 forces fault retries (dpamt-install). No control pages,
# spread 64: fresh page k < 64 is alone in range R(k).
# load: sept 40 pages k=0..39 (R0..R39), pamt 2 pages k=40,41, spt 40 pages k=42..81.
# fault (private 4K, pfn 0 -> range 0): level-3 link pops S-EPT k=39 (R39, refcount 0):
# its get pops the pair k=41,40 -> PAMT.ADD; pamt cache now empty.
# level-2 link, S-EPT k=38 (R38): get fails (0 < 2 pages): retry 1, top-up adds pamt pages
# k=82,83, get again pops them -> ADD. Level 1 (k=37): retry 2, pages k=84,85 -> ADD.
# Leaf (range 0): retry 3, pages k=86,87 -> ADD.
# pamt_get 1 + 2 + 2 + 2 = 7 (no fast), PAMT.ADD 4 (all under mmu_lock), retries 3,
# pamt top-ups 1 + 3 = 4, 8 pamt pages allocated and consumed, pages 40+2+40+6 = 88,
# fault_pages 3 spt + 3 sept + 8 pamt = 14.
def test_pamt_pairs_1_forces_retries():
    ev = events(
        (0, OP_VCPU_CREATE, 0, 0, 0, 0, False),
        (5, OP_FAULT, 0, 0, 0, 1, True),
    )
    p = dict(pamt_pairs=1, spread=64, tdr_pages=0, tdcs_pages=0, tdvpr_pages=0, tdcx_pages=0)
    c, h = run(TDX, ev, "dpamt-install", **p)
    assert c["fault_retries"] == 3
    assert c["pamt_get"] == 7 and c["pamt_get_fast"] == 0
    assert c["pamt_add"] == 4 and c["seamcalls_under_mmu_lock"] == 4
    assert c["pamt_topups"] == 4 and c["pamt_allocated"] == 8 and c["pamt_consumed"] == 8
    assert c["pages_allocated"] == 88
    assert h == hist_at(14)
