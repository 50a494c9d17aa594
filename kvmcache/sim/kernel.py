"""The numba model of MODEL.md: one jitted pass over a chunk of events.

Every function is ``@njit(cache=True, nogil=True)`` (plus ``_nrt=False``, see ``JIT``; the
Python body runs for tiny traces, see kvmcache/jit.py)
over three preallocated arrays:

* ``m`` (int64): parameters, scalars, region offsets and counters at fixed indices
  (the ``P_*``, ``G_*``, ``O_*``/``Z_*`` and ``C_*`` constants below), then the
  variable-size regions (per-vCPU caches, per-range refcounts and pairs, tables, the
  host free stack, timeline samples) laid out by ``state.py``;
* ``lf`` (uint32): the leaves of both roots at the three leaf levels;
* ``u`` (uint64): the last timestamp and the 128-bit idle page-ns sum.

Why so few arrays: a jitted call that passes a tuple of many arrays costs about a
microsecond (each array is a fat struct copied and reference-counted per call); three
arrays cost a few nanoseconds. Section numbers in comments refer to MODEL.md.
"""

from __future__ import annotations

import zlib

import numpy as np

from kvmcache.jit import njit, prefetch
from kvmcache.results import TIMELINE_COLUMNS
from kvmcache.sim.counters import (
    CACHES,
    COUNTERS,
    FAULT_LATENCY_BUCKETS,
    FAULT_PAGES_BUCKETS,
    HISTOGRAMS,
    N_COUNTERS,
    STRATEGIES,
)
from kvmcache.trace.digest import K1 as DIGEST_K1
from kvmcache.trace.digest import K2 as DIGEST_K2
from kvmcache.trace.digest import K3 as DIGEST_K3
from kvmcache.trace.digest import M1 as DIGEST_M1
from kvmcache.trace.digest import M2 as DIGEST_M2
from kvmcache.trace.events import MAX_VCPUS as TRACE_MAX_VCPUS
from kvmcache.trace.events import (
    OP_FAULT,
    OP_SPLIT,
    OP_UNMAP,
    OP_VCPU_CREATE,
    OP_VCPU_DESTROY,
    OP_VM_CREATE,
    OP_VM_DESTROY,
)

#: Every kernel function: cached on disk, GIL released, and compiled without numba's
#: reference counting (NRT). The kernel allocates nothing; it only indexes the arrays
#: the driver passes in, which the driver keeps alive. Without NRT every call saves the
#: atomic incref/decref of its array arguments: 3.5 -> 15 M events/s on spurious faults.
JIT = {"cache": True, "nogil": True, "_nrt": False}

# ---------------------------------------------------------------------------------------
# Strategies, caches, roots (op codes come from trace/events.py).

S_NONE = 0
S_INSTALL = 1
S_ALLOC = 2
S_PAIR = 3
S_PREALLOC = 4

K_DESC = 0
K_HEADER = 1
K_SPT = 2
K_SEPT = 3
K_PAMT = 4

MIRROR = 0
DIRECT = 1


# ---------------------------------------------------------------------------------------
# Fixed layout of m. Parameters and sizes:
P_CAPACITY = 0
P_MIN_DESC = 1
P_MIN_SEPT = 2
P_MIN_SPT = 3
P_MIN_HEADER = 4
P_PAMT_PAIRS = 5
P_PREALLOC_SEPT = 6
P_TDR = 7
P_TDCS = 8
P_TDVPR = 9
P_TDCX = 10
P_SPREAD = 11
P_KBASE = 12
P_KPAGES = 13
P_STRAT = 14
P_TDX = 15
P_ROOT_LEVEL = 16
P_PAMT_TARGET = 17
P_DPAMT = 18
P_NVCPU = 19
P_FSTACK = 20
P_GROW_MARGIN = 21
P_SAMPLE_EVERY = 22
P_NSAMPLES = 23
P_PREFETCH = 24  # events ahead the fast path prefetches for (0: off; state.py decides)
# Scalars:
G_K = 32  # fresh-page counter
G_FREE_TOP = 33
G_VM = 34  # 0 no VM yet, 1 live, 2 destroyed
G_ROOTS = 35
G_ROOT_SPT_M = 36
G_ROOT_SPT_D = 37
G_IDLE = 39  # idle cache pages now
G_HELD = 40  # .. 44: objects held per cache now
G_LIVE = 45  # pages allocated - freed
G_PAIRS = 46  # ranges with refcount > 0
G_CACHE_ONLY = 47  # ranges with refcount == cached_refs > 0
G_IN_LOCK = 48
G_FPAGES = 49  # pages obtained by the current locked section
G_ERR = 50
G_ERR_ARG = 52
G_NSAMPLES = 54  # timeline samples written since the last flush
G_NSLOTS = 55  # table slots in use
G_NVSLOTS = 56  # vCPU slots in use
G_LAYOUT = 57  # written by finish(): the layout this compiled code was built for
# Region offsets (O_*) and sizes (Z_*):
O_VLIVE = 64  # per vCPU slot
O_VCNT = 65
O_SPT = 66
O_SEPT = 67
O_PAMT = 68
O_VCTRL = 69
O_TDCTRL = 70
O_REFC = 71  # per 2 MiB host range
O_PAIR = 72
O_CACHED = 73
O_HKEY = 74  # table hash, pairs of words: key + 1 (0 = empty), slot (one cache line)
# (75: free)
O_SKEY = 76  # per table slot: its key, spt pfn + 1, S-EPT pfn + 1
O_SSPT = 77
O_SSEPT = 78
O_SAMPLES = 79
O_FSTACK = 80
O_VMAP = 81  # vCPU index -> slot + 1
Z_SPT = 82  # per-vCPU row strides
Z_SEPT = 83
Z_PAMT = 84
Z_VCTRL = 85
Z_NRANGES = 86
Z_HCAP = 87  # hash capacity (a power of two)
Z_HSHIFT = 88  # 64 - log2(Z_HCAP)
Z_SLOTS = 89  # table slot capacity; leaves of slot s are lf[512 s .. 512 s + 511]
O_PBITS = 90  # presence bitmap of 4 KiB leaves: bit gfn of root r at word 2 * (gfn/64) + r
Z_PBITS = 91  # words per root (a multiple of 8: whole 2 MiB regions); gfns beyond: lf only
# Per-range state (refc, pair, cached) is indexed by a range index x. Dense (Z_RSPARSE 0):
# x is the range itself, over every range of the host. Sparse (a huge host): x is given out
# in first-use order through a hash of range + 1 -> x, and the per-range regions hold the
# ranges the trace touched (Z_NRANGES of them at most, doubling on demand).
Z_RSPARSE = 92
O_RHASH = 93  # range hash, pairs of words: range + 1 (0 = empty), x
O_RKEY = 94  # per range index: its range (sparse only)
Z_RHCAP = 95  # range hash capacity (a power of two)
Z_RHSHIFT = 96
G_NRANGES = 97  # range indices given out (sparse)
# Presence bitmaps of 2 MiB and 1 GiB leaves, beside the 4 KiB one (O_PBITS): bit e of root
# r (e = gfn >> 9 or gfn >> 18) at word 2 * (e / 64) + r, over the same gfns. The roots are
# interleaved word by word so that the fast path adds the root instead of a row offset.
O_PB2 = 98
Z_PB2 = 99
O_PB3 = 100
Z_PB3 = 101
# A dense index of the level-1 tables over the same gfns: word 2 * (gfn / 512) + r holds the
# table's slot + 1 (0: none yet), so the fast path finds a 4 KiB leaf without the hash.
O_L1 = 102
Z_L1 = 103
# Counters and the histograms:
CB = 128
HB = 256  # fault_pages, 17 buckets
HB_LAT = 288  # fault_latency, 32 buckets
FIXED = 320  # first index of the variable regions

MAX_VCPUS = TRACE_MAX_VCPUS  # vCPU indices are below this (the trace format's bound)
HMUL_U = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: 2^64 / golden ratio
SLOT_MARGIN = 16  # table slots one event can create, at most (L - 1 links or a split)

# Unsigned scalars in u (section 8 clock values are u64 and saturate at 2^64 - 1).
U_LAST_TS = 0
U_NS_LO = 1  # cache_idle_page_ns, low and high word
U_NS_HI = 2
U_T = 3  # the model clock
U_PFREE = 4  # when pamt_lock is next free
U_START = 5  # start of the current event
U_LSTART = 6  # start of the current locked section
U_WAIT_MAX = 7  # pamt_lock_wait_max_ns
U_LOCKED_MAX = 8  # time_locked_max_ns
U_LAT_MAX = 9  # fault_latency_max_ns
U_NS_ALLOC = 10  # the ns_* costs, as u64
U_NS_SLAB = 11
U_NS_TOPUP = 12
U_NS_FREE = 13
U_NS_ADD = 14
U_NS_REMOVE = 15
U_NS_FAULT = 16
U_NS_LINK = 17
# Exact sums in two words (low, high): time_topup_ns, time_locked_ns, pamt_lock_wait_ns,
# fault_latency_ns, vcpu_delay_ns. pamt_lock_held_ns is ns_pamt_add * pamt_add +
# ns_pamt_remove * pamt_remove (MODEL.md 8.1), computed by the driver.
U_TOPUP = 18
U_LOCKED = 20
U_WAIT = 22
U_LAT = 24
U_DELAY = 26
N_U = 32  # then busy[v] per vCPU slot: u[N_U + v]
#: u-backed counters and their (low word, or the only word) index.
U_SUMS = {
    "time_topup_ns": U_TOPUP,
    "time_locked_ns": U_LOCKED,
    "pamt_lock_wait_ns": U_WAIT,
    "fault_latency_ns": U_LAT,
    "vcpu_delay_ns": U_DELAY,
    "cache_idle_page_ns": U_NS_LO,
}
U_MAXES = {
    "pamt_lock_wait_max_ns": U_WAIT_MAX,
    "time_locked_max_ns": U_LOCKED_MAX,
    "fault_latency_max_ns": U_LAT_MAX,
}

