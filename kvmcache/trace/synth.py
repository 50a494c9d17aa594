"""Synthetic guest-fault traces (`kvmcache synth`): seeded scenarios streamed as event blocks.

One numba kernel generates every scenario, a block of events per call. It merges per-vCPU
clocks (a min-heap) into non-decreasing timestamps and keeps a compact model of what is mapped
(a bitmap of 4 KiB leaves and a flags word per 2 MiB region, per root) that follows MODEL.md
section 5, so every unmap names a present leaf and every split a present 2 MiB leaf. Memory is
sized from the guest memory, never from the event count. docs/synth.md describes the model.

This is the only module of ``kvmcache.trace`` that imports numba; the CLI imports it only
when ``kvmcache synth`` runs.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from numba import njit

from kvmcache.errors import KvmcacheError
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
    empty,
)
from kvmcache.trace.sizes import size_bytes

#: Scenario name -> one-line description (``kvmcache synth --list``).
SCENARIOS: dict[str, str] = {
    "boot": "VM and vCPUs created, guest touches memory mostly sequentially at 4 KiB "
    "(private), a few shared I/O-buffer faults, VM destroyed",
    "steady": "booted guest: random faults over a working set, 4 KiB and 2 MiB leaves, "
    "repeated (spurious) faults, private<->shared conversions (unmap then fault)",
    "hugepage-split": "mostly 2 MiB private leaves, later split to 4 KiB, then 4 KiB unmaps "
    "and refaults",
    "churn": "vCPUs created and destroyed repeatedly while the guest faults and unmaps",
    "scatter": "4 KiB faults and unmaps in runs; with 4k-random backing every page lands "
    "in its own 2 MiB host range (worst case for PAMT pairs), with hugepage backing the best case",
}

BACKINGS: tuple[str, ...] = ("hugepage", "4k-contiguous", "4k-random")

#: Backing used when ``backing`` is not given.
DEFAULT_BACKING: dict[str, str] = {
    "boot": "4k-contiguous",
    "steady": "hugepage",
    "hugepage-split": "hugepage",
    "churn": "4k-contiguous",
    "scatter": "4k-random",
}

DEFAULT_VCPUS = 4
DEFAULT_GUEST_MEMORY = "4GiB"
DEFAULT_HOST_MEMORY = "16GiB"
DEFAULT_EVENTS = 1_000_000
DEFAULT_RATE = 50_000.0  # events per second per vCPU
DEFAULT_JITTER = 0.5
DEFAULT_PRIVATE_FRACTION = {"tdx": 0.9, "vmx": 0.0}

#: YAML output is for small, reviewable traces.
YAML_EVENT_LIMIT = 100_000
#: Events per generated block: 8 MiB of records, small enough for the C allocator to reuse
#: freed blocks (a fresh 32 MiB block costs thousands of page faults) and large enough to
#: amortise a kernel call.
BLOCK_EVENTS = 1 << 18
#: Largest guest memory: the mapped-leaf bitmaps take guest_memory / 16384 bytes (256 MiB).
MAX_GUEST_MEMORY = 4 << 40
MAX_HOST_MEMORY = 1 << 60

_REGION = 512  # 4 KiB pages per 2 MiB region
_YAML_EXTS = (".yaml", ".yml")

# --- sizes ------------------------------------------------------------------------------------


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes of a size such as ``4GiB``, ``512M``, ``0x1000 K`` or ``4096`` (units are powers of 1024)."""
    if isinstance(text, bool):
        raise KvmcacheError(f"bad {what} {text!r}: expected a size such as 4GiB")
    if isinstance(text, int):
        if text < 0:
            raise KvmcacheError(f"bad {what} {text}: must not be negative")
        return text
    size = size_bytes(str(text), unit_required=False)
    if size is None:
        raise KvmcacheError(
            f"bad {what} {text!r}: expected a number and a unit B, K/KB/KiB, M/MB/MiB, "
            "G/GB/GiB or T/TB/TiB, such as 4GiB"
        )
    return size


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

