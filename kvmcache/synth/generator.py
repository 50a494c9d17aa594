"""Synthetic guest-fault traces (`kvmcache synth`): seeded scenarios streamed as event blocks.

One numba kernel generates every scenario, a block of events per call. It merges per-vCPU
clocks (a scan, or a min-heap for many vCPUs) into non-decreasing timestamps and keeps a compact
model of what is mapped (a bitmap of 4 KiB leaves and a word per 2 MiB region, per root) that
follows MODEL.md section 5, so every unmap names a present leaf and every split a present 2 MiB
leaf. Memory is sized from the guest memory, never from the event count. docs/synth.md
describes the model.

This is the one file of jitted code of ``kvmcache.synth`` (numba through :mod:`kvmcache.jit`);
the CLI imports it only when ``kvmcache synth`` runs.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from kvmcache.errors import KvmcacheError
from kvmcache.jit import NO_NRT, NO_NRT_INLINE, njit
from kvmcache.limits import excerpt
from kvmcache.synth.scenarios import (
    BACKINGS,
    DEFAULT_BACKING,
    DEFAULT_EVENTS,
    DEFAULT_GUEST_MEMORY,
    DEFAULT_HOST_MEMORY,
    DEFAULT_JITTER,
    DEFAULT_PRIVATE_FRACTION,
    DEFAULT_RATE,
    DEFAULT_VCPUS,
    SCENARIOS,
)
from kvmcache.trace.binary import BinaryWriter
from kvmcache.trace.events import (
    EVENT_DTYPE,
    MAX_VCPUS,
    OP_FAULT,
    OP_SPLIT,
    OP_UNMAP,
    OP_VCPU_CREATE,
    OP_VCPU_DESTROY,
    OP_VM_CREATE,
    OP_VM_DESTROY,
    TraceHeader,
)
from kvmcache.trace.output import TraceOutput
from kvmcache.trace.sizes import parse_size

#: Events per generated block: 8 MiB of records, small enough for the C allocator to reuse
#: freed blocks (a fresh 32 MiB block costs thousands of page faults) and large enough to
#: amortise a kernel call.
BLOCK_EVENTS = 1 << 18
#: How write() generates a binary trace: into WRITE_BUFFERS buffers of WRITE_BLOCK_EVENTS events
#: (1 MiB), reused, so that they stay in the CPU caches between the kernel and the write.
WRITE_BUFFERS = 4
WRITE_BLOCK_EVENTS = 1 << 15
#: Largest guest memory: the mapped-leaf bitmaps take guest_memory / 16384 bytes (256 MiB).
MAX_GUEST_MEMORY = 4 << 40
MAX_HOST_MEMORY = 1 << 60

_REGION = 512  # 4 KiB pages per 2 MiB region

# --- sizes ------------------------------------------------------------------------------------


def _fmt_size(nbytes: int) -> str:
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{unit}"
    return f"{nbytes}B"


# --- kernel constants (numba freezes module globals as compile-time constants) ------------------

SC_BOOT, SC_STEADY, SC_SPLIT, SC_CHURN, SC_SCATTER = range(5)
_SCENARIO_CODE = {
    "boot": SC_BOOT,
    "steady": SC_STEADY,
    "hugepage-split": SC_SPLIT,
    "churn": SC_CHURN,
    "scatter": SC_SCATTER,
}
B_HUGE, B_CONTIG, B_RANDOM = range(3)
_BACKING_CODE = {"hugepage": B_HUGE, "4k-contiguous": B_CONTIG, "4k-random": B_RANDOM}

# The kernel's whole state is one int64 array M. Its first N_PARAMS words are the parameters of
# the generation (sizes, keys, the offsets of the sections of M), fixed once it starts; then come
# the scalars that change, and at the offsets the parameters give: the per-vCPU rows, the clocks,
# the rings, the region words, the working-set table and the 4 KiB leaf bitmaps. The kernel
# functions read the parameters once into a tuple P (:func:`_params`), which the compiled code
# keeps in registers: read from M, they would be reloaded after every store into M.
N_PARAMS = 21
(
    P_SCEN,
    P_BACKING,
    P_MAIN_REGS,  # regions [0, MAIN_REGS) are the main (private) area
    P_WIN_REGS,  # regions [MAIN_REGS, MAIN_REGS + WIN_REGS) are the shared window
    P_WIN_WS,  # regions of the window the guest actually uses
    P_WS_REGS,  # working set (regions of the main area)
    P_HPFNS,  # host pfns
    P_HPFN_BITS,
    P_BASE,  # 4k-contiguous: pfn = BASE + gfn
    P_KEY_BACK,
    P_PF,  # a fault is private when a 32-bit random number is below this
    P_NVCPU,
    P_NREG,
    P_WORDS,  # bitmap words per root
    P_BODY,  # body events in total (all but vm_create and vm_destroy)
    P_VC,  # offsets of the sections of M
    P_CLK,
    P_RINGS,
    P_REGS,
    P_WS,  # table: working-set index -> main region (a seeded permutation)
    P_BITS,
) = range(N_PARAMS)
(
    S_REM,  # body events still to generate
    S_STARTED,
    S_DONE,
    S_LAST_TS,
    S_EXTRA,  # extra periods the current vCPU sleeps (churn downtime)
    S_FRESH,  # hugepage-split: regions of the working-set order used so far
    S_RNG,  # splitmix64 state (the bits of a uint64)
    S_RING_N,  # pushes per ring: N_RINGS slots from here
) = range(N_PARAMS, N_PARAMS + 8)
N_RINGS = 4
S_N2M = S_RING_N + N_RINGS  # present 2 MiB leaves, both roots
S_SIZE = S_N2M + 1
MAXK = 3  # most events one tick emits (split + unmap + fault)

F_PERIOD, F_JITTER = range(2)

# Per-vCPU rows.
V_LIVE, V_CUR, V_LO, V_HI, V_RUN, V_LASTG, V_LASTL, V_LASTP = range(8)
V_ROWS = 8

# The vCPU clocks: with up to LIN_VCPUS vCPUs, the clock of vCPU v at P_CLK + v, and the next
# tick is the smallest by a scan (no branch to mispredict); with more, a min-heap of (ts, vcpu),
# the ts at P_CLK + i and the vCPU at P_CLK + nvcpu + i. Both give the smallest (ts, vcpu).
LIN_VCPUS = 8

# Rings of recently mapped things, sampled for unmaps and splits (entries: index * 2 + root).
R_4K, R_2M, R_SPLIT, R_CONV = range(N_RINGS)
RING = 1 << 16
RING_MASK = RING - 1

ROOT_DIRECT, ROOT_MIRROR = 0, 1
# The word of a region in a root: flags (a 2 MiB leaf is present; a level-1 table exists; the
# guest maps the region at 2 MiB when it can, set once at the start in both roots) and, with
# hugepage backing, the host region behind the guest region (the same in both roots), so that
# a fault finds both in one load.
REG_LEAF2M, REG_TBL1, REG_HUGE = 1, 2, 4
REG_HUGE_BIT = 2  # REG_HUGE == 1 << REG_HUGE_BIT
REG_HOST_SHIFT = 8  # the host region above the flags (fits: at most 2**39 host regions)

_P32 = 1 << 32
_M32 = _P32 - 1

# Scenario mixes (probabilities per tick of a live vCPU).
BOOT_JUMP = 0.02
BOOT_IO_REGIONS = 16  # the I/O-buffer part of the shared window: 32 MiB
BOOT_AP_DELAY = 200  # periods before the application processors start
STEADY_WS = 0.25  # working set: this fraction of the main area
STEADY_HUGE = 300  # per mille of the regions mapped at 2 MiB
STEADY_REPEAT = 0.05
STEADY_TO_SHARED = 0.08
STEADY_TO_PRIVATE = 0.04
SPLIT_PHASE_A_TENTHS = 4  # tenths of the body spent mapping 2 MiB leaves before splitting
SPLIT_P_SPLIT = 0.35
SPLIT_P_UNMAP = 0.30
SPLIT_P_MAP2M = 0.15
CHURN_WS = 0.25
CHURN_HUGE = 100
CHURN_DESTROY = 0.03
CHURN_UNMAP = 0.06
CHURN_DOWNTIME = 50  # periods a destroyed vCPU stays away
SCATTER_UNMAP = 0.12
SCATTER_RUN_MIN = 16
SCATTER_RUN_SPAN = 112

# 32-bit thresholds of the probabilities above.
_T_BOOT_JUMP = int(BOOT_JUMP * _P32)
_T_STEADY_REPEAT = int(STEADY_REPEAT * _P32)
_T_STEADY_TO_SHARED = int((STEADY_REPEAT + STEADY_TO_SHARED) * _P32)
_T_STEADY_TO_PRIVATE = int((STEADY_REPEAT + STEADY_TO_SHARED + STEADY_TO_PRIVATE) * _P32)
_T_SPLIT_SPLIT = int(SPLIT_P_SPLIT * _P32)
_T_SPLIT_UNMAP = int((SPLIT_P_SPLIT + SPLIT_P_UNMAP) * _P32)
_T_SPLIT_MAP2M = int((SPLIT_P_SPLIT + SPLIT_P_UNMAP + SPLIT_P_MAP2M) * _P32)
_T_CHURN_DESTROY = int(CHURN_DESTROY * _P32)
_T_CHURN_UNMAP = int((CHURN_DESTROY + CHURN_UNMAP) * _P32)
_T_SCATTER_UNMAP = int(SCATTER_UNMAP * _P32)
_T_HALF = _P32 // 2

# Round multipliers of the keyed permutation (odd, so each round is a bijection mod 2**bits).
_PERM_MUL = (0x9E3779B97F4A7C15, 0x2545F4914F6CDD1D, 0x5851F42D4C957F2D)
_PERM_MUL0, _PERM_MUL1, _PERM_MUL2 = (np.uint64(m) for m in _PERM_MUL)


# How the kernel is compiled:
# - without the NRT (``_nrt=False``): nothing in it allocates, and reference counting the arrays
#   on every call of the per-event path would cost more than the work itself;
# - helpers with explicit signatures (compiled, or loaded from the cache, at import): numba
#   would otherwise compile one specialisation per combination of literal arguments;
# - the ticks of the scenarios and the steps that emit an event inlined into the loop (numba IR
#   inlining): a call costs as much as a step's work (numba passes each array as 7 arguments).
#   The rarest ticks (an invalidation, a fault where a rare tick finds nothing to do) are plain
#   functions: numba's inlining copies the IR of each inlined call, nested calls included, and
#   inlining everything would make the first compilation several times longer.
def _jit(signature: str):
    return njit(signature, **NO_NRT)


_jit_inline = njit(**NO_NRT_INLINE)

#: numba types that recur in the signatures below: the parameters, the output block (its
#: records as little-endian u64 words, 4 per record) and a tick compiled on its own.
_P = f"UniTuple(int64, {N_PARAMS})"
_OUT = "uint64[::1]"
_TICK = f"int64({_OUT}, int64, int64[::1], int64, int64)"

# --- kernel: parameters, random numbers, backing, indexing ------------------------------------


@_jit(f"{_P}(int64[::1])")
def _params(M):
    """The parameters of the generation, M[:N_PARAMS], as a tuple (in P_* order)."""
    return (
        M[P_SCEN],
        M[P_BACKING],
        M[P_MAIN_REGS],
        M[P_WIN_REGS],
        M[P_WIN_WS],
        M[P_WS_REGS],
        M[P_HPFNS],
        M[P_HPFN_BITS],
        M[P_BASE],
        M[P_KEY_BACK],
        M[P_PF],
        M[P_NVCPU],
        M[P_NREG],
        M[P_WORDS],
        M[P_BODY],
        M[P_VC],
        M[P_CLK],
        M[P_RINGS],
        M[P_REGS],
        M[P_WS],
        M[P_BITS],
    )


@_jit("int64(int64[::1])")
def _u64(M):
    """64 random bits (splitmix64, a counter-based generator), as the bits of an int64.
    Callers split them into two 32-bit halves: ``(z >> 32) & _M32`` and ``z & _M32``."""
    z = np.uint64(M[S_RNG]) + np.uint64(0x9E3779B97F4A7C15)
    M[S_RNG] = np.int64(z)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.int64(z ^ (z >> np.uint64(31)))


@_jit("int64(int64[::1])")
def _u32(M):
    """32 random bits as a non-negative int64."""
    return (_u64(M) >> 32) & _M32


@_jit("int64(int64[::1], int64)")
def _below(M, n):
    """A random int in [0, n), 0 < n <= 2**31: multiply and shift, no division."""
    return (_u32(M) * n) >> 32


@_jit("int64(int64, int64, int64, int64)")
def _perm(x, n, bits, key):
    """A keyed bijection of [0, n) (:func:`_perm_np` is the same map on arrays): three rounds of
    (multiply by an odd constant, add a key, xor-shift) mod 2**bits, cycle-walked into [0, n)."""
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    shift = np.uint64(max(1, bits >> 1))
    k0 = np.uint64(key)
    k1 = np.uint64(key >> 13)
    k2 = np.uint64(key >> 27)
    y = np.uint64(x)
    while True:
        y = (y * _PERM_MUL0 + k0) & mask
        y ^= y >> shift
        y = (y * _PERM_MUL1 + k1) & mask
        y ^= y >> shift
        y = (y * _PERM_MUL2 + k2) & mask
        y ^= y >> shift
        if np.int64(y) < n:
            return np.int64(y)


@_jit(f"int64({_P}, int64, int64)")
def _pfn(P, gfn, word):
    """Host pfn of a guest page under the backing model (word: the word of gfn's region)."""
    b = P[P_BACKING]
    if b == B_HUGE:
        return (word >> REG_HOST_SHIFT) * _REGION + (gfn & (_REGION - 1))
    if b == B_CONTIG:
        return P[P_BASE] + gfn
    return _perm(gfn, P[P_HPFNS], P[P_HPFN_BITS], P[P_KEY_BACK])


@_jit(f"uint64({_P}, int64, int64)")
def _vcx(P, row, v):
    """Index in M of a per-vCPU value (unsigned: numba then skips the negative-index check)."""
    return np.uint64(P[P_VC] + row * P[P_NVCPU] + v)


@_jit(f"uint64({_P}, int64, int64)")
def _regx(P, root, r):
    """Index in M of the word of region r in a root."""
    return np.uint64(P[P_REGS] + root * P[P_NREG] + r)


@_jit(f"uint64({_P}, int64, int64)")
def _wordx(P, root, gfn):
    """Index in M of the bitmap word holding gfn's 4 KiB leaf."""
    return np.uint64(P[P_BITS] + root * P[P_WORDS] + (gfn >> 6))


@_jit(f"boolean(int64[::1], {_P}, int64, int64)")
def _has4k(M, P, root, gfn):
    return (M[_wordx(P, root, gfn)] >> (gfn & 63)) & 1 != 0


@_jit(f"void(int64[::1], {_P}, int64, int64)")
def _push(M, P, which, entry):
    k = M[S_RING_N + which]
    M[np.uint64(P[P_RINGS] + which * RING + (k & RING_MASK))] = entry
    M[S_RING_N + which] = k + 1


@_jit(f"int64(int64[::1], {_P}, int64, int64, int64)")
def _ring_at(M, P, which, k, r32):
    """The entry of a ring with k > 0 pushes that 32 random bits pick (as :func:`_below`)."""
    return M[np.uint64(P[P_RINGS] + which * RING + ((r32 * min(k, RING)) >> 32))]


@_jit(f"int64(int64[::1], {_P}, int64)")
def _sample(M, P, which):
    """A random entry of a ring, or -1 when it is empty."""
    k = M[S_RING_N + which]
    if k == 0:
        return -1
    return _ring_at(M, P, which, k, _u32(M))


@_jit_inline
def _pick4k(M, P, which):
    """A present 4 KiB leaf (gfn * 2 + root) from a ring of them, or -1 after a few misses."""
    for _ in range(4):
        e = _sample(M, P, which)
        if e < 0:
            return -1
        if _has4k(M, P, e & 1, e >> 1):
            return e
    return -1


@_jit_inline
def _pick2m(M, P):
    """A present 2 MiB leaf (region * 2 + root), or -1 after a few misses."""
    if M[S_N2M] == 0:
        return -1
    for _ in range(8):
        e = _sample(M, P, R_2M)
        if e < 0:
            return -1
        if M[_regx(P, e & 1, e >> 1)] & REG_LEAF2M:
            return e
    return -1


# --- kernel: emitting an event and applying it to the model of what is mapped ----------------
#
# Each step writes record n of ``out`` and updates the model as MODEL.md section 5 does. A tick
# decides all its events (reading the model) before it emits the first, so applying each event
# as it is emitted gives the same model as applying them all after the tick.


@_jit(f"void({_OUT}, int64, int64, int64, int64, int64, int64, int64, int64)")
def _emit(out, n, ts, op, vcpu, gfn, pfn, level, flags):
    """Write record n."""
    i = np.uint64(4 * n)
    out[i] = np.uint64(ts)
    out[i + np.uint64(1)] = np.uint64(gfn)
    out[i + np.uint64(2)] = np.uint64(pfn)
    out[i + np.uint64(3)] = (
        np.uint64(vcpu)
        | (np.uint64(op) << np.uint64(32))
        | (np.uint64(level) << np.uint64(40))
        | (np.uint64(flags) << np.uint64(48))
    )


@_jit_inline
def _fault(out, n, M, P, ts, v, gfn, level, root):
    """A fault of vCPU v at level 1 or 2 (MODEL.md 5.4 steps 3, 4 and 6)."""
    gfn -= gfn & ((level - 1) * (_REGION - 1))  # at level 2, the first page of the region
    rx = _regx(P, root, gfn >> 9)
    rg = M[rx]
    _emit(out, n, ts, OP_FAULT, v, gfn, _pfn(P, gfn, rg), level, root)
    M[_vcx(P, V_LASTG, v)] = gfn
    M[_vcx(P, V_LASTL, v)] = level
    M[_vcx(P, V_LASTP, v)] = root
    wx = _wordx(P, root, gfn)
    # Spurious when a present leaf covers gfn (both looked up, then one well-predicted branch).
    if (rg & REG_LEAF2M) | ((M[wx] >> (gfn & 63)) & 1):
        return
    if level == 2 and rg & REG_TBL1:
        if root == ROOT_MIRROR:
            level = 1  # mirror: level fit to the existing level-1 table
        else:
            for i in range(8):  # direct: collapse, the subtree is zapped
                M[wx + np.uint64(i)] = 0
            rg &= ~REG_TBL1
    if level == 2:
        M[rx] = rg | REG_LEAF2M
        M[S_N2M] += 1
        _push(M, P, R_2M, (gfn >> 9) * 2 + root)
    else:
        M[wx] |= np.int64(1) << (gfn & 63)
        M[rx] = rg | REG_TBL1
        _push(M, P, R_4K, gfn * 2 + root)


@_jit_inline
def _unmap(out, n, M, P, ts, gfn, level, root):
    """An unmap, only ever of a present leaf (MODEL.md 5.5)."""
    _emit(out, n, ts, OP_UNMAP, 0, gfn, 0, level, root)
    if level == 1:
        M[_wordx(P, root, gfn)] &= ~(np.int64(1) << (gfn & 63))
    else:
        M[_regx(P, root, gfn >> 9)] &= ~REG_LEAF2M
        M[S_N2M] -= 1


@_jit_inline
def _split(out, n, M, P, ts, gfn, root):
    """A split of a present 2 MiB leaf into 512 present 4 KiB leaves (MODEL.md 5.6)."""
    _emit(out, n, ts, OP_SPLIT, 0, gfn, 0, 0, root)
    rx = _regx(P, root, gfn >> 9)
    M[rx] = (M[rx] & ~REG_LEAF2M) | REG_TBL1
    M[S_N2M] -= 1
    w0 = _wordx(P, root, gfn)
    for i in range(8):
        M[w0 + np.uint64(i)] = -1
    _push(M, P, R_SPLIT, (gfn >> 9) * 2 + root)


# --- kernel: the ticks of the scenarios (each emits its events and returns how many) ----------


@_jit(f"int64({_P}, int64)")
def _root_of(P, u):
    """The root of a fault, from 32 random bits: mirror with the private fraction (tdx only),
    else direct. Only the top 23 bits decide, so the low 9 can pick a page in a region."""
    return ROOT_MIRROR if (u >> 9) < (P[P_PF] >> 9) else ROOT_DIRECT


@_jit(f"int64({_P}, int64, int64)")
def _window_gfn(P, lo, hi):
    """A gfn in the used part of the shared window, from 32 random bits and 9 more."""
    r = P[P_MAIN_REGS] + ((lo * P[P_WIN_WS]) >> 32)
    return r * _REGION + (hi & (_REGION - 1))


@_jit(f"int64(int64[::1], {_P})")
def _ws_region(M, P):
    """A random region of the working set."""
    return M[np.uint64(P[P_WS] + _below(M, P[P_WS_REGS]))]


@_jit_inline
def _plain_target(M, P):
    """(gfn, level, root) of a fault over the working set (either root) or the shared window,
    2 MiB on huge regions. One random draw: the high half picks the root and the page, the low
    half the region. No branch but the last (the region's word is read even for the window)."""
    z = _u64(M)
    hi = (z >> 32) & _M32
    lo = z & _M32
    root = _root_of(P, hi)
    r = M[np.uint64(P[P_WS] + ((lo * P[P_WS_REGS]) >> 32))]
    huge = (M[_regx(P, root, r)] >> REG_HUGE_BIT) & 1
    gfn = r * _REGION + (hi & (_REGION - 1) & (huge - 1))
    level = 1 + huge
    if root == ROOT_DIRECT and P[P_WIN_REGS] > 0:
        gfn = _window_gfn(P, lo, hi)
        level = 1
    return gfn, level, root


@_jit(_TICK)
def _plain_fault(out, n, M, ts, v):
    """A plain fault (:func:`_plain_target`), where a rare tick finds nothing to do."""
    P = _params(M)
    gfn, level, root = _plain_target(M, P)
    _fault(out, n, M, P, ts, v, gfn, level, root)
    return 1


@_jit(_TICK)
def _invalidate(out, n, M, ts, v):
    """Unmap a present leaf (an MMU-notifier invalidation); a plain fault when none is found."""
    P = _params(M)
    e = -1
    level = 1
    if _u32(M) < _T_HALF:
        e = _pick2m(M, P)
        level = 2
    if e < 0:
        e = _pick4k(M, P, R_4K)
        level = 1
    if e < 0:
        return _plain_fault(out, n, M, ts, v)
    gfn = (e >> 1) * _REGION if level == 2 else e >> 1
    _unmap(out, n, M, P, ts, gfn, level, e & 1)
    return 1


# The conversions end with a fault, emitted by their caller: each returns how many events it
# emitted before it, and the fault's (gfn, level, root). One inlined fault step per scenario
# keeps the first compilation short.


@_jit_inline
def _to_shared(out, n, M, P, ts):
    """Private -> shared conversion at a working-set gfn: [split], unmap private, fault shared."""
    gfn = _ws_region(M, P) * _REGION + _below(M, _REGION)
    huge = (M[_regx(P, ROOT_MIRROR, gfn >> 9)] & REG_LEAF2M) != 0
    mapped = huge or _has4k(M, P, ROOT_MIRROR, gfn)
    k = 1 + (1 if mapped else 0) + (1 if huge else 0)
    if k > M[S_REM]:  # does not fit: a plain fault instead
        g, level, root = _plain_target(M, P)
        return 0, g, level, root
    _push(M, P, R_CONV, gfn * 2 + ROOT_DIRECT)
    j = 0
    if huge:
        _split(out, n, M, P, ts, gfn - (gfn & (_REGION - 1)), ROOT_MIRROR)
        j += 1
    if mapped:
        _unmap(out, n + j, M, P, ts, gfn, 1, ROOT_MIRROR)
        j += 1
    return j, gfn, 1, ROOT_DIRECT


@_jit_inline
def _to_private(out, n, M, P, ts):
    """Shared -> private conversion of a converted page: unmap shared, fault private."""
    e = _pick4k(M, P, R_CONV)
    if e < 0 or M[S_REM] < 2:  # none found, or does not fit: a plain fault instead
        g, level, root = _plain_target(M, P)
        return 0, g, level, root
    _unmap(out, n, M, P, ts, e >> 1, 1, ROOT_DIRECT)
    return 1, e >> 1, 1, ROOT_MIRROR


@_jit_inline
def _tick_boot(out, n, M, P, ts, v, u):
    """boot: the vCPU's next page of its slice (2% jumps), or a shared I/O-buffer fault."""
    root = _root_of(P, u)
    z = _u64(M)
    zhi = (z >> 32) & _M32
    zlo = z & _M32
    if root == ROOT_DIRECT and P[P_WIN_REGS] > 0:
        gfn = _window_gfn(P, zlo, zhi)
    else:
        lo = M[_vcx(P, V_LO, v)]
        hi = M[_vcx(P, V_HI, v)]
        cx = _vcx(P, V_CUR, v)
        gfn = M[cx]
        if zlo < _T_BOOT_JUMP:
            gfn = lo + ((zhi * (hi - lo)) >> 32)
        M[cx] = lo if gfn + 1 >= hi else gfn + 1
    _fault(out, n, M, P, ts, v, gfn, 1, root)
    return 1


@_jit_inline
def _tick_steady(out, n, M, P, ts, v, u):
    """steady: repeat the last fault, convert a page either way, or a plain fault."""
    j = 0  # events before the fault
    if u < _T_STEADY_REPEAT and M[_vcx(P, V_LASTL, v)] > 0:
        # the same fault again: spurious while the leaf stays
        gfn = M[_vcx(P, V_LASTG, v)]
        level = M[_vcx(P, V_LASTL, v)]
        root = M[_vcx(P, V_LASTP, v)]
    elif u < _T_STEADY_REPEAT or u >= _T_STEADY_TO_PRIVATE:
        gfn, level, root = _plain_target(M, P)
    elif P[P_PF] == 0:  # no private memory: an invalidation instead of a conversion
        return _invalidate(out, n, M, ts, v)
    elif u < _T_STEADY_TO_SHARED:
        j, gfn, level, root = _to_shared(out, n, M, P, ts)
    else:
        j, gfn, level, root = _to_private(out, n, M, P, ts)
    _fault(out, n + j, M, P, ts, v, gfn, level, root)
    return j + 1


@_jit("int64(int64[::1])")
def _fresh_region(M):
    """The next never-used main region (a random one once all are used)."""
    k = M[S_FRESH]
    if k < M[P_MAIN_REGS]:
        M[S_FRESH] = k + 1
        return M[M[P_WS] + k]  # the working set is all of the main area, in seeded order
    return _below(M, M[P_MAIN_REGS])


@_jit_inline
def _split_phase_b(out, n, M, P, ts, root):
    """hugepage-split, after the first phase: split a present 2 MiB leaf, or unmap or refault a
    page of a split region, else map a region at 2 MiB in ``root``. Returns 1 and
    (0, 0, 0) when it emitted a split or an unmap, else 0 and the fault's (gfn, level, root)."""
    u = _u32(M)
    if u < _T_SPLIT_SPLIT:  # split a present 2 MiB leaf
        e = _pick2m(M, P)
        if e >= 0:
            _split(out, n, M, P, ts, (e >> 1) * _REGION, e & 1)
            return 1, 0, 0, 0
        # None is present: map a fresh region at 2 MiB while there is one, else unmap or
        # refault a page of a split region.
        u = _T_SPLIT_UNMAP if M[S_FRESH] < P[P_MAIN_REGS] else _T_SPLIT_SPLIT
    if u >= _T_SPLIT_MAP2M or u < _T_SPLIT_UNMAP:
        k = M[S_RING_N + R_SPLIT]
        if k > 0:  # a page of a split region, both from one draw
            z = _u64(M)
            e = _ring_at(M, P, R_SPLIT, k, z & _M32)
            gfn = (e >> 1) * _REGION + ((z >> 32) & (_REGION - 1))
            r = e & 1
            if u < _T_SPLIT_UNMAP and _has4k(M, P, r, gfn):
                _unmap(out, n, M, P, ts, gfn, 1, r)
                return 1, 0, 0, 0
            return 0, gfn, 1, r  # a refault after an unmap, else spurious
    return 0, _fresh_region(M) * _REGION, 2, root


@_jit_inline
def _tick_split(out, n, M, P, ts, v, u):
    """hugepage-split: map fresh regions at 2 MiB, then split, unmap and refault 4 KiB."""
    root = _root_of(P, u)
    if root == ROOT_DIRECT and P[P_WIN_REGS] > 0:  # shared I/O: 4 KiB in the window
        z = _u64(M)
        gfn = _window_gfn(P, z & _M32, (z >> 32) & _M32)
        level = 1
    else:
        done = P[P_BODY] - M[S_REM]
        if done * 10 >= SPLIT_PHASE_A_TENTHS * P[P_BODY] or M[S_FRESH] >= P[P_MAIN_REGS]:
            emitted, gfn, level, root = _split_phase_b(out, n, M, P, ts, root)
            if emitted:
                return 1
        else:
            gfn = _fresh_region(M) * _REGION
            level = 2
    _fault(out, n, M, P, ts, v, gfn, level, root)
    return 1


@_jit_inline
def _tick_churn(out, n, M, P, ts, v, u):
    """churn: destroy the vCPU (it comes back later), unmap a present leaf, or a plain fault."""
    if u < _T_CHURN_DESTROY:
        _emit(out, n, ts, OP_VCPU_DESTROY, v, 0, 0, 0, 0)
        M[_vcx(P, V_LIVE, v)] = 0
        M[_vcx(P, V_LASTL, v)] = 0
        M[S_EXTRA] = CHURN_DOWNTIME
        return 1
    if u < _T_CHURN_UNMAP:
        return _invalidate(out, n, M, ts, v)
    gfn, level, root = _plain_target(M, P)
    _fault(out, n, M, P, ts, v, gfn, level, root)
    return 1


@_jit_inline
def _scatter_unmap(out, n, M, P, ts):
    """scatter: unmap a present 4 KiB leaf; 0 (nothing emitted) when none is found."""
    e = _pick4k(M, P, R_4K)
    if e < 0:
        return 0
    _unmap(out, n, M, P, ts, e >> 1, 1, e & 1)
    return 1


@_jit_inline
def _tick_scatter(out, n, M, P, ts, v, u):
    """scatter: unmap a present 4 KiB leaf, or the next page of the vCPU's current run."""
    if u < _T_SCATTER_UNMAP and _scatter_unmap(out, n, M, P, ts):
        return 1
    z = _u64(M)
    zhi = (z >> 32) & _M32
    root = _root_of(P, zhi)
    if root == ROOT_DIRECT and P[P_WIN_REGS] > 0:
        gfn = _window_gfn(P, z & _M32, zhi)
    else:
        cx = _vcx(P, V_CUR, v)
        rx = _vcx(P, V_RUN, v)
        if M[rx] == 0:  # a new run: a random region, a random start page
            M[cx] = _below(M, P[P_MAIN_REGS]) * _REGION + _below(M, _REGION)
            M[rx] = SCATTER_RUN_MIN + _below(M, SCATTER_RUN_SPAN)
        gfn = M[cx]
        M[cx] = gfn - (gfn & (_REGION - 1)) + ((gfn + 1) & (_REGION - 1))
        M[rx] -= 1
    _fault(out, n, M, P, ts, v, gfn, 1, root)
    return 1


# --- kernel: the clocks and the loop -----------------------------------------------------------


@_jit(f"void(int64[::1], {_P}, int64, int64)")
def _sift_down(M, P, t, v):
    """Put (t, v) at the top of the (ts, vcpu) min-heap and restore the heap order."""
    ht = P[P_CLK]
    size = P[P_NVCPU]
    hv = ht + size
    i = 0
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        tc = M[ht + c]
        vc = M[hv + c]
        if c + 1 < size:
            td = M[ht + c + 1]
            vd = M[hv + c + 1]
            if td < tc or (td == tc and vd < vc):
                c += 1
                tc = td
                vc = vd
        if tc < t or (tc == t and vc < v):
            M[ht + i] = tc
            M[hv + i] = vc
            i = c
        else:
            break
    M[ht + i] = t
    M[hv + i] = v


@_jit(f"int64({_OUT}, int64[::1], float64[::1])")
def _run(out, M, F):
    """Fill ``out`` with the next events; returns how many."""
    cap = out.shape[0] // 4
    n = 0
    if M[S_STARTED] == 0:
        _emit(out, 0, 0, OP_VM_CREATE, 0, 0, 0, 0, 0)
        M[S_STARTED] = 1
        n = 1
    P = _params(M)
    period = F[F_PERIOD]
    jitter = F[F_JITTER]
    scen = P[P_SCEN]
    nv = P[P_NVCPU]
    clk = np.uint64(P[P_CLK])
    scan = nv <= LIN_VCPUS
    while M[S_REM] > 0 and n + MAXK <= cap:
        ts = M[clk]
        v = 0
        if scan:  # the smallest clock, the lowest vCPU on a tie
            for i in range(1, nv):
                t = M[clk + np.uint64(i)]
                v = i if t < ts else v
                ts = t if t < ts else ts
        else:
            v = M[clk + np.uint64(nv)]
        z = _u64(M)
        u = (z >> 32) & _M32
        lx = _vcx(P, V_LIVE, v)
        if M[lx] == 0:  # the first tick of a vCPU creates it
            _emit(out, n, ts, OP_VCPU_CREATE, v, 0, 0, 0, 0)
            M[lx] = 1
            k = 1
        elif scen == SC_STEADY:
            k = _tick_steady(out, n, M, P, ts, v, u)
        elif scen == SC_BOOT:
            k = _tick_boot(out, n, M, P, ts, v, u)
        elif scen == SC_SPLIT:
            k = _tick_split(out, n, M, P, ts, v, u)
        elif scen == SC_CHURN:
            k = _tick_churn(out, n, M, P, ts, v, u)
        else:
            k = _tick_scatter(out, n, M, P, ts, v, u)
        n += k
        M[S_REM] -= k
        M[S_LAST_TS] = ts
        step = period * (k + M[S_EXTRA]) * (1.0 + jitter * ((z & _M32) * (2.0 / _P32) - 1.0))
        M[S_EXTRA] = 0
        if scan:
            M[clk + np.uint64(v)] = ts + np.int64(step)
        else:
            _sift_down(M, P, ts + np.int64(step), v)
    if M[S_REM] == 0 and M[S_DONE] == 0 and n < cap:
        _emit(out, n, M[S_LAST_TS] + np.int64(period), OP_VM_DESTROY, 0, 0, 0, 0, 0)
        M[S_DONE] = 1
        n += 1
    return n


# --- the public API ---------------------------------------------------------------------------


def _splitmix(x: int) -> int:
    """One splitmix64 output for ``x`` (used to derive the seeded keys)."""
    m = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def _domain_bits(n: int) -> int:
    """Bits of the smallest power-of-two domain that holds [0, n)."""
    return (n - 1).bit_length()


@dataclass
class _State:
    """Everything the kernel carries from one block to the next (see the kernel constants)."""

    M: np.ndarray  # int64: parameters, scalars, per-vCPU rows, clocks, rings, region words, ...
    F: np.ndarray  # float64: period and jitter


def _check_number(name: str, value: float, lo: float, hi: float, hi_open: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise KvmcacheError(f"bad {name} {excerpt(value)}: not a number") from None
    if not math.isfinite(x) or x < lo or x > hi or (hi_open and x == hi):
        bound = f"[{lo:g}, {hi:g})" if hi_open else f"[{lo:g}, {hi:g}]"
        raise KvmcacheError(f"bad {name} {excerpt(value)}: must be in {bound}")
    return x


def generate(
    scenario: str,
    *,
    vcpus: int = DEFAULT_VCPUS,
    guest_memory: int | str = DEFAULT_GUEST_MEMORY,
    host_memory: int | str = DEFAULT_HOST_MEMORY,
    events: int = DEFAULT_EVENTS,
    seed: int = 0,
    root_level: int = 4,
    vm: str = "tdx",
    backing: str | None = None,
    private_fraction: float | None = None,
    rate: float = DEFAULT_RATE,
    jitter: float = DEFAULT_JITTER,
    block_events: int = BLOCK_EVENTS,
) -> tuple[TraceHeader, Iterator[np.ndarray]]:
    """Header and a lazy stream of EVENT_DTYPE blocks for one scenario; exactly ``events`` events.

    Sizes are bytes or strings such as ``4GiB``; ``backing`` defaults per scenario
    (:data:`DEFAULT_BACKING`), ``private_fraction`` to 0.9 on tdx and 0 on vmx. Bad arguments
    raise :class:`KvmcacheError`. The same arguments give the same events, bit for bit.
    """
    if scenario not in SCENARIOS:
        raise KvmcacheError(
            f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)}; see kvmcache synth --list)"
        )
    if vm not in DEFAULT_PRIVATE_FRACTION:
        raise KvmcacheError(f"bad vm type {vm!r}: must be tdx or vmx")
    if root_level not in (4, 5):
        raise KvmcacheError(f"bad root level {root_level!r}: must be 4 or 5")
    if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= MAX_VCPUS:
        raise KvmcacheError(f"bad vcpu count {vcpus!r}: must be 1..{MAX_VCPUS}")
    if isinstance(events, bool) or not isinstance(events, int) or not 2 <= events < 1 << 62:
        raise KvmcacheError(
            f"bad event count {events!r}: must be from 2 (vm_create and vm_destroy) to 2**62 - 1"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 64:
        raise KvmcacheError(f"bad seed {seed!r}: must be an integer in [0, 2**64)")
    backing = DEFAULT_BACKING[scenario] if backing is None else backing
    if backing not in BACKINGS:
        raise KvmcacheError(f"bad backing {backing!r}: must be one of {', '.join(BACKINGS)}")
    if scenario == "hugepage-split" and backing == "4k-random":
        raise KvmcacheError(
            "scenario hugepage-split needs 2 MiB leaves: use --backing hugepage or 4k-contiguous"
        )
    guest = parse_size(guest_memory, "guest memory")
    host = parse_size(host_memory, "host memory")
    if guest % (2 << 20) or not 4 << 20 <= guest <= MAX_GUEST_MEMORY:
        raise KvmcacheError(
            f"bad guest memory {_fmt_size(guest)}: must be a multiple of 2MiB, "
            f"from 4MiB to {_fmt_size(MAX_GUEST_MEMORY)}"
        )
    if host < guest or host > MAX_HOST_MEMORY:
        raise KvmcacheError(
            f"bad host memory {_fmt_size(host)}: must be at least the guest memory "
            f"({_fmt_size(guest)}) and at most {_fmt_size(MAX_HOST_MEMORY)}"
        )
    if private_fraction is None:
        pf = DEFAULT_PRIVATE_FRACTION[vm]
    else:
        pf = _check_number("private fraction", private_fraction, 0.0, 1.0)
        if vm == "vmx" and pf > 0:
            raise KvmcacheError(
                f"bad private fraction {private_fraction!r}: a vmx VM has no private memory (use 0)"
            )
    rate = _check_number("rate", rate, 1e-3, 1e12)
    jitter = _check_number("jitter", jitter, 0.0, 1.0, hi_open=True)
    # Timestamps must fit in int64: each event can cost a few periods (downtime, jitter).
    if events * (1e9 / rate) * (CHURN_DOWNTIME + 2) * 2 >= 2.0**63:
        raise KvmcacheError(
            f"bad rate {rate:g}: too low for {events:,} events (timestamps would overflow)"
        )

    gfn_limit = guest // 4096
    host_pfns = host // 4096
    header = TraceHeader(
        vm_type=vm,
        root_level=root_level,
        gfn_limit=gfn_limit,
        host_pfn_limit=host_pfns,
        count=events,
        format="binary",
    )
    state = _initial_state(
        scenario, vcpus, gfn_limit, host_pfns, events, seed, vm, backing, pf, rate, jitter
    )
    return header, _Blocks(state, max(MAXK + 2, int(block_events)))


def _perm_np(x: np.ndarray, n: int, bits: int, key: int) -> np.ndarray:
    """:func:`_perm` on an array (uint64 arithmetic, wrapping)."""
    mask = np.uint64((1 << bits) - 1)
    shift = np.uint64(max(1, bits >> 1))
    keys = (np.uint64(key), np.uint64(key >> 13), np.uint64(key >> 27))
    y = np.array(x, dtype=np.uint64)
    pending = np.arange(len(y))
    while len(pending):
        z = y[pending]
        for mul, k in zip((_PERM_MUL0, _PERM_MUL1, _PERM_MUL2), keys, strict=True):
            z = (z * mul + k) & mask
            z ^= z >> shift
        y[pending] = z
        pending = pending[z >= n]
    return y.astype(np.int64)


def _initial_state(
    scenario: str,
    vcpus: int,
    gfn_limit: int,
    host_pfns: int,
    events: int,
    seed: int,
    vm: str,
    backing: str,
    pf: float,
    rate: float,
    jitter: float,
) -> _State:
    nreg = gfn_limit // _REGION
    host_regs = host_pfns // _REGION
    base_key = _splitmix(_splitmix(seed) ^ _SCENARIO_CODE[scenario])
    # >> 2: room in int64 for the key arithmetic of the permutation.
    keys = [_splitmix(base_key + i) >> 2 for i in range(8)]

    # The guest areas: main (private) regions first, then the shared window.
    win = 0
    if vm == "tdx" and 0.0 < pf < 1.0:
        win = min(nreg - 1, max(1, round(nreg * (1.0 - pf))))
    main = nreg - win
    ws_frac = {"steady": STEADY_WS, "churn": CHURN_WS}.get(scenario, 1.0)
    ws_regs = max(1, int(main * ws_frac))
    huge_permille = {"steady": STEADY_HUGE, "churn": CHURN_HUGE}.get(scenario, 0)
    if backing == "4k-random":
        huge_permille = 0  # no 2 MiB host page behind any guest region

    # Offsets of the M sections.
    vc_off = S_SIZE
    clk_off = vc_off + V_ROWS * vcpus
    rings_off = clk_off + (vcpus if vcpus <= LIN_VCPUS else 2 * vcpus)
    regs_off = rings_off + N_RINGS * RING
    ws_off = regs_off + 2 * nreg
    bits_off = ws_off + ws_regs
    words = gfn_limit // 64
    M = np.zeros(bits_off + 2 * words, dtype=np.int64)
    params = {
        P_SCEN: _SCENARIO_CODE[scenario],
        P_BACKING: _BACKING_CODE[backing],
        P_MAIN_REGS: main,
        P_WIN_REGS: win,
        P_WIN_WS: min(win, BOOT_IO_REGIONS) if scenario == "boot" else max(1, win // 4),
        P_WS_REGS: ws_regs,
        P_HPFNS: host_pfns,
        P_HPFN_BITS: _domain_bits(host_pfns),
        P_BASE: (keys[0] % (host_regs - nreg + 1)) * _REGION,
        P_KEY_BACK: keys[1],
        P_PF: round(pf * _P32) if vm == "tdx" else 0,
        P_NVCPU: vcpus,
        P_NREG: nreg,
        P_WORDS: words,
        P_BODY: events - 2,
        P_VC: vc_off,
        P_CLK: clk_off,
        P_RINGS: rings_off,
        P_REGS: regs_off,
        P_WS: ws_off,
        P_BITS: bits_off,
    }
    M[:N_PARAMS] = [params[i] for i in range(N_PARAMS)]
    M[S_RNG] = keys[5]
    M[S_REM] = events - 2

    # Tables: the working set in seeded order; the regions the guest maps at 2 MiB (exactly
    # huge_permille of them, chosen by a permutation); the host region of each guest region.
    M[ws_off : ws_off + ws_regs] = _perm_np(np.arange(ws_regs), main, _domain_bits(main), keys[2])
    word = np.zeros(nreg, dtype=np.int64)
    if huge_permille:
        rank = _perm_np(np.arange(nreg), nreg, _domain_bits(nreg), keys[3])
        word |= np.where(rank * 1000 < huge_permille * nreg, REG_HUGE, 0)
    if backing == "hugepage":
        host = _perm_np(np.arange(nreg), host_regs, _domain_bits(host_regs), keys[1])
        word |= host << REG_HOST_SHIFT
    M[regs_off : regs_off + nreg] = word
    M[regs_off + nreg : regs_off + 2 * nreg] = word

    period = 1e9 / rate
    F = np.array([period, jitter], dtype=np.float64)

    # Clocks: the first tick of each vCPU creates it.
    vs = np.arange(vcpus, dtype=np.int64)
    if scenario == "boot":  # the bootstrap processor first, the others once it brings them up
        start = period * np.where(vs == 0, 1.0, BOOT_AP_DELAY + vs)
    else:
        start = period * (1.0 + vs / vcpus)
    ht = np.maximum(start, 1.0).astype(np.int64)
    if vcpus <= LIN_VCPUS:
        M[clk_off : clk_off + vcpus] = ht
    else:
        order = np.lexsort((vs, ht))  # sorted by (ts, vcpu): already a heap
        M[clk_off : clk_off + vcpus] = ht[order]
        M[clk_off + vcpus : clk_off + 2 * vcpus] = vs[order]

    # boot: each vCPU walks its own slice of the main area.
    main_gfns = main * _REGION
    lo = vs * main_gfns // vcpus
    hi = (vs + 1) * main_gfns // vcpus
    empty_slice = hi <= lo
    lo[empty_slice], hi[empty_slice] = 0, main_gfns
    for row, values in ((V_LO, lo), (V_HI, hi), (V_CUR, lo)):
        M[vc_off + row * vcpus : vc_off + (row + 1) * vcpus] = values
    return _State(M, F)


class _Blocks:
    """The lazy stream of event blocks that :func:`generate` returns: each block a new array.

    :func:`write` drives the kernel itself instead (:func:`_write_binary`), into a few reused
    buffers; both continue from wherever the stream is, so the events are the same.
    """

    def __init__(self, st: _State, block_events: int) -> None:
        self.state = st
        self.block_events = block_events

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        st = self.state
        while not st.M[S_DONE]:
            block = np.empty(self.block_events, dtype=EVENT_DTYPE)
            n = _fill(st, block)
            if n:
                return block[:n]
        raise StopIteration


def _fill(st: _State, block: np.ndarray) -> int:
    """Run the kernel into ``block``: the number of events it now holds."""
    with np.errstate(over="ignore"):  # pure-Python runs (NUMBA_DISABLE_JIT) wrap like numba
        return _run(block.view("<u8"), st.M, st.F)


def write(
    out_path: str,
    header: TraceHeader,
    blocks: Iterable[np.ndarray],
    output: TraceOutput | None = None,
) -> int:
    """Write the blocks to ``out_path`` by the rule of :mod:`kvmcache.trace.output` (YAML by
    extension, at most YAML_EVENT_LIMIT events; else binary, atomic), through ``output`` when
    the command checked OUT already. Returns the number of events written.

    For a binary trace the events are generated on a second thread (the kernel releases the GIL)
    while this one writes: a stream from :func:`generate` into a few small reused buffers
    (:func:`_write_binary`), any other iterable two blocks ahead at most. The order, and so the
    file, is the same.
    """
    out = output or TraceOutput(out_path, command="synth", force=True)

    def feed(w: BinaryWriter) -> None:
        if isinstance(blocks, _Blocks):
            _write_binary(w, blocks.state)
        else:
            for block in _ahead(blocks, depth=2):
                w.write(block)

    return out.write(header, blocks, feed=feed)


def _write_binary(w: BinaryWriter, st: _State) -> None:
    """Generate the rest of a stream into ``w``: the kernel fills WRITE_BUFFERS reused buffers of
    WRITE_BLOCK_EVENTS events on a worker thread (it releases the GIL) while this one writes.
    Small reused buffers stay in the caches, so the writer copies them out of the cache."""
    free: queue.Queue[np.ndarray | None] = queue.Queue()
    full: queue.Queue[tuple[np.ndarray | None, int, BaseException | None]] = queue.Queue()
    for _ in range(WRITE_BUFFERS):
        free.put(np.empty(WRITE_BLOCK_EVENTS, dtype=EVENT_DTYPE))

    def produce() -> None:
        try:
            while not st.M[S_DONE]:
                buf = free.get()
                if buf is None:  # the writer gave up
                    return
                full.put((buf, _fill(st, buf), None))
        except BaseException as e:  # handed to the writer, raised there
            full.put((None, 0, e))
            return
        full.put((None, 0, None))

    worker = threading.Thread(target=produce, name="kvmcache-synth", daemon=True)
    worker.start()
    try:
        while True:
            buf, n, error = full.get()
            if error is not None:
                raise error
            if buf is None:
                return
            w.write(buf[:n])
            free.put(buf)
    finally:
        free.put(None)
        worker.join()


def _ahead(items: Iterable[np.ndarray], depth: int) -> Iterator[np.ndarray]:
    """Iterate ``items`` on a worker thread, at most ``depth`` items ahead of the consumer."""
    q: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(("item", item))
            q.put(("end", None))
        except BaseException as e:  # handed to the consumer, raised there
            q.put(("error", e))

    worker = threading.Thread(target=produce, name="kvmcache-synth", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()
