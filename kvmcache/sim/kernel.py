"""The numba model of MODEL.md: one jitted pass over a chunk of events.

Everything here is ``@njit(cache=True, nogil=True)`` over preallocated numpy arrays held
in the :class:`State` namedtuple (built by ``state.py``). Section numbers in comments
refer to MODEL.md. No file I/O, no Python objects in the hot loop.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from kvmcache.sim.counters import COUNTERS

# ---------------------------------------------------------------------------------------
# Layout constants (module globals are compile-time constants for numba).

# Strategies (index into counters.STRATEGIES).
S_NONE = 0
S_INSTALL = 1
S_ALLOC = 2
S_PAIR = 3
S_PREALLOC = 4

# Caches (index into counters.CACHES and the per-vCPU count array).
K_DESC = 0
K_HEADER = 1
K_SPT = 2
K_SEPT = 3
K_PAMT = 4

# Roots.
MIRROR = 0
DIRECT = 1

# Parameters array P.
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
N_P = 24

# Scalars array G.
G_K = 0  # fresh-page counter
G_FREE_TOP = 1
G_VM = 2  # 0 no VM yet, 1 live, 2 destroyed
G_ROOTS = 3
G_ROOT_SPT_M = 4
G_ROOT_SPT_D = 5
G_HAVE_TS = 6
G_IDLE = 7  # idle cache pages now
G_HELD = 8  # .. 12: objects held per cache now
G_LIVE = 13  # pages allocated - freed
G_PAIRS = 14  # ranges with refcount > 0
G_CACHE_ONLY = 15  # ranges with refcount == cached_refs > 0
G_IN_LOCK = 16
G_FPAGES = 17  # pages obtained by the current locked section
G_ERR = 18
G_ERR_INDEX = 19
G_ERR_ARG = 20
G_EVENTS = 21  # events processed so far (global index of the next event)
G_NSAMPLES = 22  # timeline samples written in this chunk
N_G = 24

# Unsigned scalars array U.
U_LAST_TS = 0
U_NS_LO = 1
U_NS_HI = 2
N_U = 4

# Kernel return statuses.
ST_OK = 0
ST_GROW_VCPUS = 1
ST_GROW_FSTACK = 2
ST_SAMPLES_FULL = 3
ST_ERROR = 9

# Error codes (G[G_ERR]).
E_NONE = 0
E_PRIVATE_VMX = 1
E_VCPU_LIVE = 2
E_VM_EXISTS = 3
E_AFTER_DESTROY = 4
E_KERNEL_PAGES = 5
E_BAD_OP = 6

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

# Event ops (INTERFACES.md section 1).
OP_VM_CREATE = 1
OP_VM_DESTROY = 2
OP_VCPU_CREATE = 3
OP_VCPU_DESTROY = 4
OP_FAULT = 5
OP_UNMAP = 6
OP_SPLIT = 7

# Counter indices.
_I = {name: i for i, name in enumerate(COUNTERS)}
N_COUNTERS = len(COUNTERS)
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
C_IDLE_NS = _I["cache_idle_page_ns"]
C_TS_BACKWARDS = _I["ts_backwards"]
C_UNDERFLOW = _I["refcount_underflow"]
C_LEAKED = _I["leaked_ranges"]
assert _I["desc_topups"] + 6 * 5 - 1 == _I["pamt_held_end"]

M32 = np.uint64(0xFFFFFFFF)
SH32 = np.uint64(32)
U64_ONE = np.uint64(1)

#: The whole mutable model, one namedtuple of arrays (see state.py for shapes).
State = namedtuple(
    "State",
    [
        "P",  # int64[N_P] parameters and sizes
        "G",  # int64[N_G] scalars
        "U",  # uint64[N_U] unsigned scalars (timestamps, 128-bit page-ns)
        "C",  # int64[N_COUNTERS]
        "H",  # int64[17] fault_pages histogram
        "vlive",  # uint8[nv]
        "vcnt",  # int64[nv, 5] objects per cache
        "spt",  # int64[nv, capacity]
        "sept",  # int64[nv, 3 * capacity]: object j at 3j (page), 3j+1, 3j+2 (pair)
        "pamt",  # int64[nv, pamt target]
        "vctrl",  # int64[nv, tdvpr + tdcx]
        "tdctrl",  # int64[tdr + tdcs]
        "fstack",  # int64[free stack capacity]
        "refc",  # int64[nranges]
        "pair",  # int64[nranges, 2]
        "cached",  # int64[nranges] (dpamt-alloc)
        "toff",  # int64[8]: offset of level k tables in the flat table arrays
        "tspt",  # int64[2, ntables]: spt pfn + 1 of each table (0 = absent)
        "tsept",  # int64[ntables]: S-EPT pfn + 1 of each mirror table
        "leaf1",  # uint32[2, n1]: range + 1 of each 4 KiB leaf (0 = absent)
        "leaf2",  # uint32[2, n2]: range + 1 of each 2 MiB leaf
        "leaf3",  # uint8[2, n3]
        "samples",  # int64[nsamples, N_T] timeline samples (may be 0 rows)
    ],
)


# ---------------------------------------------------------------------------------------
# Small helpers: peaks, the 128-bit page-ns accumulator.


@njit(cache=True, nogil=True)
def _peak(C, idx, value):
    if value > C[idx]:
        C[idx] = value


@njit(cache=True, nogil=True)
def _add_page_ns(U, pages, gap):
    """U[hi:lo] += pages * gap exactly (64 x 64 -> 128-bit product, two-word sum)."""
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
    new_lo = U[U_NS_LO] + lower
    carry = np.uint64(0)
    if new_lo < lower:
        carry = U64_ONE
    U[U_NS_LO] = new_lo
    U[U_NS_HI] = U[U_NS_HI] + upper + carry


# ---------------------------------------------------------------------------------------
# Host allocator (section 4).


@njit(cache=True, nogil=True)
def _alloc_page(s):
    G = s.G
    P = s.P
    top = G[G_FREE_TOP]
    if top > 0:
        top -= 1
        G[G_FREE_TOP] = top
        pfn = s.fstack[top]
    else:
        k = G[G_K]
        sp = P[P_SPREAD]
        pfn = P[P_KBASE] + 512 * (k % sp + sp * (k // (512 * sp))) + (k // sp) % 512
        if pfn >= P[P_KBASE] + P[P_KPAGES]:
            if G[G_ERR] == E_NONE:
                G[G_ERR] = E_KERNEL_PAGES
                G[G_ERR_ARG] = pfn
            pfn = P[P_KBASE]  # keep going with a harmless page; the replay stops after this event
        G[G_K] = k + 1
    s.C[C_PAGES_ALLOCATED] += 1
    G[G_LIVE] += 1
    _peak(s.C, C_LIVE_PEAK, G[G_LIVE])
    return pfn


@njit(cache=True, nogil=True)
def _free_page(s, pfn):
    G = s.G
    s.fstack[G[G_FREE_TOP]] = pfn
    G[G_FREE_TOP] += 1
    s.C[C_PAGES_FREED] += 1
    G[G_LIVE] -= 1


# ---------------------------------------------------------------------------------------
# DPAMT refcounts (section 5.3). cache_only tracking is for dpamt-alloc only.


@njit(cache=True, nogil=True)
def _cache_only(s, r):
    c = s.cached[r]
    return c > 0 and s.refc[r] == c


@njit(cache=True, nogil=True)
def _cache_only_after(s, r, was):
    now = _cache_only(s, r)
    if now != was:
        if now:
            s.G[G_CACHE_ONLY] += 1
            _peak(s.C, C_CACHE_ONLY_PEAK, s.G[G_CACHE_ONLY])
        else:
            s.G[G_CACHE_ONLY] -= 1


@njit(cache=True, nogil=True)
def _install(s, r, first, second):
    """PAMT.ADD of a pair for range r (refcount 0 -> 1)."""
    C = s.C
    s.pair[r, 0] = first
    s.pair[r, 1] = second
    C[C_ADD] += 1
    C[C_LOCK] += 1
    s.G[G_PAIRS] += 1
    _peak(C, C_PAIRS_PEAK, s.G[G_PAIRS])
    if s.G[G_IN_LOCK] != 0:
        C[C_SEAM_LOCKED] += 1


@njit(cache=True, nogil=True)
def _pop_pamt(s, v):
    n = s.vcnt[v, K_PAMT] - 1
    s.vcnt[v, K_PAMT] = n
    s.G[G_HELD + K_PAMT] -= 1
    s.G[G_IDLE] -= 1
    s.C[C_CACHE0 + 6 * K_PAMT + CF_CONSUMED] += 1
    s.G[G_FPAGES] += 1
    return s.pamt[v, n]


@njit(cache=True, nogil=True)
def _get(s, pfn, use_cache, v):
    """get(pfn, cache): False when the vCPU cache could not supply a pair (retry)."""
    C = s.C
    C[C_GET] += 1
    r = pfn >> 9
    alloc = s.P[P_STRAT] == S_ALLOC
    was = False
    if alloc:
        was = _cache_only(s, r)
    if s.refc[r] > 0:
        s.refc[r] += 1
        C[C_GET_FAST] += 1
        if alloc:
            _cache_only_after(s, r, was)
        return True
    if use_cache:
        if s.vcnt[v, K_PAMT] < 2:
            while s.vcnt[v, K_PAMT] > 0:
                _free_page(s, _pop_pamt(s, v))
            C[C_RETRIES] += 1
            return False
        first = _pop_pamt(s, v)
        second = _pop_pamt(s, v)
    else:
        first = _alloc_page(s)
        second = _alloc_page(s)
        C[C_ALLOC_DIRECT] += 2
        if s.G[G_IN_LOCK] != 0:
            s.G[G_FPAGES] += 2
    s.refc[r] = 1
    _install(s, r, first, second)
    if alloc:
        _cache_only_after(s, r, was)
    return True


@njit(cache=True, nogil=True)
def _put_range(s, r):
    C = s.C
    C[C_PUT] += 1
    if s.refc[r] == 0:
        C[C_UNDERFLOW] += 1
        return
    alloc = s.P[P_STRAT] == S_ALLOC
    was = False
    if alloc:
        was = _cache_only(s, r)
    if s.refc[r] > 1:
        s.refc[r] -= 1
        C[C_PUT_FAST] += 1
    else:
        s.refc[r] = 0
        C[C_REMOVE] += 1
        C[C_LOCK] += 1
        s.G[G_PAIRS] -= 1
        _free_page(s, s.pair[r, 0])
        _free_page(s, s.pair[r, 1])
    if alloc:
        _cache_only_after(s, r, was)


@njit(cache=True, nogil=True)
def _cached_add(s, r, delta):
    was = _cache_only(s, r)
    s.cached[r] += delta
    _cache_only_after(s, r, was)


# ---------------------------------------------------------------------------------------
# Caches: top-up (5.1) and consume (5.2).


@njit(cache=True, nogil=True)
def _held_push(s, k, pages):
    G = s.G
    G[G_HELD + k] += 1
    _peak(s.C, C_CACHE0 + 6 * k + CF_PEAK, G[G_HELD + k])
    if pages > 0:
        G[G_IDLE] += pages
        _peak(s.C, C_IDLE_PEAK, G[G_IDLE])


@njit(cache=True, nogil=True)
def _topup_slab(s, v, k, minimum):
    n = s.vcnt[v, k]
    if n < minimum:
        cap = s.P[P_CAPACITY]
        base = C_CACHE0 + 6 * k
        s.C[base + CF_TOPUPS] += 1
        while n < cap:
            n += 1
            s.vcnt[v, k] = n
            s.C[base + CF_ALLOCATED] += 1
            _held_push(s, k, 0)


@njit(cache=True, nogil=True)
def _topup(s, v):
    P = s.P
    C = s.C
    strat = P[P_STRAT]
    tdx = P[P_TDX] != 0
    cap = P[P_CAPACITY]
    # 1. desc
    _topup_slab(s, v, K_DESC, P[P_MIN_DESC])
    # 2. sept (TDX only, not dpamt-prealloc)
    if tdx and strat != S_PREALLOC:
        n = s.vcnt[v, K_SEPT]
        if n < P[P_MIN_SEPT]:
            base = C_CACHE0 + 6 * K_SEPT
            C[base + CF_TOPUPS] += 1
            while n < cap:
                p = _alloc_page(s)
                pages = 1
                if strat == S_ALLOC:
                    _get(s, p, False, v)
                    _cached_add(s, p >> 9, 1)
                    s.sept[v, 3 * n] = p
                elif strat == S_PAIR:
                    q0 = _alloc_page(s)
                    q1 = _alloc_page(s)
                    s.sept[v, 3 * n] = p
                    s.sept[v, 3 * n + 1] = q0
                    s.sept[v, 3 * n + 2] = q1
                    pages = 3
                else:
                    s.sept[v, 3 * n] = p
                n += 1
                s.vcnt[v, K_SEPT] = n
                C[base + CF_ALLOCATED] += 1
                _held_push(s, K_SEPT, pages)
    # 3. pamt (or the dpamt-prealloc shared list)
    if tdx and strat != S_NONE:
        target = P[P_PAMT_TARGET]
        n = s.vcnt[v, K_PAMT]
        if n < target:
            base = C_CACHE0 + 6 * K_PAMT
            C[base + CF_TOPUPS] += 1
            while n < target:
                s.pamt[v, n] = _alloc_page(s)
                n += 1
                s.vcnt[v, K_PAMT] = n
                C[base + CF_ALLOCATED] += 1
                _held_push(s, K_PAMT, 1)
    # 4. spt
    n = s.vcnt[v, K_SPT]
    if n < P[P_MIN_SPT]:
        base = C_CACHE0 + 6 * K_SPT
        C[base + CF_TOPUPS] += 1
        while n < cap:
            s.spt[v, n] = _alloc_page(s)
            n += 1
            s.vcnt[v, K_SPT] = n
            C[base + CF_ALLOCATED] += 1
            _held_push(s, K_SPT, 1)
    # 5. header
    _topup_slab(s, v, K_HEADER, P[P_MIN_HEADER])


@njit(cache=True, nogil=True)
def _consume_header(s, v):
    n = s.vcnt[v, K_HEADER]
    if n > 0:
        s.vcnt[v, K_HEADER] = n - 1
        s.G[G_HELD + K_HEADER] -= 1
        s.C[C_CACHE0 + 6 * K_HEADER + CF_CONSUMED] += 1
    else:
        s.C[C_UNDER_LOCK] += 1


@njit(cache=True, nogil=True)
def _consume_spt(s, v):
    n = s.vcnt[v, K_SPT]
    s.G[G_FPAGES] += 1
    if n > 0:
        n -= 1
        s.vcnt[v, K_SPT] = n
        s.G[G_HELD + K_SPT] -= 1
        s.G[G_IDLE] -= 1
        s.C[C_CACHE0 + 6 * K_SPT + CF_CONSUMED] += 1
        return s.spt[v, n]
    s.C[C_UNDER_LOCK] += 1
    return _alloc_page(s)


# ---------------------------------------------------------------------------------------
# The TDP MMU tree (section 1): tables per (root, level, index), leaves per level.


@njit(cache=True, nogil=True)
def _table_present(s, root, k, idx):
    return s.tspt[root, s.toff[k] + idx] != 0


@njit(cache=True, nogil=True)
def _retry(s, v):
    """A failed get inside a fault: drop the lock, top up every cache, retake the lock."""
    s.G[G_IN_LOCK] = 0
    _topup(s, v)
    s.G[G_IN_LOCK] = 1


@njit(cache=True, nogil=True)
def _link(s, v, root, k, idx):
    """Link table (root, k, idx) below its parent inside a fault (5.4 step 5)."""
    P = s.P
    C = s.C
    strat = P[P_STRAT]
    _consume_header(s, v)
    spt_p = _consume_spt(s, v)
    if root == MIRROR:
        if strat == S_PREALLOC:
            n = s.vcnt[v, K_PAMT]
            if n > 0:
                sept_p = _pop_pamt(s, v)
            else:
                C[C_UNDER_LOCK] += 1
                sept_p = _alloc_page(s)
                s.G[G_FPAGES] += 1
            while not _get(s, sept_p, True, v):
                _retry(s, v)
        else:
            n = s.vcnt[v, K_SEPT]
            pair_obj = strat == S_PAIR
            q0 = 0
            q1 = 0
            if n > 0:
                n -= 1
                s.vcnt[v, K_SEPT] = n
                s.G[G_HELD + K_SEPT] -= 1
                C[C_CACHE0 + 6 * K_SEPT + CF_CONSUMED] += 1
                sept_p = s.sept[v, 3 * n]
                if pair_obj:
                    q0 = s.sept[v, 3 * n + 1]
                    q1 = s.sept[v, 3 * n + 2]
                    s.G[G_IDLE] -= 3
                    s.G[G_FPAGES] += 3
                else:
                    s.G[G_IDLE] -= 1
                    s.G[G_FPAGES] += 1
                if strat == S_ALLOC:
                    _cached_add(s, sept_p >> 9, -1)
            else:
                C[C_UNDER_LOCK] += 1
                sept_p = _alloc_page(s)
                s.G[G_FPAGES] += 1
                if pair_obj:
                    q0 = _alloc_page(s)
                    q1 = _alloc_page(s)
                    s.G[G_FPAGES] += 2
                elif strat == S_ALLOC:
                    _get(s, sept_p, False, v)
            if strat == S_INSTALL:
                while not _get(s, sept_p, True, v):
                    _retry(s, v)
            elif pair_obj:
                C[C_GET] += 1
                r = sept_p >> 9
                if s.refc[r] > 0:
                    s.refc[r] += 1
                    C[C_GET_FAST] += 1
                    C[C_DISCARDED] += 1
                    _free_page(s, q0)
                    _free_page(s, q1)
                else:
                    s.refc[r] = 1
                    _install(s, r, q0, q1)
        s.tsept[s.toff[k] + idx] = sept_p + 1
        C[C_LINKED_MIRROR] += 1
    else:
        C[C_LINKED_DIRECT] += 1
    s.tspt[root, s.toff[k] + idx] = spt_p + 1


@njit(cache=True, nogil=True)
def _free_table(s, root, k, idx):
    """Free one table (collapse or teardown): put and free its S-EPT page, free its spt page."""
    off = s.toff[k] + idx
    if root == MIRROR:
        sept_p = s.tsept[off] - 1
        if s.P[P_DPAMT] != 0:
            _put_range(s, sept_p >> 9)
        _free_page(s, sept_p)
        s.tsept[off] = 0
    _free_page(s, s.tspt[root, off] - 1)
    s.tspt[root, off] = 0
    s.C[C_TABLES_FREED] += 1


@njit(cache=True, nogil=True)
def _zap_direct(s, g, gfn):
    """Zap the direct subtree under the level-g entry for gfn (5.9): g is 2 or 3."""
    if g == 2:
        t1 = gfn >> 9
        for j in range(t1 * 512, t1 * 512 + 512):
            s.leaf1[DIRECT, j] = 0
        _free_table(s, DIRECT, 1, t1)
    else:
        t2 = gfn >> 18
        for t1 in range(t2 * 512, t2 * 512 + 512):
            if _table_present(s, DIRECT, 1, t1):
                for j in range(t1 * 512, t1 * 512 + 512):
                    s.leaf1[DIRECT, j] = 0
        for j in range(t2 * 512, t2 * 512 + 512):
            s.leaf2[DIRECT, j] = 0
        for t1 in range(t2 * 512, t2 * 512 + 512):
            if _table_present(s, DIRECT, 1, t1):
                _free_table(s, DIRECT, 1, t1)
        _free_table(s, DIRECT, 2, t2)


# ---------------------------------------------------------------------------------------
# VM and vCPU lifetime (5.7, 5.8, 5.10, 5.11).


@njit(cache=True, nogil=True)
def _vm_create(s):
    P = s.P
    s.G[G_VM] = 1
    if P[P_TDX] != 0:
        for i in range(P[P_TDR] + P[P_TDCS]):
            p = _alloc_page(s)
            s.C[C_ALLOC_DIRECT] += 1
            s.tdctrl[i] = p
            if P[P_DPAMT] != 0:
                _get(s, p, False, 0)


@njit(cache=True, nogil=True)
def _take_root(s, v):
    _consume_header(s, v)
    return _consume_spt(s, v)


@njit(cache=True, nogil=True)
def _vcpu_create(s, v):
    P = s.P
    if s.G[G_VM] == 0:
        _vm_create(s)
    if P[P_TDX] != 0:
        for i in range(P[P_TDVPR] + P[P_TDCX]):
            p = _alloc_page(s)
            s.C[C_ALLOC_DIRECT] += 1
            s.vctrl[v, i] = p
            if P[P_DPAMT] != 0:
                _get(s, p, False, v)
    s.vlive[v] = 1
    _topup(s, v)
    if s.G[G_ROOTS] == 0:
        if P[P_TDX] != 0:
            s.G[G_ROOT_SPT_M] = _take_root(s, v)
        s.G[G_ROOT_SPT_D] = _take_root(s, v)
        s.G[G_ROOTS] = 1
    s.C[C_VCPUS_CREATED] += 1


@njit(cache=True, nogil=True)
def _vcpu_destroy(s, v):
    P = s.P
    C = s.C
    G = s.G
    strat = P[P_STRAT]
    # slab caches: counts only
    for k in (K_DESC, K_HEADER):
        n = s.vcnt[v, k]
        C[C_CACHE0 + 6 * k + CF_FREED] += n
        G[G_HELD + k] -= n
        s.vcnt[v, k] = 0
    # spt, newest first
    n = s.vcnt[v, K_SPT]
    while n > 0:
        n -= 1
        s.vcnt[v, K_SPT] = n
        G[G_HELD + K_SPT] -= 1
        G[G_IDLE] -= 1
        C[C_CACHE0 + 6 * K_SPT + CF_FREED] += 1
        _free_page(s, s.spt[v, n])
    # sept, newest first
    n = s.vcnt[v, K_SEPT]
    while n > 0:
        n -= 1
        s.vcnt[v, K_SEPT] = n
        G[G_HELD + K_SEPT] -= 1
        C[C_CACHE0 + 6 * K_SEPT + CF_FREED] += 1
        p = s.sept[v, 3 * n]
        if strat == S_PAIR:
            G[G_IDLE] -= 3
            _free_page(s, p)
            _free_page(s, s.sept[v, 3 * n + 1])
            _free_page(s, s.sept[v, 3 * n + 2])
        else:
            G[G_IDLE] -= 1
            if strat == S_ALLOC:
                _cached_add(s, p >> 9, -1)
                _put_range(s, p >> 9)
            _free_page(s, p)
    # pamt (or the shared list), newest first
    n = s.vcnt[v, K_PAMT]
    while n > 0:
        n -= 1
        s.vcnt[v, K_PAMT] = n
        G[G_HELD + K_PAMT] -= 1
        G[G_IDLE] -= 1
        C[C_CACHE0 + 6 * K_PAMT + CF_FREED] += 1
        _free_page(s, s.pamt[v, n])
    # control pages, in allocation order
    if P[P_TDX] != 0:
        for i in range(P[P_TDVPR] + P[P_TDCX]):
            p = s.vctrl[v, i]
            if P[P_DPAMT] != 0:
                _put_range(s, p >> 9)
            _free_page(s, p)
    s.vlive[v] = 0
    C[C_VCPUS_DESTROYED] += 1


@njit(cache=True, nogil=True)
def _vm_destroy(s):
    P = s.P
    G = s.G
    C = s.C
    if G[G_VM] != 1:
        G[G_VM] = 2
        return
    for v in range(s.vlive.shape[0]):
        if s.vlive[v] != 0:
            _vcpu_destroy(s, v)
    L = P[P_ROOT_LEVEL]
    dpamt = P[P_DPAMT] != 0
    # Remove every leaf; private 4 KiB leaves put their range. Leaves live under tables.
    for root in (MIRROR, DIRECT):
        n1 = s.toff[2] - s.toff[1]
        for t1 in range(n1):
            if _table_present(s, root, 1, t1):
                for j in range(t1 * 512, t1 * 512 + 512):
                    r1 = s.leaf1[root, j]
                    if r1 != 0:
                        s.leaf1[root, j] = 0
                        if root == MIRROR and dpamt:
                            _put_range(s, np.int64(r1) - 1)
        n2 = s.toff[3] - s.toff[2]
        for t2 in range(n2):
            if _table_present(s, root, 2, t2):
                for j in range(t2 * 512, t2 * 512 + 512):
                    s.leaf2[root, j] = 0
        n3 = s.toff[4] - s.toff[3]
        for t3 in range(n3):
            if _table_present(s, root, 3, t3):
                for j in range(t3 * 512, t3 * 512 + 512):
                    s.leaf3[root, j] = 0
    # Free every table, deepest level first, ascending index, mirror before direct.
    for k in range(1, L):
        nk = s.toff[k + 1] - s.toff[k]
        for idx in range(nk):
            for root in (MIRROR, DIRECT):
                if _table_present(s, root, k, idx):
                    _free_table(s, root, k, idx)
    if G[G_ROOTS] != 0:
        if P[P_TDX] != 0:
            _free_page(s, G[G_ROOT_SPT_M])
            C[C_TABLES_FREED] += 1
        _free_page(s, G[G_ROOT_SPT_D])
        C[C_TABLES_FREED] += 1
        G[G_ROOTS] = 0
    if P[P_TDX] != 0:
        for i in range(P[P_TDR] + P[P_TDCS]):
            p = s.tdctrl[i]
            if dpamt:
                _put_range(s, p >> 9)
            _free_page(s, p)
    leaked = 0
    for r in range(s.refc.shape[0]):
        if s.refc[r] != 0:
            leaked += 1
    C[C_LEAKED] = leaked
    G[G_VM] = 2


# ---------------------------------------------------------------------------------------
# Events (5.4, 5.5, 5.6).


@njit(cache=True, nogil=True)
def _fault(s, v, gfn, pfn, g, private):
    P = s.P
    C = s.C
    G = s.G
    C[C_FAULTS] += 1
    if private:
        C[C_FAULTS_PRIVATE] += 1
    else:
        C[C_FAULTS_SHARED] += 1
    if s.vlive[v] == 0:
        _vcpu_create(s, v)
    _topup(s, v)
    root = MIRROR if private else DIRECT
    if s.leaf1[root, gfn] != 0 or s.leaf2[root, gfn >> 9] != 0 or s.leaf3[root, gfn >> 18] != 0:
        C[C_FAULTS_SPURIOUS] += 1
        return
    G[G_IN_LOCK] = 1
    G[G_FPAGES] = 0
    if g > 1:
        if root == MIRROR:
            adjusted = False
            while g > 1 and _table_present(s, MIRROR, g - 1, gfn >> (9 * (g - 1))):
                g -= 1
                adjusted = True
            if adjusted:
                C[C_LEVEL_ADJ] += 1
        elif _table_present(s, DIRECT, g - 1, gfn >> (9 * (g - 1))):
            _zap_direct(s, g, gfn)
            C[C_COLLAPSES] += 1
    for k in range(P[P_ROOT_LEVEL] - 1, g - 1, -1):
        idx = gfn >> (9 * k)
        if not _table_present(s, root, k, idx):
            _link(s, v, root, k, idx)
    r = pfn >> 9
    if g == 1:
        s.leaf1[root, gfn] = r + 1
        C[C_LEAVES_4K] += 1
        if root == MIRROR and P[P_DPAMT] != 0:
            while not _get(s, pfn, True, v):
                _retry(s, v)
    elif g == 2:
        s.leaf2[root, gfn >> 9] = r + 1
        C[C_LEAVES_2M] += 1
    else:
        s.leaf3[root, gfn >> 18] = 1
        C[C_LEAVES_1G] += 1
    G[G_IN_LOCK] = 0
    fp = G[G_FPAGES]
    if fp > 16:
        fp = 16
    s.H[fp] += 1


@njit(cache=True, nogil=True)
def _unmap(s, gfn, level, private):
    C = s.C
    C[C_UNMAPS] += 1
    root = MIRROR if private else DIRECT
    if level == 1:
        r1 = s.leaf1[root, gfn]
        if r1 == 0:
            C[C_UNMAPS_MISSING] += 1
            return
        s.leaf1[root, gfn] = 0
        if root == MIRROR and s.P[P_DPAMT] != 0:
            _put_range(s, np.int64(r1) - 1)
    elif level == 2:
        if s.leaf2[root, gfn >> 9] == 0:
            C[C_UNMAPS_MISSING] += 1
            return
        s.leaf2[root, gfn >> 9] = 0
    else:
        if s.leaf3[root, gfn >> 18] == 0:
            C[C_UNMAPS_MISSING] += 1
            return
        s.leaf3[root, gfn >> 18] = 0


@njit(cache=True, nogil=True)
def _split(s, gfn, private):
    C = s.C
    P = s.P
    root = MIRROR if private else DIRECT
    id2 = gfn >> 9
    r2 = s.leaf2[root, id2]
    if r2 == 0:
        C[C_UNMAPS_MISSING] += 1
        return
    spt_p = _alloc_page(s)
    C[C_ALLOC_DIRECT] += 1
    off = s.toff[1] + id2
    if root == MIRROR:
        sept_p = _alloc_page(s)
        C[C_ALLOC_DIRECT] += 1
        s.tsept[off] = sept_p + 1
        r = np.int64(r2) - 1
        if P[P_DPAMT] != 0:
            _get(s, sept_p, False, 0)
            alloc = P[P_STRAT] == S_ALLOC
            was = False
            if alloc:
                was = _cache_only(s, r)
            if s.refc[r] == 0:
                first = _alloc_page(s)
                second = _alloc_page(s)
                C[C_ALLOC_DIRECT] += 2
                _install(s, r, first, second)
            s.refc[r] += 512
            if alloc:
                _cache_only_after(s, r, was)
    s.tspt[root, off] = spt_p + 1
    s.leaf2[root, id2] = 0
    for j in range(id2 * 512, id2 * 512 + 512):
        s.leaf1[root, j] = r2
    C[C_SPLITS] += 1


# ---------------------------------------------------------------------------------------
# The chunk loop.


@njit(cache=True, nogil=True)
def run_chunk(s, ts, op, vcpu, gfn, pfn, level, flags, start):
    """Replay events [start, len) of one chunk. Returns (status, index in chunk).

    Status ST_OK: chunk done. ST_GROW_*: the driver must enlarge an array and call again
    from the returned index (nothing of that event has been applied). ST_SAMPLES_FULL:
    flush the timeline samples and call again from the index. ST_ERROR: G[G_ERR] says
    why; the event at the returned index is invalid (or exhausted the kernel region).
    """
    P = s.P
    G = s.G
    U = s.U
    C = s.C
    nv = P[P_NVCPU]
    tdx = P[P_TDX] != 0
    every = P[P_SAMPLE_EVERY]
    n = ts.shape[0]
    for i in range(start, n):
        o = op[i]
        uses_vcpu = o == OP_FAULT or o == OP_VCPU_CREATE or o == OP_VCPU_DESTROY
        v = np.int64(vcpu[i])
        if uses_vcpu and v >= nv:
            return ST_GROW_VCPUS, i
        if G[G_K] + P[P_GROW_MARGIN] > P[P_FSTACK]:
            return ST_GROW_FSTACK, i
        if every > 0 and G[G_NSAMPLES] >= P[P_NSAMPLES]:
            return ST_SAMPLES_FULL, i
        private = (flags[i] & 1) != 0
        # Input errors that the model defines (sections 5, 7).
        if G[G_VM] == 2:
            G[G_ERR] = E_AFTER_DESTROY
            return ST_ERROR, i
        if o == OP_FAULT and private and not tdx:
            G[G_ERR] = E_PRIVATE_VMX
            return ST_ERROR, i
        if o == OP_VCPU_CREATE and s.vlive[v] != 0:
            G[G_ERR] = E_VCPU_LIVE
            G[G_ERR_ARG] = v
            return ST_ERROR, i
        if o == OP_VM_CREATE and G[G_VM] != 0:
            G[G_ERR] = E_VM_EXISTS
            return ST_ERROR, i
        if o < OP_VM_CREATE or o > OP_SPLIT:
            G[G_ERR] = E_BAD_OP
            G[G_ERR_ARG] = o
            return ST_ERROR, i
        # Time: idle pages after the previous event x the gap to this one.
        t = ts[i]
        if G[G_HAVE_TS] != 0:
            last = U[U_LAST_TS]
            if t < last:
                C[C_TS_BACKWARDS] += 1
            elif G[G_IDLE] > 0 and t > last:
                _add_page_ns(U, G[G_IDLE], t - last)
        G[G_HAVE_TS] = 1
        U[U_LAST_TS] = t
        C[C_EVENTS] += 1
        if o == OP_FAULT:
            _fault(s, v, np.int64(gfn[i]), np.int64(pfn[i]), np.int64(level[i]), private)
        elif o == OP_UNMAP:
            _unmap(s, np.int64(gfn[i]), np.int64(level[i]), private)
        elif o == OP_SPLIT:
            _split(s, np.int64(gfn[i]), private)
        elif o == OP_VCPU_CREATE:
            _vcpu_create(s, v)
        elif o == OP_VCPU_DESTROY:
            if s.vlive[v] == 0:
                _vcpu_create(s, v)
            _vcpu_destroy(s, v)
        elif o == OP_VM_CREATE:
            _vm_create(s)
        else:
            _vm_destroy(s)
        G[G_EVENTS] += 1
        if G[G_ERR] != E_NONE:
            return ST_ERROR, i
        if every > 0 and G[G_EVENTS] % every == 0:
            _sample(s, t)
    return ST_OK, n


@njit(cache=True, nogil=True)
def _sample(s, t):
    row = s.G[G_NSAMPLES]
    sm = s.samples
    sm[row, T_INDEX] = s.G[G_EVENTS]
    sm[row, T_TS] = np.int64(t)
    sm[row, T_LIVE] = s.G[G_LIVE]
    sm[row, T_IDLE] = s.G[G_IDLE]
    sm[row, T_PAIRS] = s.G[G_PAIRS]
    sm[row, T_UNDER_LOCK] = s.C[C_UNDER_LOCK]
    sm[row, T_RETRIES] = s.C[C_RETRIES]
    sm[row, T_ALLOCATED] = s.C[C_PAGES_ALLOCATED]
    s.G[G_NSAMPLES] = row + 1


@njit(cache=True, nogil=True)
def final_sample(s):
    """A timeline row for the end of the trace (before teardown) unless one was just taken."""
    if s.G[G_EVENTS] == 0 or s.G[G_NSAMPLES] >= s.P[P_NSAMPLES]:
        return False
    every = s.P[P_SAMPLE_EVERY]
    if every > 0 and s.G[G_EVENTS] % every == 0:
        return False
    _sample(s, s.U[U_LAST_TS])
    return True


@njit(cache=True, nogil=True)
def finish(s, teardown):
    """End of trace: snapshot the ``*_end`` counters, then tear the VM down if asked."""
    C = s.C
    G = s.G
    for k in range(5):
        C[C_CACHE0 + 6 * k + CF_END] = G[G_HELD + k]
    C[C_PAIRS_END] = G[G_PAIRS]
    C[C_IDLE_END] = G[G_IDLE]
    if teardown and G[G_VM] == 1:
        _vm_destroy(s)
    return G[G_ERR]


@njit(cache=True, nogil=True)
def layout_check():
    """Compiled-in layout sizes, compared with the Python side to catch a stale JIT cache."""
    return N_COUNTERS * 1000 + N_P * 10 + N_G % 10