# The kernel's whole state is one int64 array M, so that calls between its functions pass
# little: the scalars below, then (at offsets kept in M) the per-vCPU rows, the clock heap,
# the rings, the region flags, two lookup tables and the 4 KiB leaf bitmaps.
(
    S_SCEN,
    S_TDX,
    S_BACKING,
    S_MAIN_REGS,  # regions [0, MAIN_REGS) are the main (private) area
    S_WIN_REGS,  # regions [MAIN_REGS, MAIN_REGS + WIN_REGS) are the shared window
    S_WIN_WS,  # regions of the window the guest actually uses
    S_WS_REGS,  # working set (regions of the main area)
    S_HPFNS,  # host pfns
    S_HPFN_BITS,
    S_BASE,  # 4k-contiguous: pfn = BASE + gfn
    S_KEY_BACK,
    S_PF,  # a fault is private when a 32-bit random number is below this
    S_NVCPU,
    S_NREG,
    S_WORDS,  # bitmap words per root
    S_REM,  # body events still to generate (all but vm_create and vm_destroy)
    S_BODY,  # body events in total
    S_STARTED,
    S_DONE,
    S_LAST_TS,
    S_EXTRA,  # extra periods the current vCPU sleeps (churn downtime)
    S_FRESH,  # hugepage-split: regions of the working-set order used so far
    S_RNG,  # splitmix64 state (the bits of a uint64)
    S_VC,  # offsets of the sections of M
    S_HT,
    S_HV,
    S_RINGS,
    S_REGS,
    S_WS,  # table: working-set index -> main region (a seeded permutation)
    S_HOSTREG,  # table, hugepage backing: guest region -> host region
    S_BITS,
    S_RING_N,  # pushes per ring: N_RINGS slots from here
) = range(32)
N_RINGS = 4
S_ACT = S_RING_N + N_RINGS  # the actions of one tick: MAXK x (op, gfn, level, root)
MAXK = 3  # most events one tick emits (split + unmap + fault)
S_SIZE = S_ACT + 4 * MAXK

F_PERIOD, F_JITTER = range(2)

# Per-vCPU rows.
V_LIVE, V_CUR, V_LO, V_HI, V_RUN, V_LASTG, V_LASTL, V_LASTP = range(8)
V_ROWS = 8

# Rings of recently mapped things, sampled for unmaps and splits (entries: index * 2 + root).
R_4K, R_2M, R_SPLIT, R_CONV = range(N_RINGS)
RING = 1 << 16
RING_MASK = RING - 1

ROOT_DIRECT, ROOT_MIRROR = 0, 1
# Per region and root: a 2 MiB leaf is present; a level-1 table exists; the guest maps the
# region at 2 MiB when it can (set once, at the start, in both roots).
REG_LEAF2M, REG_TBL1, REG_HUGE = 1, 2, 4

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
# - the scenario functions and the action step inlined into the loop (numba IR inlining):
#   a call per layer costs as much as the layer's work.
def _jit(signature: str):
    return njit(signature, cache=True, nogil=True, _nrt=False)


_jit_inline = njit(cache=True, nogil=True, _nrt=False, inline="always")


# --- kernel: random numbers, backing, indexing ------------------------------------------------


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


@_jit("int64(int64[::1], int64)")
def _pfn(M, gfn):
    """Host pfn of a guest page under the backing model."""
    b = M[S_BACKING]
    if b == B_HUGE:
        return M[np.uint64(M[S_HOSTREG] + (gfn >> 9))] * _REGION + (gfn & (_REGION - 1))
    if b == B_CONTIG:
        return M[S_BASE] + gfn
    return _perm(gfn, M[S_HPFNS], M[S_HPFN_BITS], M[S_KEY_BACK])


@_jit("uint64(int64[::1], int64, int64)")
def _vcx(M, row, v):
    """Index in M of a per-vCPU value (unsigned: numba then skips the negative-index check)."""
    return np.uint64(M[S_VC] + row * M[S_NVCPU] + v)


@_jit("uint64(int64[::1], int64, int64)")
def _regx(M, root, r):
    """Index in M of the flags of region r in a root."""
    return np.uint64(M[S_REGS] + root * M[S_NREG] + r)