# Kernel return statuses.
ST_OK = 0
ST_GROW_VCPUS = 1
ST_GROW_FSTACK = 2
ST_SAMPLES_FULL = 3
ST_GROW_TABLES = 4
ST_GROW_RANGES = 5
ST_ERROR = 9

# Error codes (m[G_ERR]).
E_NONE = 0
E_PRIVATE_VMX = 1
E_VCPU_LIVE = 2
E_VM_EXISTS = 3
E_AFTER_DESTROY = 4
E_KERNEL_PAGES = 5
E_BAD_OP = 6
E_BAD_VCPU = 7

# Timeline sample columns.
T_INDEX = 0
T_TS = 1
T_LIVE = 2
T_IDLE = 3
T_PAIRS = 4
T_UNDER_LOCK = 5
T_RETRIES = 6
T_ALLOCATED = 7
N_T = 8

# Counter indices (absolute in m).
_I = {name: CB + i for i, name in enumerate(COUNTERS)}
assert CB + N_COUNTERS <= HB
C_EVENTS = _I["events"]
C_FAULTS = _I["faults"]
C_FAULTS_PRIVATE = _I["faults_private"]
C_FAULTS_SHARED = _I["faults_shared"]
C_FAULTS_SPURIOUS = _I["faults_spurious"]
C_LEVEL_ADJ = _I["faults_level_adjusted"]
C_RETRIES = _I["fault_retries"]
C_COLLAPSES = _I["collapses"]
C_UNMAPS = _I["unmaps"]
C_UNMAPS_MISSING = _I["unmaps_missing"]
C_SPLITS = _I["splits"]
C_VCPUS_CREATED = _I["vcpus_created"]
C_VCPUS_DESTROYED = _I["vcpus_destroyed"]
C_LINKED_MIRROR = _I["tables_linked_mirror"]
C_LINKED_DIRECT = _I["tables_linked_direct"]
C_TABLES_FREED = _I["tables_freed"]
C_LEAVES_4K = _I["leaves_4k"]
C_LEAVES_2M = _I["leaves_2m"]
C_LEAVES_1G = _I["leaves_1g"]
C_CACHE0 = _I["desc_topups"]  # 6 counters per cache, caches in K_* order
CF_TOPUPS = 0
CF_ALLOCATED = 1
CF_CONSUMED = 2
CF_FREED = 3
CF_PEAK = 4
CF_END = 5
C_PAGES_ALLOCATED = _I["pages_allocated"]
C_PAGES_FREED = _I["pages_freed"]
C_LIVE_PEAK = _I["pages_live_peak"]
C_ALLOC_DIRECT = _I["alloc_direct"]
C_UNDER_LOCK = _I["alloc_under_lock"]
C_GET = _I["pamt_get"]
C_GET_FAST = _I["pamt_get_fast"]
C_PUT = _I["pamt_put"]
C_PUT_FAST = _I["pamt_put_fast"]
C_ADD = _I["pamt_add"]
C_REMOVE = _I["pamt_remove"]
C_LOCK = _I["pamt_lock_acquired"]
C_SEAM_LOCKED = _I["seamcalls_under_mmu_lock"]
C_PAIRS_PEAK = _I["pamt_pairs_peak"]
C_PAIRS_END = _I["pamt_pairs_end"]
C_DISCARDED = _I["pairs_discarded"]
C_CACHE_ONLY_PEAK = _I["cache_only_ranges_peak"]
C_IDLE_PEAK = _I["cache_pages_idle_peak"]
C_IDLE_END = _I["cache_pages_idle_end"]
C_TS_BACKWARDS = _I["ts_backwards"]
C_UNDERFLOW = _I["refcount_underflow"]
C_LEAKED = _I["leaked_ranges"]
C_CONTENDED = _I["pamt_lock_contended"]
assert _I["desc_topups"] + 6 * 5 - 1 == _I["pamt_held_end"]
# Codes that follow the order of tuples elsewhere: a reordered or extended tuple fails here.
_STRATS = ("none", "dpamt-install", "dpamt-alloc", "dpamt-pair", "dpamt-prealloc")
assert (S_NONE, S_INSTALL, S_ALLOC, S_PAIR, S_PREALLOC) == tuple(map(STRATEGIES.index, _STRATS))
assert len(STRATEGIES) == len(_STRATS)
_CACHES = ("desc", "header", "spt", "sept", "pamt")
assert (K_DESC, K_HEADER, K_SPT, K_SEPT, K_PAMT) == tuple(map(CACHES.index, _CACHES))
assert N_T == len(TIMELINE_COLUMNS) and HB + FAULT_PAGES_BUCKETS <= HB_LAT
assert HB_LAT + FAULT_LATENCY_BUCKETS <= FIXED
assert MAX_VCPUS == TRACE_MAX_VCPUS
#: numba caches compiled code per source file: if counters.py (or another module this file
#: takes indices and codes from) changes but this file does not, a stale cache would index
#: old positions. finish() stores this value as compiled; the driver compares it with the
#: value computed by Python now. It folds in every index and code the kernel depends on.
LAYOUT = zlib.crc32(
    repr(
        (COUNTERS, STRATEGIES, CACHES, HISTOGRAMS, FAULT_PAGES_BUCKETS, TIMELINE_COLUMNS)
        + (FAULT_LATENCY_BUCKETS, HB_LAT, N_U)
        + (DIGEST_K1, DIGEST_K2, DIGEST_K3, DIGEST_M1, DIGEST_M2)
        + (OP_FAULT, OP_SPLIT, OP_UNMAP, OP_VCPU_CREATE, OP_VCPU_DESTROY, OP_VM_CREATE)
        + (CB, HB, FIXED, N_T)
    ).encode()
)

U64_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)
U64_ZERO = np.uint64(0)
LAT_128 = np.uint64(128)
SH7 = np.uint64(7)

M32 = np.uint64(0xFFFFFFFF)
M8 = np.uint64(0xFF)
SH32 = np.uint64(32)
SH40 = np.uint64(40)
SH48 = np.uint64(48)
MAX_VCPUS_U = np.uint64(MAX_VCPUS)
# Values of a vCPU slot's live mark (m[O_VLIVE + v]): 0 not live.
LIVE = 1
READY = 2  # live, and its top-up would add nothing: the fast path takes its faults
# Unsigned constants of the fast path (an index mixing int64 and uint64 would be a float).
SH6 = np.uint64(6)
SH9 = np.uint64(9)
SH18 = np.uint64(18)
M63 = np.uint64(63)
M511 = np.uint64(511)
U2 = np.uint64(2)
U3 = np.uint64(3)
U512 = np.uint64(512)
NU = np.uint64(N_U)
U64_ONE = np.uint64(1)
#: BIT[k] = 1 << k as int64 (bit 63 included), for the presence bitmap.
BIT = (np.uint64(1) << np.arange(64, dtype=np.uint64)).view(np.int64)
OP_FAULT_U = np.uint64(OP_FAULT)
#: Software prefetch of the record stream, this many words (PF_EVENTS events) ahead: a chunk
#: (32 MiB) streams from memory, and the loop's loads depend on each record's words, which
#: stalls it on every page the hardware prefetcher has not reached. Measured: ahead of 64 to
#: 512 events all give the same; none costs about 2x on the spurious-fault path.
PF_EVENTS = 256
PF_WORDS = np.uint64(4 * PF_EVENTS)
OP_UNMAP_U = np.uint64(OP_UNMAP)
#: A software prefetch of an array element's cache line (a no-op in Python mode).
PREFETCH = prefetch()


# ---------------------------------------------------------------------------------------
# Small helpers.


@njit(**JIT)
def _peak(m, idx, value):
    if value > m[idx]:
        m[idx] = value


@njit(**JIT)
def _add_page_ns(u, pages, gap):
    """u[hi:lo] += pages * gap exactly (64 x 64 -> 128-bit product, two-word sum)."""
    a = np.uint64(pages)
    b = gap
    a_lo = a & M32
    a_hi = a >> SH32
    b_lo = b & M32
    b_hi = b >> SH32
    lo_lo = a_lo * b_lo
    hi_lo = a_hi * b_lo
    lo_hi = a_lo * b_hi
    hi_hi = a_hi * b_hi
    cross = (lo_lo >> SH32) + (hi_lo & M32) + lo_hi
    upper = (hi_lo >> SH32) + (cross >> SH32) + hi_hi
    lower = (cross << SH32) | (lo_lo & M32)
    new_lo = u[U_NS_LO] + lower
    carry = np.uint64(0)
    if new_lo < lower:
        carry = U64_ONE
    u[U_NS_LO] = new_lo
    u[U_NS_HI] = u[U_NS_HI] + upper + carry


@njit(**JIT)
def _add128(u, i, d):
    """u[i+1]:u[i] += d (a u64), exactly."""
    lo = u[i] + d
    if lo < d:
        u[i + 1] += U64_ONE
    u[i] = lo


@njit(**JIT)
def _adv(u, cost):
    """The model clock advances by ``cost`` (u64), saturating at 2^64 - 1 (8.1)."""
    t = u[U_T] + cost
    if t < cost:
        t = U64_MAX
    u[U_T] = t


@njit(**JIT)
def _pamt_lock(m, u, cost):
    """One PAMT.ADD or PAMT.REMOVE under the global pamt_lock (8.2), granted in trace order."""
    t = u[U_T]
    free = u[U_PFREE]
    if free > t:
        wait = free - t
        _add128(u, U_WAIT, wait)
        m[C_CONTENDED] += 1
        if wait > u[U_WAIT_MAX]:
            u[U_WAIT_MAX] = wait
        u[U_T] = free
    _adv(u, cost)
    u[U_PFREE] = u[U_T]


@njit(**JIT)
def _lock_begin(u):
    """A fault's locked section starts (8.3): remember when, then its fixed ns_fault."""
    u[U_LSTART] = u[U_T]
    _adv(u, u[U_NS_FAULT])


@njit(**JIT)
def _lock_end(u):
    d = u[U_T] - u[U_LSTART]
    _add128(u, U_LOCKED, d)
    if d > u[U_LOCKED_MAX]:
        u[U_LOCKED_MAX] = d


@njit(**JIT)
def _vcnt(m, v, k):
    """Index in m of the object count of cache k of vCPU v."""
    return m[O_VCNT] + 5 * v + k


# ---------------------------------------------------------------------------------------
# Host allocator (section 4).


@njit(**JIT)
def _alloc_page(m, u):
    top = m[G_FREE_TOP]
    if top > 0:
        top -= 1
        m[G_FREE_TOP] = top
        pfn = m[m[O_FSTACK] + top]
    else:
        k = m[G_K]
        sp = m[P_SPREAD]
        pfn = m[P_KBASE] + 512 * (k % sp + sp * (k // (512 * sp))) + (k // sp) % 512
        if pfn >= m[P_KBASE] + m[P_KPAGES]:
            if m[G_ERR] == E_NONE:
                m[G_ERR] = E_KERNEL_PAGES
                m[G_ERR_ARG] = pfn
            pfn = m[P_KBASE]  # keep going with a harmless page; the replay stops after this event
        m[G_K] = k + 1
    _adv(u, u[U_NS_ALLOC])
    m[C_PAGES_ALLOCATED] += 1
    live = m[G_LIVE] + 1
    m[G_LIVE] = live
    if live > m[C_LIVE_PEAK]:
        m[C_LIVE_PEAK] = live
    return pfn


@njit(**JIT)
def _free_page(m, u, pfn):
    _adv(u, u[U_NS_FREE])
    top = m[G_FREE_TOP]
    m[m[O_FSTACK] + top] = pfn
    m[G_FREE_TOP] = top + 1
    m[C_PAGES_FREED] += 1
    m[G_LIVE] -= 1


# ---------------------------------------------------------------------------------------
# DPAMT refcounts (section 5.3). cache_only tracking is for dpamt-alloc only.


@njit(**JIT)
def _probe(m, base, mask, shift, key):
    """Open-addressing position of ``key`` (> 0) in a hash at m[base], pairs of words: the
    position holding it, or the empty one where it would go."""
    # Fibonacci hashing in unsigned arithmetic: the product wraps by definition (a signed
    # product that overflows let the compiler fold the hash wrongly once this was inlined
    # into the fast path), and the top bits are the position.
    h = np.int64((np.uint64(key) * HMUL_U) >> np.uint64(shift)) & mask
    while True:
        kk = m[base + 2 * h]
        if kk == 0 or kk == key:
            return h
        h = (h + 1) & mask


@njit(**JIT)
def _rix(m, r):
    """Range index of host range r, given out on first use (sparse mode)."""
    if m[Z_RSPARSE] == 0:
        return r
    at = m[O_RHASH] + 2 * _probe(m, m[O_RHASH], m[Z_RHCAP] - 1, m[Z_RHSHIFT], r + 1)
    if m[at] != 0:
        return m[at + 1]
    x = m[G_NRANGES]
    m[G_NRANGES] = x + 1
    m[at] = r + 1
    m[at + 1] = x
    m[m[O_RKEY] + x] = r
    return x


@njit(**JIT)
def _rfind(m, r):
    """Range index of host range r, or -1 if the trace never used it (sparse mode)."""
    if m[Z_RSPARSE] == 0:
        return r
    at = m[O_RHASH] + 2 * _probe(m, m[O_RHASH], m[Z_RHCAP] - 1, m[Z_RHSHIFT], r + 1)
    if m[at] == 0:
        return -1
    return m[at + 1]


@njit(**JIT)
def rehash_ranges(m: np.ndarray) -> None:
    """Rebuild the range hash from the range keys (after the driver enlarged it)."""
    base = m[O_RHASH]
    for h in range(2 * m[Z_RHCAP]):
        m[base + h] = 0
    for x in range(m[G_NRANGES]):
        key = m[m[O_RKEY] + x] + 1
        at = base + 2 * _probe(m, base, m[Z_RHCAP] - 1, m[Z_RHSHIFT], key)
        m[at] = key
        m[at + 1] = x


@njit(**JIT)
def _cache_only(m, r):
    c = m[m[O_CACHED] + r]
    return c > 0 and m[m[O_REFC] + r] == c


@njit(**JIT)
def _cache_only_after(m, r, was):
    now = _cache_only(m, r)
    if now != was:
        if now:
            m[G_CACHE_ONLY] += 1
            _peak(m, C_CACHE_ONLY_PEAK, m[G_CACHE_ONLY])
        else:
            m[G_CACHE_ONLY] -= 1


@njit(**JIT)
def _install(m, u, r, first, second):
    """PAMT.ADD of a pair for range r (the caller sets the refcount)."""
    pr = m[O_PAIR] + 2 * r
    m[pr] = first
    m[pr + 1] = second
    m[C_ADD] += 1
    m[C_LOCK] += 1
    _pamt_lock(m, u, u[U_NS_ADD])
    m[G_PAIRS] += 1
    _peak(m, C_PAIRS_PEAK, m[G_PAIRS])
    if m[G_IN_LOCK] != 0:
        m[C_SEAM_LOCKED] += 1


@njit(**JIT)
def _pop_pamt(m, v):
    ci = _vcnt(m, v, K_PAMT)
    n = m[ci] - 1
    m[ci] = n
    m[G_HELD + K_PAMT] -= 1
    m[G_IDLE] -= 1
    m[C_CACHE0 + 6 * K_PAMT + CF_CONSUMED] += 1
    m[G_FPAGES] += 1
    return m[m[O_PAMT] + v * m[Z_PAMT] + n]


@njit(**JIT)
def _get(m, u, pfn, use_cache, v):
    """get(pfn, cache): False when the vCPU cache could not supply a pair (retry)."""
    m[C_GET] += 1
    r = _rix(m, pfn >> 9)
    ri = m[O_REFC] + r
    alloc = m[P_STRAT] == S_ALLOC
    was = False
    if alloc:
        was = _cache_only(m, r)
    if m[ri] > 0:
        m[ri] += 1
        m[C_GET_FAST] += 1
        if alloc:
            _cache_only_after(m, r, was)
        return True
    if use_cache:
        if m[_vcnt(m, v, K_PAMT)] < 2:
            while m[_vcnt(m, v, K_PAMT)] > 0:
                _free_page(m, u, _pop_pamt(m, v))
            m[C_RETRIES] += 1
            return False
        first = _pop_pamt(m, v)
        second = _pop_pamt(m, v)
    else:
        first = _alloc_page(m, u)
        second = _alloc_page(m, u)
        m[C_ALLOC_DIRECT] += 2
        if m[G_IN_LOCK] != 0:
            m[G_FPAGES] += 2
    m[ri] = 1
    _install(m, u, r, first, second)
    if alloc:
        _cache_only_after(m, r, was)
    return True


@njit(**JIT)
def _put_range(m, u, r):
    m[C_PUT] += 1
    ri = m[O_REFC] + r
    if m[ri] == 0:
        m[C_UNDERFLOW] += 1
        return
    alloc = m[P_STRAT] == S_ALLOC
    was = False
    if alloc:
        was = _cache_only(m, r)
    if m[ri] > 1:
        m[ri] -= 1
        m[C_PUT_FAST] += 1
    else:
        m[ri] = 0
        m[C_REMOVE] += 1
        m[C_LOCK] += 1
        _pamt_lock(m, u, u[U_NS_REMOVE])  # the pair is freed after the release
        m[G_PAIRS] -= 1
        pr = m[O_PAIR] + 2 * r
        _free_page(m, u, m[pr])
        _free_page(m, u, m[pr + 1])
    if alloc:
        _cache_only_after(m, r, was)


@njit(**JIT)
def _put_pfn(m, u, pfn):
    """put() of the range of ``pfn``; a range the trace never used has refcount 0."""
    r = _rfind(m, pfn >> 9)
    if r < 0:
        m[C_PUT] += 1
        m[C_UNDERFLOW] += 1
        return
    _put_range(m, u, r)


@njit(**JIT)
def _cached_add(m, r, delta):
    was = _cache_only(m, r)
    m[m[O_CACHED] + r] += delta
    _cache_only_after(m, r, was)


# ---------------------------------------------------------------------------------------
# Caches: top-up (5.1) and consume (5.2).


@njit(**JIT)
def _held_push(m, k, pages):
    held = m[G_HELD + k] + 1
    m[G_HELD + k] = held
    _peak(m, C_CACHE0 + 6 * k + CF_PEAK, held)
    if pages > 0:
        m[G_IDLE] += pages
        _peak(m, C_IDLE_PEAK, m[G_IDLE])


@njit(**JIT)
def _topup_slab(m, u, v, k, minimum):
    ci = _vcnt(m, v, k)
    n = m[ci]
    if n < minimum:
        cap = m[P_CAPACITY]
        base = C_CACHE0 + 6 * k
        m[base + CF_TOPUPS] += 1
        _adv(u, u[U_NS_TOPUP])
        while n < cap:
            _adv(u, u[U_NS_SLAB])
            n += 1
            m[ci] = n
            m[base + CF_ALLOCATED] += 1
            _held_push(m, k, 0)


@njit(**JIT)
def _fill_caches(m, u, v):
    """Top up every cache of vCPU v, in MODEL.md 5.1 order (see _topup)."""
    strat = m[P_STRAT]
    tdx = m[P_TDX] != 0
    cap = m[P_CAPACITY]
    # 1. desc
    _topup_slab(m, u, v, K_DESC, m[P_MIN_DESC])
    # 2. sept (TDX only, not dpamt-prealloc)
    if tdx and strat != S_PREALLOC:
        ci = _vcnt(m, v, K_SEPT)
        n = m[ci]
        if n < m[P_MIN_SEPT]:
            base = C_CACHE0 + 6 * K_SEPT
            m[base + CF_TOPUPS] += 1
            _adv(u, u[U_NS_TOPUP])
            row = m[O_SEPT] + v * m[Z_SEPT]
            while n < cap:
                p = _alloc_page(m, u)
                pages = 1
                if strat == S_ALLOC:
                    _get(m, u, p, False, v)
                    _cached_add(m, _rix(m, p >> 9), 1)
                    m[row + 3 * n] = p
                elif strat == S_PAIR:
                    q0 = _alloc_page(m, u)
                    q1 = _alloc_page(m, u)
                    m[row + 3 * n] = p
                    m[row + 3 * n + 1] = q0
                    m[row + 3 * n + 2] = q1
                    pages = 3
                else:
                    m[row + 3 * n] = p
                n += 1
                m[ci] = n
                m[base + CF_ALLOCATED] += 1
                _held_push(m, K_SEPT, pages)
    # 3. pamt (or the dpamt-prealloc shared list): fill exactly to the target
    if tdx and strat != S_NONE:
        target = m[P_PAMT_TARGET]
        ci = _vcnt(m, v, K_PAMT)
        n = m[ci]
        if n < target:
            base = C_CACHE0 + 6 * K_PAMT
            m[base + CF_TOPUPS] += 1
            _adv(u, u[U_NS_TOPUP])
            row = m[O_PAMT] + v * m[Z_PAMT]
            while n < target:
                m[row + n] = _alloc_page(m, u)
                n += 1
                m[ci] = n
                m[base + CF_ALLOCATED] += 1
                _held_push(m, K_PAMT, 1)
    # 4. spt
    ci = _vcnt(m, v, K_SPT)
    n = m[ci]
    if n < m[P_MIN_SPT]:
        base = C_CACHE0 + 6 * K_SPT
        m[base + CF_TOPUPS] += 1
        _adv(u, u[U_NS_TOPUP])
        row = m[O_SPT] + v * m[Z_SPT]
        while n < cap:
            m[row + n] = _alloc_page(m, u)
            n += 1
            m[ci] = n
            m[base + CF_ALLOCATED] += 1
            _held_push(m, K_SPT, 1)
    # 5. header
    _topup_slab(m, u, v, K_HEADER, m[P_MIN_HEADER])


@njit(**JIT)
def _needs_topup(m, v):
    """Whether _fill_caches(m, u, v) would add anything to any cache."""
    c = m[O_VCNT] + 5 * v
    if m[c + K_DESC] < m[P_MIN_DESC] or m[c + K_SPT] < m[P_MIN_SPT]:
        return True
    if m[c + K_HEADER] < m[P_MIN_HEADER] or m[c + K_PAMT] < m[P_PAMT_TARGET]:
        return True
    return m[P_TDX] != 0 and m[P_STRAT] != S_PREALLOC and m[c + K_SEPT] < m[P_MIN_SEPT]


@njit(**JIT)
def _topup(m, u, v):
    """Top-up (5.1) of vCPU v. Most calls find every cache at or above its minimum: that
    check is small enough to inline, and the filling is called only when it is needed."""
    if _needs_topup(m, v):
        t0 = u[U_T]
        _fill_caches(m, u, v)
        _add128(u, U_TOPUP, u[U_T] - t0)


@njit(**JIT)
def _consume_header(m, u, v):
    ci = _vcnt(m, v, K_HEADER)
    n = m[ci]
    if n > 0:
        m[ci] = n - 1
        m[G_HELD + K_HEADER] -= 1
        m[C_CACHE0 + 6 * K_HEADER + CF_CONSUMED] += 1
    else:
        m[C_UNDER_LOCK] += 1
        _adv(u, u[U_NS_SLAB])  # a header object allocated on the spot


@njit(**JIT)
def _consume_spt(m, u, v):
    ci = _vcnt(m, v, K_SPT)
    n = m[ci]
    m[G_FPAGES] += 1
    if n > 0:
        n -= 1
        m[ci] = n
        m[G_HELD + K_SPT] -= 1
        m[G_IDLE] -= 1
        m[C_CACHE0 + 6 * K_SPT + CF_CONSUMED] += 1
        return m[m[O_SPT] + v * m[Z_SPT] + n]
    m[C_UNDER_LOCK] += 1
    return _alloc_page(m, u)


# ---------------------------------------------------------------------------------------
# The TDP MMU tree (section 1): tables in a hash of slots, leaves in 512-entry blocks.


@njit(**JIT)
def _tkey(root, k, idx):
    return ((idx << 4) | (k << 1) | root) + 1


@njit(**JIT)
def _hpos(m, key):
    """Hash position holding ``key``, or the empty position where it would go."""
    return _probe(m, m[O_HKEY], m[Z_HCAP] - 1, m[Z_HSHIFT], key)


@njit(**JIT)
def _tfind(m, root, k, idx):
    """Slot of table (root, level k, idx), or -1 if it never existed."""
    at = m[O_HKEY] + 2 * _hpos(m, _tkey(root, k, idx))
    if m[at] == 0:
        return -1
    return m[at + 1]


@njit(**JIT)
def _tslot(m, root, k, idx):
    """Slot of table (root, level k, idx), made on first use (present once its spt is set)."""
    key = _tkey(root, k, idx)
    at = m[O_HKEY] + 2 * _hpos(m, key)
    if m[at] != 0:
        return m[at + 1]
    slot = m[G_NSLOTS]
    m[G_NSLOTS] = slot + 1
    m[at] = key
    m[at + 1] = slot
    m[m[O_SKEY] + slot] = key
    if k == 1 and 0 <= idx < m[Z_L1]:
        m[m[O_L1] + 2 * idx + root] = slot + 1
    return slot


@njit(**JIT)
def _slot_present(m, slot):
    return slot >= 0 and m[m[O_SSPT] + slot] != 0


@njit(**JIT)
def _table_present(m, root, k, idx):
    return _slot_present(m, _tfind(m, root, k, idx))


@njit(**JIT)
def _leaf(m, root, g, gfn):
    """Index in lf of the level-g leaf entry covering gfn, or -1 (no table there)."""
    slot = _tfind(m, root, g, gfn >> (9 * g))
    if slot < 0:
        return -1
    return 512 * slot + ((gfn >> (9 * (g - 1))) & 511)


@njit(**JIT)
def rehash(m: np.ndarray) -> None:
    """Rebuild the table hash from the slot keys (after the driver enlarged it)."""
    base = m[O_HKEY]
    for h in range(2 * m[Z_HCAP]):
        m[base + h] = 0
    for slot in range(m[G_NSLOTS]):
        key = m[m[O_SKEY] + slot]
        at = base + 2 * _hpos(m, key)
        m[at] = key
        m[at + 1] = slot


@njit(**JIT)
def _retry(m, u, v):
    """A failed get inside a fault: drop the lock, top up every cache, retake the lock."""
    m[G_IN_LOCK] = 0
    _lock_end(u)
    _topup(m, u, v)
    _lock_begin(u)
    m[G_IN_LOCK] = 1


@njit(**JIT)
def _link(m, u, v, root, k, idx):
    """Link table (root, k, idx) below its parent inside a fault (5.4 step 5)."""
    strat = m[P_STRAT]
    _consume_header(m, u, v)
    spt_p = _consume_spt(m, u, v)
    if root == MIRROR:
        if strat == S_PREALLOC:
            if m[_vcnt(m, v, K_PAMT)] > 0:
                sept_p = _pop_pamt(m, v)
            else:
                m[C_UNDER_LOCK] += 1
                sept_p = _alloc_page(m, u)
                m[G_FPAGES] += 1
            while not _get(m, u, sept_p, True, v):
                _retry(m, u, v)
        else:
            ci = _vcnt(m, v, K_SEPT)
            n = m[ci]
            pair_obj = strat == S_PAIR
            q0 = 0
            q1 = 0
            if n > 0:
                n -= 1
                m[ci] = n
                m[G_HELD + K_SEPT] -= 1
                m[C_CACHE0 + 6 * K_SEPT + CF_CONSUMED] += 1
                row = m[O_SEPT] + v * m[Z_SEPT]
                sept_p = m[row + 3 * n]
                if pair_obj:
                    q0 = m[row + 3 * n + 1]
                    q1 = m[row + 3 * n + 2]
                    m[G_IDLE] -= 3
                    m[G_FPAGES] += 3
                else:
                    m[G_IDLE] -= 1
                    m[G_FPAGES] += 1
                if strat == S_ALLOC:
                    _cached_add(m, _rix(m, sept_p >> 9), -1)
            else:
                m[C_UNDER_LOCK] += 1
                sept_p = _alloc_page(m, u)
                m[G_FPAGES] += 1
                if pair_obj:
                    q0 = _alloc_page(m, u)
                    q1 = _alloc_page(m, u)
                    m[G_FPAGES] += 2
                elif strat == S_ALLOC:
                    _get(m, u, sept_p, False, v)
            if strat == S_INSTALL:
                while not _get(m, u, sept_p, True, v):
                    _retry(m, u, v)
            elif pair_obj:
                m[C_GET] += 1
                r = _rix(m, sept_p >> 9)
                ri = m[O_REFC] + r
                if m[ri] > 0:
                    m[ri] += 1
                    m[C_GET_FAST] += 1
                    m[C_DISCARDED] += 1
                    _free_page(m, u, q0)
                    _free_page(m, u, q1)
                else:
                    m[ri] = 1
                    _install(m, u, r, q0, q1)
        slot = _tslot(m, root, k, idx)
        m[m[O_SSEPT] + slot] = sept_p + 1
        m[C_LINKED_MIRROR] += 1
    else:
        slot = _tslot(m, root, k, idx)
        m[C_LINKED_DIRECT] += 1
    m[m[O_SSPT] + slot] = spt_p + 1
    _adv(u, u[U_NS_LINK])  # 8.3: at the end of the link


@njit(**JIT)
def _free_table(m, u, slot, root):
    """Free one table (collapse or teardown): put and free its S-EPT page, free its spt."""
    if root == MIRROR:
        si = m[O_SSEPT] + slot
        sept_p = m[si] - 1
        if m[P_DPAMT] != 0:
            _put_pfn(m, u, sept_p)
        _free_page(m, u, sept_p)
        m[si] = 0
    ti = m[O_SSPT] + slot
    _free_page(m, u, m[ti] - 1)
    m[ti] = 0
    m[C_TABLES_FREED] += 1


# The presence bitmap mirrors "the level-1 leaf entry of (root, gfn) is not 0" for gfns below
# gfn_limit: the spurious check of a 4 KiB fault (most events) reads one bit from a bitmap
# that stays in the caches instead of a 32-bit entry of a leaf block that does not.


@njit(**JIT)
def _pbit_word(m, root, gfn):
    """Index in m of the bitmap word of (root, gfn), or -1 beyond the bitmap."""
    w = gfn >> 6
    n = m[Z_PBITS]
    if w >= n or w < 0:
        return -1
    return m[O_PBITS] + 2 * w + root


@njit(**JIT)
def _pbit_set(m, root, gfn, on):
    i = _pbit_word(m, root, gfn)
    if i >= 0:
        if on:
            m[i] |= BIT[gfn & 63]
        else:
            m[i] &= ~BIT[gfn & 63]


@njit(**JIT)
def _lbits(m, g):
    """(first word, words per root) of the presence bitmap of level-g leaves."""
    if g == 1:
        return m[O_PBITS], m[Z_PBITS]
    if g == 2:
        return m[O_PB2], m[Z_PB2]
    return m[O_PB3], m[Z_PB3]


@njit(**JIT)
def _lbit_set(m, root, g, gfn, on):
    """The presence bit of the level-g leaf at gfn (levels 2 and 3; level 1: _pbit_set)."""
    base, n = _lbits(m, g)
    e = gfn >> (9 * (g - 1))
    w = e >> 6
    if 0 <= w < n:
        i = base + 2 * w + root
        if on:
            m[i] |= BIT[e & 63]
        else:
            m[i] &= ~BIT[e & 63]


@njit(**JIT)
def _pbits_block(m, root, k, idx, value):
    """All 512 presence bits of the leaves of level-k table idx to ``value`` (0 or -1)."""
    base, n = _lbits(m, k)
    w = idx * 8
    if 0 <= w and w + 8 <= n:
        i = base + 2 * w + root
        for j in range(8):
            m[i + 2 * j] = value


@njit(**JIT)
def _clear_block(m, lf, slot):
    """Clear the leaves of table ``slot`` and their presence bits."""
    base = 512 * slot
    for j in range(512):
        lf[base + j] = 0
    key = m[m[O_SKEY] + slot] - 1
    k = (key >> 1) & 7
    if k <= 3:
        _pbits_block(m, key & 1, k, key >> 4, 0)


@njit(**JIT)
def _zap_direct(m, lf, u, g, gfn):
    """Zap the direct subtree under the level-g entry for gfn (5.9): g is 2 or 3.

    Leaves are cleared, then tables freed deepest level first, ascending index.
    """
    if g == 2:
        s1 = _tfind(m, DIRECT, 1, gfn >> 9)
        _clear_block(m, lf, s1)
        _free_table(m, u, s1, DIRECT)
    else:
        t2 = gfn >> 18
        s2 = _tfind(m, DIRECT, 2, t2)
        for t1 in range(t2 * 512, t2 * 512 + 512):
            s1 = _tfind(m, DIRECT, 1, t1)
            if _slot_present(m, s1):
                _clear_block(m, lf, s1)
        _clear_block(m, lf, s2)
        for t1 in range(t2 * 512, t2 * 512 + 512):
            s1 = _tfind(m, DIRECT, 1, t1)
            if _slot_present(m, s1):
                _free_table(m, u, s1, DIRECT)
        _free_table(m, u, s2, DIRECT)


# ---------------------------------------------------------------------------------------
# VM and vCPU lifetime (5.7, 5.8, 5.10, 5.11).


@njit(**JIT)
def _vm_create(m, u):
    m[G_VM] = 1
    if m[P_TDX] != 0:
        base = m[O_TDCTRL]
        for i in range(m[P_TDR] + m[P_TDCS]):
            p = _alloc_page(m, u)
            m[C_ALLOC_DIRECT] += 1
            m[base + i] = p
            if m[P_DPAMT] != 0:
                _get(m, u, p, False, 0)


@njit(**JIT)
def _take_root(m, u, v):
    _consume_header(m, u, v)
    return _consume_spt(m, u, v)


@njit(**JIT)
def _vcpu_create(m, u, v):
    if m[G_VM] == 0:
        _vm_create(m, u)
    if m[P_TDX] != 0:
        row = m[O_VCTRL] + v * m[Z_VCTRL]
        for i in range(m[P_TDVPR] + m[P_TDCX]):
            p = _alloc_page(m, u)
            m[C_ALLOC_DIRECT] += 1
            m[row + i] = p
            if m[P_DPAMT] != 0:
                _get(m, u, p, False, v)
    m[m[O_VLIVE] + v] = LIVE
    _topup(m, u, v)
    if m[G_ROOTS] == 0:
        if m[P_TDX] != 0:
            m[G_ROOT_SPT_M] = _take_root(m, u, v)
        m[G_ROOT_SPT_D] = _take_root(m, u, v)
        m[G_ROOTS] = 1
    m[C_VCPUS_CREATED] += 1


@njit(**JIT)
def _free_page_stack(m, u, v, k, row):
    """Free every page of vCPU v's page cache k (its stack starts at m[row]), newest first."""
    ci = _vcnt(m, v, k)
    n = m[ci]
    while n > 0:
        n -= 1
        m[ci] = n
        m[G_HELD + k] -= 1
        m[G_IDLE] -= 1
        m[C_CACHE0 + 6 * k + CF_FREED] += 1
        _free_page(m, u, m[row + n])


@njit(**JIT)
def _vcpu_destroy(m, u, v):
    strat = m[P_STRAT]
    # slab caches: counts only
    for k in (K_DESC, K_HEADER):
        ci = _vcnt(m, v, k)
        n = m[ci]
        m[C_CACHE0 + 6 * k + CF_FREED] += n
        m[G_HELD + k] -= n
        m[ci] = 0
    _free_page_stack(m, u, v, K_SPT, m[O_SPT] + v * m[Z_SPT])
    # sept, newest first
    ci = _vcnt(m, v, K_SEPT)
    row = m[O_SEPT] + v * m[Z_SEPT]
    n = m[ci]
    while n > 0:
        n -= 1
        m[ci] = n
        m[G_HELD + K_SEPT] -= 1
        m[C_CACHE0 + 6 * K_SEPT + CF_FREED] += 1
        p = m[row + 3 * n]
        if strat == S_PAIR:
            m[G_IDLE] -= 3
            _free_page(m, u, p)
            _free_page(m, u, m[row + 3 * n + 1])
            _free_page(m, u, m[row + 3 * n + 2])
        else:
            m[G_IDLE] -= 1
            if strat == S_ALLOC:
                x = _rix(m, p >> 9)
                _cached_add(m, x, -1)
                _put_range(m, u, x)
            _free_page(m, u, p)
    # pamt (or the shared list)
    _free_page_stack(m, u, v, K_PAMT, m[O_PAMT] + v * m[Z_PAMT])
    # control pages, in allocation order
    if m[P_TDX] != 0:
        row = m[O_VCTRL] + v * m[Z_VCTRL]
        for i in range(m[P_TDVPR] + m[P_TDCX]):
            p = m[row + i]
            if m[P_DPAMT] != 0:
                _put_pfn(m, u, p)
            _free_page(m, u, p)
    m[m[O_VLIVE] + v] = 0
    m[C_VCPUS_DESTROYED] += 1


@njit(**JIT)
def _sift(m, hb, root, end):
    """Heap sort step over slots m[hb .. hb + end), ordered by their table key."""
    sk = m[O_SKEY]
    while True:
        child = 2 * root + 1
        if child >= end:
            return
        if child + 1 < end and m[sk + m[hb + child]] < m[sk + m[hb + child + 1]]:
            child += 1
        if m[sk + m[hb + root]] >= m[sk + m[hb + child]]:
            return
        a = m[hb + root]
        m[hb + root] = m[hb + child]
        m[hb + child] = a
        root = child


@njit(**JIT)
def _sort_slots(m, hb, n):
    """Sort the n slots at m[hb ..] by table key in place (no allocation). Within one
    level the key orders by index, then mirror (0) before direct (1)."""
    for start in range(n // 2 - 1, -1, -1):
        _sift(m, hb, start, n)
    for end in range(n - 1, 0, -1):
        a = m[hb]
        m[hb] = m[hb + end]
        m[hb + end] = a
        _sift(m, hb, 0, end)


@njit(**JIT)
def _vm_destroy(m, lf, u):
    if m[G_VM] != 1:
        m[G_VM] = 2
        return
    # Every live vCPU, in ascending vCPU index.
    vmap = m[O_VMAP]
    for v in range(MAX_VCPUS):
        vs = m[vmap + v] - 1
        if vs >= 0 and m[m[O_VLIVE] + vs] != 0:
            _vcpu_destroy(m, u, vs)
    L = m[P_ROOT_LEVEL]
    dpamt = m[P_DPAMT] != 0
    nslots = m[G_NSLOTS]
    # Remove every leaf (they live in the blocks of present level 1..3 tables); private
    # 4 KiB leaves put their range.
    for slot in range(nslots):
        if _slot_present(m, slot):
            key = m[m[O_SKEY] + slot] - 1
            root = key & 1
            k = (key >> 1) & 7
            if k <= 3:
                base = 512 * slot
                put = root == MIRROR and k == 1 and dpamt
                for j in range(512):
                    r1 = lf[base + j]
                    if r1 != 0:
                        lf[base + j] = 0
                        if put:
                            _put_range(m, u, np.int64(r1) - 1)
                _pbits_block(m, root, k, key >> 4, 0)
    # Free every table, deepest level first, ascending index, mirror before direct on a
    # tie (section 7). The order is visible on the model clock (section 8): it decides how
    # many frees precede the first PAMT.REMOVE, and so its pamt_lock wait. The table hash
    # is no longer needed (no event follows a VM destroy): its words sort the slots.
    sk = m[O_SKEY]
    hb = m[O_HKEY]
    for k in range(1, L):
        n = 0
        for slot in range(nslots):
            if _slot_present(m, slot) and ((m[sk + slot] - 1) >> 1) & 7 == k:
                m[hb + n] = slot
                n += 1
        _sort_slots(m, hb, n)
        for j in range(n):
            slot = m[hb + j]
            _free_table(m, u, slot, (m[sk + slot] - 1) & 1)
    for h in range(2 * m[Z_HCAP]):
        m[hb + h] = 0
    if m[G_ROOTS] != 0:
        if m[P_TDX] != 0:
            _free_page(m, u, m[G_ROOT_SPT_M])
            m[C_TABLES_FREED] += 1
        _free_page(m, u, m[G_ROOT_SPT_D])
        m[C_TABLES_FREED] += 1
        m[G_ROOTS] = 0
    if m[P_TDX] != 0:
        base = m[O_TDCTRL]
        for i in range(m[P_TDR] + m[P_TDCS]):
            p = m[base + i]
            if dpamt:
                _put_pfn(m, u, p)
            _free_page(m, u, p)
    leaked = 0
    base = m[O_REFC]
    nr = m[G_NRANGES] if m[Z_RSPARSE] != 0 else m[Z_NRANGES]
    for r in range(nr):
        if m[base + r] != 0:
            leaked += 1
    m[C_LEAKED] = leaked
    m[G_VM] = 2


# ---------------------------------------------------------------------------------------
# Events (5.4, 5.5, 5.6).


@njit(**JIT)
def _fault(m, lf, u, v, gfn, pfn, g, private):
    """A guest fault on vCPU slot v (5.4)."""
    m[C_FAULTS] += 1
    if private:
        m[C_FAULTS_PRIVATE] += 1
    else:
        m[C_FAULTS_SHARED] += 1
    if m[m[O_VLIVE] + v] == 0:
        _vcpu_create(m, u, v)
    _topup(m, u, v)
    root = MIRROR if private else DIRECT
    pw = _pbit_word(m, root, gfn)
    if pw >= 0 and (m[pw] >> (gfn & 63)) & 1 != 0:
        m[C_FAULTS_SPURIOUS] += 1
        return
    for lv in range(1 if pw < 0 else 2, 4):
        li = _leaf(m, root, lv, gfn)
        if li >= 0 and lf[li] != 0:
            m[C_FAULTS_SPURIOUS] += 1
            return
    m[G_IN_LOCK] = 1
    m[G_FPAGES] = 0
    _lock_begin(u)
    if g > 1:
        if root == MIRROR:
            adjusted = False
            while g > 1 and _table_present(m, MIRROR, g - 1, gfn >> (9 * (g - 1))):
                g -= 1
                adjusted = True
            if adjusted:
                m[C_LEVEL_ADJ] += 1
        elif _table_present(m, DIRECT, g - 1, gfn >> (9 * (g - 1))):
            _zap_direct(m, lf, u, g, gfn)
            m[C_COLLAPSES] += 1
    for k in range(m[P_ROOT_LEVEL] - 1, g - 1, -1):
        idx = gfn >> (9 * k)
        if not _table_present(m, root, k, idx):
            _link(m, u, v, root, k, idx)
    li = _leaf(m, root, g, gfn)
    # A mirror leaf remembers its range index (for put at unmap, DEMOTE at split).
    lf[li] = _rix(m, pfn >> 9) + 1 if root == MIRROR and m[P_DPAMT] != 0 else 1
    if g == 1:
        _pbit_set(m, root, gfn, True)
        m[C_LEAVES_4K] += 1
        if root == MIRROR and m[P_DPAMT] != 0:
            while not _get(m, u, pfn, True, v):
                _retry(m, u, v)
    elif g == 2:
        _lbit_set(m, root, 2, gfn, True)
        m[C_LEAVES_2M] += 1
    else:
        _lbit_set(m, root, 3, gfn, True)
        m[C_LEAVES_1G] += 1
    m[G_IN_LOCK] = 0
    _lock_end(u)
    fp = m[G_FPAGES]
    if fp > 16:
        fp = 16
    m[HB + fp] += 1
    # 8.3: latency from the event's start to the fault's end, and its log2 bucket.
    d = u[U_T] - u[U_START]
    _add128(u, U_LAT, d)
    if d > u[U_LAT_MAX]:
        u[U_LAT_MAX] = d
    m[HB_LAT + _lat_bucket(d)] += 1


@njit(**JIT)
def _unmap(m, lf, u, gfn, level, private):
    m[C_UNMAPS] += 1
    root = MIRROR if private else DIRECT
    li = _leaf(m, root, level, gfn)
    if li < 0 or lf[li] == 0:
        m[C_UNMAPS_MISSING] += 1
        return
    r1 = lf[li]
    lf[li] = 0
    if level == 1:
        _pbit_set(m, root, gfn, False)
    else:
        _lbit_set(m, root, level, gfn, False)
    if level == 1 and root == MIRROR and m[P_DPAMT] != 0:
        _put_range(m, u, np.int64(r1) - 1)


@njit(**JIT)
def _split(m, lf, u, gfn, private):
    root = MIRROR if private else DIRECT
    li2 = _leaf(m, root, 2, gfn)
    if li2 < 0 or lf[li2] == 0:
        m[C_UNMAPS_MISSING] += 1
        return
    r2 = lf[li2]
    id2 = gfn >> 9
    _adv(u, u[U_NS_SLAB])  # the new table's header object
    spt_p = _alloc_page(m, u)
    m[C_ALLOC_DIRECT] += 1
    slot = _tslot(m, root, 1, id2)
    if root == MIRROR:
        sept_p = _alloc_page(m, u)
        m[C_ALLOC_DIRECT] += 1
        m[m[O_SSEPT] + slot] = sept_p + 1
        r = np.int64(r2) - 1
        if m[P_DPAMT] != 0:
            _get(m, u, sept_p, False, 0)
            alloc = m[P_STRAT] == S_ALLOC
            was = False
            if alloc:
                was = _cache_only(m, r)
            ri = m[O_REFC] + r
            if m[ri] == 0:
                first = _alloc_page(m, u)
                second = _alloc_page(m, u)
                m[C_ALLOC_DIRECT] += 2
                _install(m, u, r, first, second)
            m[ri] += 512
            if alloc:
                _cache_only_after(m, r, was)
    m[m[O_SSPT] + slot] = spt_p + 1
    lf[li2] = 0
    _lbit_set(m, root, 2, gfn, False)
    base = 512 * slot
    for j in range(512):
        lf[base + j] = r2
    _pbits_block(m, root, 1, id2, -1)
    m[C_SPLITS] += 1


# ---------------------------------------------------------------------------------------
# The chunk loop.


def records_u64(chunk: np.ndarray) -> np.ndarray:
    """A chunk of EVENT_DTYPE records as the flat little-endian u64 words run_chunk reads
    (a view when the chunk is contiguous)."""
    return np.ascontiguousarray(chunk).view("<u8")


@njit(**JIT)
def chunk_valid(rec: np.ndarray, gfn_limit: np.uint64, pfn_limit: np.uint64, tdx: bool) -> bool:
    """Whether every record of a chunk (``records_u64``) passes the event rules of the trace
    format (trace/validate.py), with no event after a vm_destroy inside the chunk: one
    compiled pass instead of numpy's twenty. False only says "look closer": the numpy
    validator then finds the first bad event and words the message."""
    n = rec.shape[0] >> 2
    for i in range(n):
        w3 = rec[4 * i + 3]
        o = (w3 >> SH32) & M8
        if o < OP_VM_CREATE or o > OP_SPLIT or (w3 >> SH48) > U64_ONE:
            return False
        if o == OP_FAULT or o == OP_UNMAP:
            lv = (w3 >> SH40) & M8
            if lv < 1 or lv > 3:
                return False
        if o == OP_FAULT or o == OP_VCPU_CREATE or o == OP_VCPU_DESTROY:
            if (w3 & M32) >= MAX_VCPUS_U:
                return False
        if o == OP_FAULT or o == OP_UNMAP or o == OP_SPLIT:
            if rec[4 * i + 1] >= gfn_limit:
                return False
        if o == OP_FAULT:
            if rec[4 * i + 2] >= pfn_limit or (not tdx and (w3 >> SH48) != U64_ZERO):
                return False
        if o == OP_VM_DESTROY and i + 1 < n:
            return False
    return True


#: The trace digest's constants (defined in trace/digest.py, scheme kvh1), as u64.
DK1 = np.uint64(DIGEST_K1)
DK2 = np.uint64(DIGEST_K2)
DK3 = np.uint64(DIGEST_K3)
DM1 = np.uint64(DIGEST_M1)
DM2 = np.uint64(DIGEST_M2)
SH27 = np.uint64(27)
SH30 = np.uint64(30)
SH31 = np.uint64(31)


@njit(**JIT)
def _dmix(x):
    x ^= x >> SH30
    x *= DM1
    x ^= x >> SH27
    x *= DM2
    return x ^ (x >> SH31)


@njit(**JIT)
def digest_lanes(rec: np.ndarray, first: np.uint64, out: np.ndarray) -> None:
    """The trace digest's two lane sums over ``rec`` (``records_u64``), whose first word is
    word ``first`` of the trace, into ``out[0]`` and ``out[1]`` (see trace/digest.py)."""
    a = out[0]
    b = out[1]
    j = first
    for k in range(rec.shape[0]):
        w = rec[k]
        a += _dmix(w + j * DK1)
        b += _dmix(w ^ (j * DK2 + DK3))
        j += U64_ONE
    out[0] = a
    out[1] = b


@njit(**JIT)
def _tick(m, u, t):
    """Count an event at ts t: ts going backwards, and the idle pages after the previous
    event x the gap to this one (cache_idle_page_ns)."""
    if m[C_EVENTS] > 0:  # not the first event: the gap from the previous one
        last = u[U_LAST_TS]
        if t < last:
            m[C_TS_BACKWARDS] += 1
        elif m[G_IDLE] > 0 and t > last:
            _add_page_ns(u, m[G_IDLE], t - last)
    u[U_LAST_TS] = t
    m[C_EVENTS] += 1


@njit(**JIT)
def _lat_bucket(d):
    """fault_latency bucket of d ns: 0 below 128 ns, then one per power of two up to 31."""
    b = 0
    if d >= LAT_128:
        b = 1
        x = d >> SH7
        while x > U64_ONE and b < 31:
            x >>= U64_ONE
            b += 1
    return b


@njit(**JIT, inline="always")
def _fast_loop(m, lf, u, rec, start, n, any3, ahead):
    """Apply the events of a chunk from index ``start`` on while they take the fast path;
    return the index of the first one that does not (or n). ``any3`` and ``ahead`` are
    constants of each caller (see _fast_run).

    The fast path applies the common events when they take the simple path of the model
    (nothing else of the state changes):
    - a fault of a live vCPU whose top-up would add nothing, on a gfn of the presence
      bitmaps, that is spurious (a leaf of any level covers it) or maps a 4 KiB leaf into
      an existing level-1 table (no link) with a get that takes the refcount fast path;
    - an unmap of a leaf that is missing, or of a present 4 KiB leaf with a fast-path put.
    A present level-1 table excludes a 2 MiB or 1 GiB leaf over it (mirror faults fit
    under tables, direct ones collapse them), so the bitmaps answer the spurious check
    alone. Between general events the cache pages stay idle in the same number, so the
    fast path only tracks where each run of ts that never go backwards starts and ends
    (their gaps sum to the difference) and multiplies once per run.
    Its loop makes no call in the common case and keeps few values alive, so that they
    stay in registers; run_chunk calls it only when no event needs the general path (no
    timeline samples) and the host is dense (a new sparse range index may need the
    driver to grow). The first event of a trace (no gap before it) takes the general path.
    """
    i = np.uint64(start)
    # At most 2^31 events per call, so that the sums kept as counts fit (the event after
    # takes the general path, which gives the same result).
    end = np.uint64(min(n, start + (1 << 31)))
    if m[C_EVENTS] == 0:
        return start
    npw = np.uint64(m[Z_PBITS])
    pb1 = np.uint64(m[O_PBITS])
    pb2 = np.uint64(m[O_PB2])
    pb3 = np.uint64(m[O_PB3])
    l1 = np.uint64(m[O_L1])
    vmap = np.uint64(m[O_VMAP])
    vlive = np.uint64(m[O_VLIVE])
    last = u[U_LAST_TS]
    seg = last  # the first ts of the current run of ts that never go backwards
    n_spurious = 0
    n_new = 0
    n_private = 0
    n_sect = 0
    ns_fault = u[U_NS_FAULT]
    r4 = i << U2
    nw = end << U2
    pfw = np.uint64(4 * m[P_PREFETCH])
    while r4 < nw:
        pf = r4 + PF_WORDS
        PREFETCH(rec, pf if pf < nw else r4)
        if ahead and r4 + pfw < nw:
            j = r4 + pfw
            ga = rec[j + U64_ONE]
            wa = ga >> SH6
            if wa < npw:
                ra = ((rec[j + U3] >> SH48) & U64_ONE) ^ U64_ONE
                PREFETCH(m, pb1 + (wa << U64_ONE) + ra)
                sa = np.uint64(m[l1 + ((ga >> SH9) << U64_ONE) + ra])
                if sa != U64_ZERO:
                    PREFETCH(lf, (sa << SH9) - U512 + (ga & M511))
        w3 = rec[r4 + U3]
        g = rec[r4 + U64_ONE]
        t = rec[r4]
        o = (w3 >> SH32) & M8
        lv = (w3 >> SH40) & M8
        p = (w3 >> SH48) & U64_ONE  # the root: 0 mirror (private), 1 direct
        root = p ^ U64_ONE
        w = g >> SH6
        if w >= npw or lv - U64_ONE > U64_ONE + U64_ONE:
            break
        e2 = g >> SH9
        e3 = g >> SH18
        bit = U64_ONE << (g & M63)
        wi = pb1 + (w << U64_ONE) + root
        b1 = np.uint64(m[wi]) & bit
        b2 = np.uint64(m[pb2 + ((e2 >> SH6) << U64_ONE) + root]) & (U64_ONE << (e2 & M63))
        b3 = U64_ZERO
        if any3:
            b3 = np.uint64(m[pb3 + ((e3 >> SH6) << U64_ONE) + root]) & (U64_ONE << (e3 & M63))
        if o == OP_UNMAP_U:
            if lv != U64_ONE:
                if (b2 if lv == U2 else b3) != U64_ZERO:
                    break
                m[C_UNMAPS_MISSING] += 1
            elif b1 == U64_ZERO:
                m[C_UNMAPS_MISSING] += 1
            else:
                li = (np.uint64(m[l1 + (e2 << U64_ONE) + root]) << SH9) - U512 + (g & M511)
                if p != U64_ZERO and m[P_DPAMT] != 0:
                    x = np.uint64(lf[li]) - U64_ONE
                    ri = np.uint64(m[O_REFC]) + x
                    # Not PAMT.REMOVE, nor a range dpamt-alloc's caches pin.
                    if m[ri] <= 1 or (m[P_STRAT] == S_ALLOC and m[np.uint64(m[O_CACHED]) + x] != 0):
                        break
                    m[ri] -= 1
                    m[C_PUT] += 1
                    m[C_PUT_FAST] += 1
                lf[li] = 0
                m[wi] &= ~np.int64(bit)
            m[C_UNMAPS] += 1
        elif o == OP_FAULT_U:
            vid = w3 & M32
            # A private fault on vmx (an input error) needs no test here: no mirror leaf or
            # table ever exists on vmx, so it is neither spurious nor maps into a table, and
            # leaves for the general path, which reports it.
            if vid >= MAX_VCPUS_U:
                break
            vs = np.uint64(m[vmap + vid])
            # READY: live, and its top-up would add nothing (see the general path).
            if vs == U64_ZERO or m[vlive + vs - U64_ONE] != READY:
                break
            busy = u[NU + vs - U64_ONE]
            if b1 | b2 | b3 != U64_ZERO:
                n_spurious += 1
                if busy > t:
                    _add128(u, U_DELAY, busy - t)
                else:
                    busy = t
            else:
                if lv != U64_ONE:
                    break
                s1 = np.uint64(m[l1 + (e2 << U64_ONE) + root])
                if s1 == U64_ZERO or m[np.uint64(m[O_SSPT]) + s1 - U64_ONE] == 0:
                    break
                x = U64_ZERO
                dp = p != U64_ZERO and m[P_DPAMT] != 0
                if dp:
                    x = rec[r4 + U2] >> SH9
                    ri = np.uint64(m[O_REFC]) + x
                    # Not PAMT.ADD, nor a range dpamt-alloc's caches pin.
                    if m[ri] <= 0 or (m[P_STRAT] == S_ALLOC and m[np.uint64(m[O_CACHED]) + x] != 0):
                        break
                    m[ri] += 1
                    m[C_GET] += 1
                    m[C_GET_FAST] += 1
                lf[(s1 << SH9) - U512 + (g & M511)] = x + U64_ONE
                m[wi] |= np.int64(bit)
                m[C_LEAVES_4K] += 1
                n_new += 1
                if busy > t:
                    _add128(u, U_DELAY, busy - t)
                else:
                    busy = t
                # A locked section of ns_fault alone; no page obtained. Counted when the
                # loop ends (n_sect of them), unless the clock saturates.
                stop = busy + ns_fault
                if stop < busy:
                    stop = U64_MAX
                    d = stop - busy
                    _add128(u, U_LOCKED, d)
                    if d > u[U_LOCKED_MAX]:
                        u[U_LOCKED_MAX] = d
                    _add128(u, U_LAT, d)
                    if d > u[U_LAT_MAX]:
                        u[U_LAT_MAX] = d
                    m[HB] += 1
                    m[HB_LAT + _lat_bucket(d)] += 1
                else:
                    n_sect += 1
                busy = stop
            n_private += np.int64(p)
            u[NU + vs - U64_ONE] = busy
        else:
            break
        # The event's place in time (see _tick): the gaps of a run of ts that never go
        # backwards sum to its last ts minus its first, multiplied when the run ends.
        if t < last:
            m[C_TS_BACKWARDS] += 1
            if m[G_IDLE] > 0:
                _add_page_ns(u, m[G_IDLE], last - seg)
            seg = t
        last = t
        r4 += U64_ONE << U2
    i = r4 >> U2
    n_faults = n_spurious + n_new
    m[C_EVENTS] += np.int64(i - np.uint64(start))
    m[C_FAULTS] += n_faults
    m[C_FAULTS_PRIVATE] += n_private
    m[C_FAULTS_SHARED] += n_faults - n_private
    m[C_FAULTS_SPURIOUS] += n_spurious
    if n_sect != 0:  # n_sect sections of ns_fault each (the product fits: n < 2^32)
        total = np.uint64(n_sect) * ns_fault
        _add128(u, U_LOCKED, total)
        _add128(u, U_LAT, total)
        if ns_fault > u[U_LOCKED_MAX]:
            u[U_LOCKED_MAX] = ns_fault
        if ns_fault > u[U_LAT_MAX]:
            u[U_LAT_MAX] = ns_fault
        m[HB] += n_sect
        m[HB_LAT + _lat_bucket(ns_fault)] += n_sect
    if last != seg and m[G_IDLE] > 0:
        _add_page_ns(u, m[G_IDLE], last - seg)
    u[U_LAST_TS] = last
    return np.int64(i)


@njit(**JIT)
def _fast_00(m, lf, u, rec, start, n):
    return _fast_loop(m, lf, u, rec, start, n, False, False)


@njit(**JIT)
def _fast_01(m, lf, u, rec, start, n):
    return _fast_loop(m, lf, u, rec, start, n, False, True)


@njit(**JIT)
def _fast_10(m, lf, u, rec, start, n):
    return _fast_loop(m, lf, u, rec, start, n, True, False)


@njit(**JIT)
def _fast_11(m, lf, u, rec, start, n):
    return _fast_loop(m, lf, u, rec, start, n, True, True)


@njit(**JIT)
def _fast_run(m, lf, u, rec, start, n):
    """_fast_loop compiled for what stays the same during a run of fast events, so that the
    loop tests neither: whether any 1 GiB leaf is present (a few words of its bitmap; if
    none, the loop does not read that bitmap), and whether to prefetch each event's model
    state some records ahead (P_PREFETCH: on a large guest, see state.py, the bitmap words
    and leaves of the working set miss the caches, and prefetching the 4 KiB bitmap word
    and the 4 KiB leaf of the event P_PREFETCH records on overlaps the misses)."""
    any3 = False
    for k in range(2 * m[Z_PB3]):
        if m[m[O_PB3] + k] != 0:
            any3 = True
    if m[P_PREFETCH] != 0:
        if any3:
            return _fast_11(m, lf, u, rec, start, n)
        return _fast_01(m, lf, u, rec, start, n)
    if any3:
        return _fast_10(m, lf, u, rec, start, n)
    return _fast_00(m, lf, u, rec, start, n)


@njit(**JIT)
def run_chunk(
    m: np.ndarray,
    lf: np.ndarray,
    u: np.ndarray,
    rec: np.ndarray,
    start: int,
) -> tuple[int, int]:
    """Replay events [start, len) of one chunk. Returns (status, index in chunk).

    ``rec`` is the chunk's 32-byte records as little-endian u64 words, four per event
    (``records_u64``): ts, gfn, pfn, then vcpu | op << 32 | level << 40 | flags << 48. One
    flat array keeps the loop's pointers and strides in registers.

    Status ST_OK: chunk done. ST_GROW_*: the driver must enlarge a region and call again
    from the returned index (nothing of that event has been applied). ST_SAMPLES_FULL:
    flush the timeline samples and call again from the index. ST_ERROR: m[G_ERR] says
    why; the event at the returned index is invalid (or exhausted the kernel region).
    """
    nv = m[P_NVCPU]
    tdx = m[P_TDX] != 0
    every = m[P_SAMPLE_EVERY]
    # Sizes and offsets only the driver changes (between calls): kept out of the loop, whose
    # stores to m the compiler cannot tell apart from them.
    vmap = m[O_VMAP]
    kmax = m[P_FSTACK] - m[P_GROW_MARGIN]
    smax = m[Z_SLOTS] - SLOT_MARGIN
    # Sparse range indices one event can give out, at most: one per page it allocates, plus
    # the leaf's and the split guest range's.
    rmax = m[Z_NRANGES] - m[P_GROW_MARGIN] - 4 if m[Z_RSPARSE] != 0 else m[Z_NRANGES]
    nsmax = m[P_NSAMPLES]
    fast = every == 0 and m[Z_RSPARSE] == 0
    n = rec.shape[0] >> 2
    i = start
    while i < n:
        if fast:
            i = _fast_run(m, lf, u, rec, i, n)
            if i >= n:
                break
        r4 = 4 * i
        PREFETCH(rec, min(r4 + 4 * PF_EVENTS, 4 * n - 1))
        w3 = rec[r4 + 3]
        o = np.int64((w3 >> SH32) & M8)
        uses_vcpu = o == OP_FAULT or o == OP_VCPU_CREATE or o == OP_VCPU_DESTROY
        v = 0
        if uses_vcpu:
            vid = np.int64(w3 & M32)
            if vid >= MAX_VCPUS:
                m[G_ERR] = E_BAD_VCPU
                return ST_ERROR, i
            vi = vmap + vid
            if m[vi] == 0:
                if m[G_NVSLOTS] >= nv:
                    return ST_GROW_VCPUS, i
                m[G_NVSLOTS] += 1
                m[vi] = m[G_NVSLOTS]
            v = m[vi] - 1
        if m[G_K] > kmax:
            return ST_GROW_FSTACK, i
        if m[G_NSLOTS] > smax:
            return ST_GROW_TABLES, i
        if m[G_NRANGES] > rmax:
            return ST_GROW_RANGES, i
        if every > 0 and m[G_NSAMPLES] >= nsmax:
            return ST_SAMPLES_FULL, i
        private = (w3 >> SH48) & U64_ONE != U64_ZERO
        # Input errors that the model defines (sections 5, 7).
        if m[G_VM] == 2:
            m[G_ERR] = E_AFTER_DESTROY
            return ST_ERROR, i
        if o == OP_FAULT and private and not tdx:
            m[G_ERR] = E_PRIVATE_VMX
            return ST_ERROR, i
        if o == OP_VCPU_CREATE and m[m[O_VLIVE] + v] != 0:
            m[G_ERR] = E_VCPU_LIVE
            m[G_ERR_ARG] = np.int64(w3 & M32)
            return ST_ERROR, i
        if o == OP_VM_CREATE and m[G_VM] != 0:
            m[G_ERR] = E_VM_EXISTS
            return ST_ERROR, i
        if o < OP_VM_CREATE or o > OP_SPLIT:
            m[G_ERR] = E_BAD_OP
            m[G_ERR_ARG] = o
            return ST_ERROR, i
        t = rec[r4]
        _tick(m, u, t)
        # 8.1: the event starts at its ts, or when its vCPU is next free.
        start = t
        if uses_vcpu and m[m[O_VLIVE] + v] != 0:
            busy = u[N_U + v]
            if busy > t:
                start = busy
                _add128(u, U_DELAY, busy - t)
        u[U_T] = start
        u[U_START] = start
        if o == OP_FAULT:
            lv = np.int64((w3 >> SH40) & M8)
            _fault(m, lf, u, v, np.int64(rec[r4 + 1]), np.int64(rec[r4 + 2]), lv, private)
            u[N_U + v] = u[U_T]
        elif o == OP_UNMAP:
            _unmap(m, lf, u, np.int64(rec[r4 + 1]), np.int64((w3 >> SH40) & M8), private)
        elif o == OP_SPLIT:
            _split(m, lf, u, np.int64(rec[r4 + 1]), private)
        elif o == OP_VCPU_CREATE:
            _vcpu_create(m, u, v)
            u[N_U + v] = u[U_T]
        elif o == OP_VCPU_DESTROY:
            if m[m[O_VLIVE] + v] == 0:
                _vcpu_create(m, u, v)
            _vcpu_destroy(m, u, v)
        elif o == OP_VM_CREATE:
            _vm_create(m, u)
        else:
            _vm_destroy(m, lf, u)
        if uses_vcpu:
            # The fast path takes this vCPU's faults while it is READY: live, with every
            # cache at or above its minimum. Only its own events change its caches (a VM
            # destroy ends every vCPU), so this is the one place the mark can change.
            at = m[O_VLIVE] + v
            if m[at] != 0:
                m[at] = LIVE if _needs_topup(m, v) else READY
        if m[G_ERR] != E_NONE:
            return ST_ERROR, i
        if every > 0 and m[C_EVENTS] % every == 0:
            _sample(m, t)
        i += 1
    return ST_OK, n


@njit(**JIT)
def _sample(m, t):
    row = m[O_SAMPLES] + m[G_NSAMPLES] * N_T
    m[row + T_INDEX] = m[C_EVENTS]
    m[row + T_TS] = np.int64(t)
    m[row + T_LIVE] = m[G_LIVE]
    m[row + T_IDLE] = m[G_IDLE]
    m[row + T_PAIRS] = m[G_PAIRS]
    m[row + T_UNDER_LOCK] = m[C_UNDER_LOCK]
    m[row + T_RETRIES] = m[C_RETRIES]
    m[row + T_ALLOCATED] = m[C_PAGES_ALLOCATED]
    m[G_NSAMPLES] += 1


@njit(**JIT)
def final_sample(m: np.ndarray, u: np.ndarray) -> bool:
    """A timeline row for the end of the trace (before teardown) unless one was just taken."""
    if m[C_EVENTS] == 0 or m[G_NSAMPLES] >= m[P_NSAMPLES]:
        return False
    every = m[P_SAMPLE_EVERY]
    if every > 0 and m[C_EVENTS] % every == 0:
        return False
    _sample(m, u[U_LAST_TS])
    return True


@njit(**JIT)
def finish(m: np.ndarray, lf: np.ndarray, u: np.ndarray, teardown: bool) -> int:
    """End of trace: snapshot the ``*_end`` counters, then tear the VM down if asked."""
    for k in range(5):
        m[C_CACHE0 + 6 * k + CF_END] = m[G_HELD + k]
    m[C_PAIRS_END] = m[G_PAIRS]
    m[C_IDLE_END] = m[G_IDLE]
    m[G_LAYOUT] = LAYOUT
    if teardown and m[G_VM] == 1:
        u[U_T] = u[U_LAST_TS]  # 8.1: the teardown starts at the last event's ts
        _vm_destroy(m, lf, u)
    return m[G_ERR]