@_jit("uint64(int64[::1], int64, int64)")
def _wordx(M, root, gfn):
    """Index in M of the bitmap word holding gfn's 4 KiB leaf."""
    return np.uint64(M[S_BITS] + root * M[S_WORDS] + (gfn >> 6))


@_jit("boolean(int64[::1], int64, int64)")
def _has4k(M, root, gfn):
    return (M[_wordx(M, root, gfn)] >> (gfn & 63)) & 1 != 0


@_jit("void(int64[::1], int64, int64)")
def _push(M, which, entry):
    k = M[S_RING_N + which]
    M[np.uint64(M[S_RINGS] + which * RING + (k & RING_MASK))] = entry
    M[S_RING_N + which] = k + 1


@_jit("int64(int64[::1], int64)")
def _sample(M, which):
    """A random entry of a ring, or -1 when it is empty."""
    k = M[S_RING_N + which]
    if k == 0:
        return -1
    return M[np.uint64(M[S_RINGS] + which * RING + _below(M, min(k, RING)))]


@_jit("int64(int64[::1], int64)")
def _pick4k(M, which):
    """A present 4 KiB leaf (gfn * 2 + root) from a ring of them, or -1 after a few misses."""
    for _ in range(4):
        e = _sample(M, which)
        if e < 0:
            return -1
        if _has4k(M, e & 1, e >> 1):
            return e
    return -1


@_jit("int64(int64[::1])")
def _pick2m(M):
    """A present 2 MiB leaf (region * 2 + root), or -1 after a few misses."""
    for _ in range(8):
        e = _sample(M, R_2M)
        if e < 0:
            return -1
        if M[_regx(M, e & 1, e >> 1)] & REG_LEAF2M:
            return e
    return -1


# --- kernel: deciding a tick (reads the model, writes actions into M[S_ACT:]) ------------------


@_jit("void(int64[::1], int64, int64, int64, int64, int64)")
def _act(M, j, op, gfn, level, root):
    """Action j of this tick."""
    a = S_ACT + 4 * j
    M[a] = op
    M[a + 1] = gfn
    M[a + 2] = level
    M[a + 3] = root


@_jit("int64(int64[::1], int64)")
def _root_of(M, u):
    """The root of a fault, from 32 random bits: mirror with the private fraction (tdx only),
    else direct. Only the top 23 bits decide, so the low 9 can pick a page in a region."""
    return ROOT_MIRROR if (u >> 9) < (M[S_PF] >> 9) else ROOT_DIRECT


@_jit("int64(int64[::1], int64, int64)")
def _window_gfn(M, lo, hi):
    """A gfn in the used part of the shared window, from 32 random bits and 9 more."""
    r = M[S_MAIN_REGS] + ((lo * M[S_WIN_WS]) >> 32)
    return r * _REGION + (hi & (_REGION - 1))


@_jit("int64(int64[::1])")
def _ws_region(M):
    """A random region of the working set."""
    return M[np.uint64(M[S_WS] + _below(M, M[S_WS_REGS]))]


@_jit_inline
def _plain_fault(M, j):
    """A fault over the working set (either root) or the shared window, 2 MiB on huge regions.
    One random draw: the high half picks the root and the page, the low half the region."""
    z = _u64(M)
    hi = (z >> 32) & _M32
    lo = z & _M32
    root = _root_of(M, hi)
    if root == ROOT_DIRECT and M[S_WIN_REGS] > 0:
        _act(M, j, OP_FAULT, _window_gfn(M, lo, hi), 1, root)
        return j + 1
    r = M[np.uint64(M[S_WS] + ((lo * M[S_WS_REGS]) >> 32))]
    if M[_regx(M, root, r)] & REG_HUGE:
        _act(M, j, OP_FAULT, r * _REGION, 2, root)
    else:
        _act(M, j, OP_FAULT, r * _REGION + (hi & (_REGION - 1)), 1, root)
    return j + 1


@_jit("int64(int64[::1])")
def _invalidate(M):
    """Unmap a present leaf (an MMU-notifier invalidation); a plain fault when none is found."""
    if _u32(M) < _T_HALF:
        e = _pick2m(M)
        if e >= 0:
            _act(M, 0, OP_UNMAP, (e >> 1) * _REGION, 2, e & 1)
            return 1
    e = _pick4k(M, R_4K)
    if e >= 0:
        _act(M, 0, OP_UNMAP, e >> 1, 1, e & 1)
        return 1
    return _plain_fault(M, 0)


@_jit("int64(int64[::1])")
def _to_shared(M):
    """Private -> shared conversion at a working-set gfn: [split], unmap private, fault shared."""
    gfn = _ws_region(M) * _REGION + _below(M, _REGION)
    huge = (M[_regx(M, ROOT_MIRROR, gfn >> 9)] & REG_LEAF2M) != 0
    mapped = huge or _has4k(M, ROOT_MIRROR, gfn)
    k = 1 + (1 if mapped else 0) + (1 if huge else 0)
    if k > M[S_REM]:
        return _plain_fault(M, 0)
    j = 0
    if huge:
        _act(M, j, OP_SPLIT, gfn - (gfn & (_REGION - 1)), 2, ROOT_MIRROR)
        j += 1
    if mapped:
        _act(M, j, OP_UNMAP, gfn, 1, ROOT_MIRROR)
        j += 1
    _act(M, j, OP_FAULT, gfn, 1, ROOT_DIRECT)
    _push(M, R_CONV, gfn * 2 + ROOT_DIRECT)
    return k


@_jit("int64(int64[::1])")
def _to_private(M):
    """Shared -> private conversion of a converted page: unmap shared, fault private."""
    e = _pick4k(M, R_CONV)
    if e < 0 or M[S_REM] < 2:
        return _plain_fault(M, 0)
    _act(M, 0, OP_UNMAP, e >> 1, 1, ROOT_DIRECT)
    _act(M, 1, OP_FAULT, e >> 1, 1, ROOT_MIRROR)
    return 2


@_jit_inline
def _act_boot(M, v, u):
    """boot: the vCPU's next page of its slice (2% jumps), or a shared I/O-buffer fault."""
    root = _root_of(M, u)
    z = _u64(M)
    zhi = (z >> 32) & _M32
    zlo = z & _M32
    if root == ROOT_DIRECT and M[S_WIN_REGS] > 0:
        _act(M, 0, OP_FAULT, _window_gfn(M, zlo, zhi), 1, root)
        return 1
    lo = M[_vcx(M, V_LO, v)]
    hi = M[_vcx(M, V_HI, v)]
    cx = _vcx(M, V_CUR, v)
    gfn = M[cx]
    if zlo < _T_BOOT_JUMP:
        gfn = lo + ((zhi * (hi - lo)) >> 32)
    M[cx] = lo if gfn + 1 >= hi else gfn + 1
    _act(M, 0, OP_FAULT, gfn, 1, root)
    return 1


@_jit_inline
def _act_steady(M, v, u):
    """steady: repeat the last fault, convert a page either way, or a plain fault."""
    if u < _T_STEADY_REPEAT:
        level = M[_vcx(M, V_LASTL, v)]
        if level > 0:  # the same fault again: spurious while the leaf stays
            _act(M, 0, OP_FAULT, M[_vcx(M, V_LASTG, v)], level, M[_vcx(M, V_LASTP, v)])
            return 1
        return _plain_fault(M, 0)
    if u < _T_STEADY_TO_PRIVATE:
        if M[S_PF] == 0:  # no private memory: an invalidation instead of a conversion
            return _invalidate(M)
        if u < _T_STEADY_TO_SHARED:
            return _to_shared(M)
        return _to_private(M)
    return _plain_fault(M, 0)


@_jit("int64(int64[::1])")
def _fresh_region(M):
    """The next never-used main region (a random one once all are used)."""
    k = M[S_FRESH]
    if k < M[S_MAIN_REGS]:
        M[S_FRESH] = k + 1
        return M[M[S_WS] + k]  # the working set is all of the main area, in seeded order
    return _below(M, M[S_MAIN_REGS])


@_jit_inline
def _act_split(M, v, u):
    """hugepage-split: map fresh regions at 2 MiB, then split, unmap and refault 4 KiB."""
    root = _root_of(M, u)
    if root == ROOT_DIRECT and M[S_WIN_REGS] > 0:  # shared I/O: 4 KiB in the window
        z = _u64(M)
        _act(M, 0, OP_FAULT, _window_gfn(M, z & _M32, (z >> 32) & _M32), 1, root)
        return 1
    done = M[S_BODY] - M[S_REM]
    if done * 10 >= SPLIT_PHASE_A_TENTHS * M[S_BODY] or M[S_FRESH] >= M[S_MAIN_REGS]:
        u = _u32(M)
        if u < _T_SPLIT_SPLIT:  # split a present 2 MiB leaf
            e = _pick2m(M)
            if e >= 0:
                _act(M, 0, OP_SPLIT, (e >> 1) * _REGION, 2, e & 1)
                return 1
        elif u >= _T_SPLIT_MAP2M or u < _T_SPLIT_UNMAP:
            e = _sample(M, R_SPLIT)  # a page of a split region
            if e >= 0:
                gfn = (e >> 1) * _REGION + _below(M, _REGION)
                root = e & 1
                if u < _T_SPLIT_UNMAP and _has4k(M, root, gfn):
                    _act(M, 0, OP_UNMAP, gfn, 1, root)
                else:  # a refault after an unmap, else spurious
                    _act(M, 0, OP_FAULT, gfn, 1, root)
                return 1
    _act(M, 0, OP_FAULT, _fresh_region(M) * _REGION, 2, root)
    return 1


@_jit_inline
def _act_churn(M, v, u):
    """churn: destroy the vCPU (it comes back later), unmap a present leaf, or a plain fault."""
    if u < _T_CHURN_DESTROY:
        _act(M, 0, OP_VCPU_DESTROY, 0, 0, 0)
        return 1
    if u < _T_CHURN_UNMAP:
        return _invalidate(M)
    return _plain_fault(M, 0)


@_jit_inline
def _act_scatter(M, v, u):
    """scatter: unmap a present 4 KiB leaf, or the next page of the vCPU's current run."""
    if u < _T_SCATTER_UNMAP:
        e = _pick4k(M, R_4K)
        if e >= 0:
            _act(M, 0, OP_UNMAP, e >> 1, 1, e & 1)
            return 1
    z = _u64(M)
    zhi = (z >> 32) & _M32
    root = _root_of(M, zhi)
    if root == ROOT_DIRECT and M[S_WIN_REGS] > 0:
        _act(M, 0, OP_FAULT, _window_gfn(M, z & _M32, zhi), 1, root)
        return 1
    cx = _vcx(M, V_CUR, v)
    rx = _vcx(M, V_RUN, v)
    if M[rx] == 0:  # a new run: a random region, a random start page
        M[cx] = _below(M, M[S_MAIN_REGS]) * _REGION + _below(M, _REGION)
        M[rx] = SCATTER_RUN_MIN + _below(M, SCATTER_RUN_SPAN)
    gfn = M[cx]
    M[cx] = gfn - (gfn & (_REGION - 1)) + ((gfn + 1) & (_REGION - 1))
    M[rx] -= 1
    _act(M, 0, OP_FAULT, gfn, 1, root)
    return 1


@_jit_inline
def _decide(M, v, u):
    """The actions of one tick of vCPU v: its creation if it is not live, else the scenario's
    (u: 32 random bits drawn for the tick)."""
    if M[_vcx(M, V_LIVE, v)] == 0:
        _act(M, 0, OP_VCPU_CREATE, 0, 0, 0)
        return 1
    scen = M[S_SCEN]
    if scen == SC_BOOT:
        return _act_boot(M, v, u)
    if scen == SC_STEADY:
        return _act_steady(M, v, u)
    if scen == SC_SPLIT:
        return _act_split(M, v, u)
    if scen == SC_CHURN:
        return _act_churn(M, v, u)
    return _act_scatter(M, v, u)


# --- kernel: applying actions (emit the record, update the model) ----------------------------


@_jit("void(uint64[:, ::1], int64, int64, int64, int64, int64, int64, int64, int64)")
def _emit(out, n, ts, op, vcpu, gfn, pfn, level, flags):
    """Write one record into ``out`` (the block viewed as little-endian u64 words, 4 per record)."""
    out[n, 0] = np.uint64(ts)
    out[n, 1] = np.uint64(gfn)
    out[n, 2] = np.uint64(pfn)
    out[n, 3] = (
        np.uint64(vcpu)
        | (np.uint64(op) << np.uint64(32))
        | (np.uint64(level) << np.uint64(40))
        | (np.uint64(flags) << np.uint64(48))
    )


@_jit_inline
def _apply(out, n, M, ts, v, op, gfn, level, root):
    """Emit one action and apply it to the model of what is mapped (MODEL.md section 5)."""
    if op == OP_FAULT:  # 5.4 steps 3, 4 and 6
        if level == 2:
            gfn -= gfn & (_REGION - 1)
        _emit(out, n, ts, OP_FAULT, v, gfn, _pfn(M, gfn), level, root)
        M[_vcx(M, V_LASTG, v)] = gfn
        M[_vcx(M, V_LASTL, v)] = level
        M[_vcx(M, V_LASTP, v)] = root
        rx = _regx(M, root, gfn >> 9)
        rg = M[rx]
        if rg & REG_LEAF2M or _has4k(M, root, gfn):
            return  # spurious: a present leaf covers gfn
        if level == 2 and rg & REG_TBL1:
            if root == ROOT_MIRROR:
                level = 1  # mirror: level fit to the existing level-1 table
            else:
                w0 = _wordx(M, root, gfn)
                for i in range(8):  # direct: collapse, the subtree is zapped
                    M[w0 + np.uint64(i)] = 0
                rg &= ~REG_TBL1
        if level == 2:
            M[rx] = rg | REG_LEAF2M
            _push(M, R_2M, (gfn >> 9) * 2 + root)
        else:
            M[_wordx(M, root, gfn)] |= np.int64(1) << (gfn & 63)
            M[rx] = rg | REG_TBL1
            _push(M, R_4K, gfn * 2 + root)
    elif op == OP_UNMAP:  # 5.5: only ever of a present leaf
        _emit(out, n, ts, OP_UNMAP, 0, gfn, 0, level, root)
        if level == 1:
            M[_wordx(M, root, gfn)] &= ~(np.int64(1) << (gfn & 63))
        else:
            M[_regx(M, root, gfn >> 9)] &= ~REG_LEAF2M
    elif op == OP_SPLIT:  # 5.6: a present 2 MiB leaf becomes 512 present 4 KiB leaves
        _emit(out, n, ts, OP_SPLIT, 0, gfn, 0, 0, root)
        rx = _regx(M, root, gfn >> 9)
        M[rx] = (M[rx] & ~REG_LEAF2M) | REG_TBL1
        w0 = _wordx(M, root, gfn)
        for i in range(8):
            M[w0 + np.uint64(i)] = -1
        _push(M, R_SPLIT, (gfn >> 9) * 2 + root)
    elif op == OP_VCPU_CREATE:
        _emit(out, n, ts, OP_VCPU_CREATE, v, 0, 0, 0, 0)
        M[_vcx(M, V_LIVE, v)] = 1
    else:  # OP_VCPU_DESTROY
        _emit(out, n, ts, OP_VCPU_DESTROY, v, 0, 0, 0, 0)
        M[_vcx(M, V_LIVE, v)] = 0
        M[_vcx(M, V_LASTL, v)] = 0
        M[S_EXTRA] = CHURN_DOWNTIME


@_jit("void(int64[::1], int64, int64)")
def _sift_down(M, t, v):
    """Put (t, v) at the top of the (ts, vcpu) min-heap and restore the heap order."""
    ht = M[S_HT]
    hv = M[S_HV]
    size = M[S_NVCPU]
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


@_jit("int64(uint64[:, ::1], int64[::1], float64[::1])")
def _run(out, M, F):
    """Fill ``out`` (records as u64 words) with the next events; returns how many."""
    cap = out.shape[0]
    n = 0
    if M[S_STARTED] == 0:
        _emit(out, 0, 0, OP_VM_CREATE, 0, 0, 0, 0, 0)
        M[S_STARTED] = 1
        n = 1
    period = F[F_PERIOD]
    jitter = F[F_JITTER]
    while M[S_REM] > 0 and n + MAXK <= cap:
        ts = M[M[S_HT]]
        v = M[M[S_HV]]
        z = _u64(M)
        k = _decide(M, v, (z >> 32) & _M32)
        for j in range(k):
            a = S_ACT + 4 * j
            _apply(out, n + j, M, ts, v, M[a], M[a + 1], M[a + 2], M[a + 3])
        n += k
        M[S_REM] -= k
        M[S_LAST_TS] = ts
        step = period * (k + M[S_EXTRA]) * (1.0 + jitter * ((z & _M32) * (2.0 / _P32) - 1.0))
        M[S_EXTRA] = 0
        _sift_down(M, ts + np.int64(step), v)
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

    M: np.ndarray  # int64: scalars, per-vCPU rows, clock heap, rings, tables, bitmaps
    F: np.ndarray  # float64: period and jitter


def _check_number(name: str, value: float, lo: float, hi: float, hi_open: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise KvmcacheError(f"bad {name} {value!r}: not a number") from None
    if not math.isfinite(x) or x < lo or x > hi or (hi_open and x == hi):
        bound = f"[{lo:g}, {hi:g})" if hi_open else f"[{lo:g}, {hi:g}]"
        raise KvmcacheError(f"bad {name} {value!r}: must be in {bound}")
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
            f"bad event count {events!r}: must be at least 2 (vm_create and vm_destroy)"
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
    return header, _blocks(state, max(MAXK + 2, int(block_events)))


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
    ht_off = vc_off + V_ROWS * vcpus
    hv_off = ht_off + vcpus
    rings_off = hv_off + vcpus
    regs_off = rings_off + N_RINGS * RING
    ws_off = regs_off + 2 * nreg
    hostreg_off = ws_off + ws_regs
    bits_off = hostreg_off + (nreg if backing == "hugepage" else 0)
    words = gfn_limit // 64
    M = np.zeros(bits_off + 2 * words, dtype=np.int64)
    M[S_VC], M[S_HT], M[S_HV], M[S_RINGS] = vc_off, ht_off, hv_off, rings_off
    M[S_REGS], M[S_WS], M[S_HOSTREG], M[S_BITS] = regs_off, ws_off, hostreg_off, bits_off

    M[S_SCEN] = _SCENARIO_CODE[scenario]
    M[S_TDX] = 1 if vm == "tdx" else 0
    M[S_BACKING] = _BACKING_CODE[backing]
    M[S_MAIN_REGS] = main
    M[S_WIN_REGS] = win
    M[S_WIN_WS] = min(win, BOOT_IO_REGIONS) if scenario == "boot" else max(1, win // 4)
    M[S_WS_REGS] = ws_regs
    M[S_HPFNS] = host_pfns
    M[S_HPFN_BITS] = _domain_bits(host_pfns)
    M[S_BASE] = (keys[0] % (host_regs - nreg + 1)) * _REGION
    M[S_KEY_BACK] = keys[1]
    M[S_PF] = round(pf * _P32) if vm == "tdx" else 0
    M[S_NVCPU] = vcpus
    M[S_NREG] = nreg
    M[S_WORDS] = words
    M[S_RNG] = keys[5]
    M[S_REM] = M[S_BODY] = events - 2

    # Tables: the working set in seeded order; the host region of each guest region; the
    # regions the guest maps at 2 MiB (exactly huge_permille of them, chosen by a permutation).
    M[ws_off : ws_off + ws_regs] = _perm_np(np.arange(ws_regs), main, _domain_bits(main), keys[2])
    if backing == "hugepage":
        M[hostreg_off : hostreg_off + nreg] = _perm_np(
            np.arange(nreg), host_regs, _domain_bits(host_regs), keys[1]
        )
    if huge_permille:
        rank = _perm_np(np.arange(nreg), nreg, _domain_bits(nreg), keys[3])
        huge = np.where(rank * 1000 < huge_permille * nreg, REG_HUGE, 0)
        M[regs_off : regs_off + nreg] = huge
        M[regs_off + nreg : regs_off + 2 * nreg] = huge

    period = 1e9 / rate
    F = np.array([period, jitter], dtype=np.float64)

    # Clocks: the first tick of each vCPU creates it.
    vs = np.arange(vcpus, dtype=np.int64)
    if scenario == "boot":  # the bootstrap processor first, the others once it brings them up
        start = period * np.where(vs == 0, 1.0, BOOT_AP_DELAY + vs)
    else:
        start = period * (1.0 + vs / vcpus)
    ht = np.maximum(start, 1.0).astype(np.int64)
    order = np.lexsort((vs, ht))  # sorted by (ts, vcpu): already a heap
    M[ht_off : ht_off + vcpus] = ht[order]
    M[hv_off : hv_off + vcpus] = vs[order]

    # boot: each vCPU walks its own slice of the main area.
    main_gfns = main * _REGION
    lo = vs * main_gfns // vcpus
    hi = (vs + 1) * main_gfns // vcpus
    empty_slice = hi <= lo
    lo[empty_slice], hi[empty_slice] = 0, main_gfns
    for row, values in ((V_LO, lo), (V_HI, hi), (V_CUR, lo)):
        M[vc_off + row * vcpus : vc_off + (row + 1) * vcpus] = values
    return _State(M, F)


def _blocks(st: _State, block_events: int) -> Iterator[np.ndarray]:
    while not st.M[S_DONE]:
        block = np.empty(block_events, dtype=EVENT_DTYPE)
        words = block.view("<u8").reshape(block_events, 4)
        with np.errstate(over="ignore"):  # pure-Python runs (NUMBA_DISABLE_JIT) wrap like numba
            n = _run(words, st.M, st.F)
        if n:
            yield block[:n]


def is_yaml_path(path: str) -> bool:
    """True when ``path`` names a YAML trace (by extension)."""
    return path.lower().endswith(_YAML_EXTS)


def write(out_path: str, header: TraceHeader, blocks: Iterable[np.ndarray]) -> int:
    """Write the blocks to ``out_path``: YAML by extension (at most YAML_EVENT_LIMIT events),
    else binary, streamed through BinaryWriter (atomic). Returns the number of events written.

    For a binary trace the blocks are produced on a second thread (the kernel releases the GIL)
    while this one writes, two blocks in flight at most: the order, and so the file, is the same.
    """
    if not is_yaml_path(out_path):
        with BinaryWriter(out_path, header) as w:
            for block in _ahead(blocks, depth=2):
                w.write(block)
            return w.count
    if header.count is not None and header.count > YAML_EVENT_LIMIT:
        raise KvmcacheError(_yaml_too_big(out_path, header.count))
    parts: list[np.ndarray] = []
    total = 0
    for block in blocks:
        total += len(block)
        if total > YAML_EVENT_LIMIT:
            raise KvmcacheError(_yaml_too_big(out_path, total))
        parts.append(block)
    from kvmcache.trace.yamlfmt import write_yaml

    events = np.concatenate(parts) if parts else empty(0)
    write_yaml(out_path, header, events)
    return total


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


def _yaml_too_big(path: str, n: int) -> str:
    return (
        f"{path}: {n:,} events is too many for a YAML trace (at most {YAML_EVENT_LIMIT:,}); "
        "write a binary .kvmt trace instead"
    )


def check_output(out_path: str, *, force: bool = False, events: int | None = None) -> None:
    """Refuse an OUT that is standard output, a directory, an existing file without ``force``,
    or a YAML file for more than YAML_EVENT_LIMIT events."""
    if out_path == "-":
        raise KvmcacheError("synth: OUT must be a file path, not standard output")
    if os.path.isdir(out_path):
        raise KvmcacheError(f"{out_path}: is a directory; OUT must be a file path")
    if os.path.lexists(out_path) and not force:
        raise KvmcacheError(f"{out_path}: already exists; use --force to overwrite it")
    if events is not None and is_yaml_path(out_path) and events > YAML_EVENT_LIMIT:
        raise KvmcacheError(_yaml_too_big(out_path, events))
