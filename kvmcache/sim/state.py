"""Allocation and sizing of the model's state from the trace header and parameters.

The kernel sees three arrays (see ``kernel.py``): ``m`` (int64: fixed slots, then the
regions listed in :data:`REGIONS`), ``lf`` (uint32 leaves) and ``u`` (uint64).

Memory (documented in docs/model.md): per guest 4 KiB page 8 bytes of leaf state (two
roots x uint32) plus about 1/64 byte for 2 MiB / 1 GiB leaves and tables; per 2 MiB host
range (guest memory and the kernel allocation region) 32 bytes; per vCPU a few cache
stacks; the host free stack grows with the pages the model ever allocated. Arrays are
``np.zeros`` so untouched parts of a sparse guest cost address space, not resident memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from kvmcache.errors import KvmcacheError
from kvmcache.params import MAX_PFN
from kvmcache.sim import kernel as K
from kvmcache.sim.counters import STRATEGIES
from kvmcache.trace.events import TraceHeader

#: Refuse a model whose state would need more address space than this.
MAX_STATE_BYTES = 64 << 30
INITIAL_VCPUS = 8
#: gfns the presence bitmap of 4 KiB leaves covers at most (128 GiB of guest: 4 MiB per root).
PBITS_MAX_GFNS = 1 << 25
INITIAL_FSTACK = 1 << 16
INITIAL_SLOTS = 1024
#: Hosts with more 2 MiB ranges than this (2 TiB of host memory and kernel region) keep
#: per-range state only for the ranges the trace touches (a hash), not densely.
DENSE_RANGES_MAX = 1 << 20
INITIAL_SPARSE_RANGES = 4096
#: Software prefetch in the kernel's fast path (kernel.P_PREFETCH): from this guest size
#: (gfn_limit, 16 GiB) each event prefetches the 4 KiB presence-bitmap word and the 4 KiB
#: leaf of the event PREFETCH_AHEAD records on. Measured (interleaved A/B, docs/model.md):
#: `steady` +13-33% from 16 GiB up (`boot` -4 to +8%), where the leaves and bitmap words of
#: a working set of gigabytes spill out of the 2 MiB per-core L2; at 8 GiB a toss-up; at
#: 4 GiB they mostly hit L2 and the prefetch's own work costs up to 8%. A sparse host or a
#: timeline (no fast path) never prefetches.
PREFETCH_MIN_GFNS = 1 << 22
PREFETCH_AHEAD = 16
#: Section 8 costs, kept as u64 in u.
NS_SLOTS = (
    (K.U_NS_ALLOC, "ns_alloc"),
    (K.U_NS_SLAB, "ns_slab"),
    (K.U_NS_TOPUP, "ns_topup"),
    (K.U_NS_FREE, "ns_free"),
    (K.U_NS_ADD, "ns_pamt_add"),
    (K.U_NS_REMOVE, "ns_pamt_remove"),
    (K.U_NS_FAULT, "ns_fault"),
    (K.U_NS_LINK, "ns_link"),
)

#: Variable regions of m, in layout order, with their offset slot; per-vCPU regions
#: are rows of a per-vCPU stride.
REGIONS = (
    ("vmap", K.O_VMAP),
    ("vlive", K.O_VLIVE),
    ("vcnt", K.O_VCNT),
    ("spt", K.O_SPT),
    ("sept", K.O_SEPT),
    ("pamt", K.O_PAMT),
    ("vctrl", K.O_VCTRL),
    ("tdctrl", K.O_TDCTRL),
    ("refc", K.O_REFC),
    ("pair", K.O_PAIR),
    ("cached", K.O_CACHED),
    ("rhash", K.O_RHASH),
    ("rkey", K.O_RKEY),
    ("hkey", K.O_HKEY),
    ("pbits", K.O_PBITS),
    ("pb2", K.O_PB2),
    ("pb3", K.O_PB3),
    ("l1", K.O_L1),
    ("skey", K.O_SKEY),
    ("sspt", K.O_SSPT),
    ("ssept", K.O_SSEPT),
    ("samples", K.O_SAMPLES),
    ("fstack", K.O_FSTACK),
)


class State(NamedTuple):
    """The three arrays the kernel works on."""

    m: np.ndarray
    lf: np.ndarray
    u: np.ndarray


def _align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def kernel_base(header: TraceHeader, params: Mapping[str, int | bool]) -> int:
    """First pfn of the kernel allocation region (``kernel_base_pfn``, or after host memory)."""
    base = int(params["kernel_base_pfn"])
    return base if base else _align_up(header.host_pfn_limit, 512)


def effective_strategy(header: TraceHeader, alloc: str) -> str:
    """On a vmx trace every strategy behaves as ``none``."""
    if alloc not in STRATEGIES:
        raise KvmcacheError(
            f"unknown allocation strategy {alloc!r} (known: {', '.join(STRATEGIES)})"
        )
    return alloc if header.is_tdx else "none"


def grow_margin(params: Mapping[str, int | bool], root_level: int, pamt_target: int) -> int:
    """An upper bound of fresh pages one event can allocate (free-stack head-room)."""
    cap = int(params["capacity"])
    ctrl = sum(int(params[n]) for n in ("tdr_pages", "tdcs_pages", "tdvpr_pages", "tdcx_pages"))
    per_topup = 4 * cap + pamt_target + 8
    return 2 * (3 * ctrl + (root_level + 3) * per_topup + 64)


def _sizes(m: np.ndarray) -> dict[str, int]:
    """Region sizes implied by the fixed slots of m."""
    nv = int(m[K.P_NVCPU])
    nr = int(m[K.Z_NRANGES])
    ns = int(m[K.Z_SLOTS])
    nh = int(m[K.Z_HCAP])
    return {
        "vmap": K.MAX_VCPUS,
        "vlive": nv,
        "vcnt": 5 * nv,
        "spt": nv * int(m[K.Z_SPT]),
        "sept": nv * int(m[K.Z_SEPT]),
        "pamt": nv * int(m[K.Z_PAMT]),
        "vctrl": nv * int(m[K.Z_VCTRL]),
        "tdctrl": max(1, int(m[K.P_TDR] + m[K.P_TDCS])),
        "refc": nr,
        "pair": 2 * nr,
        "cached": nr,
        "rhash": 2 * int(m[K.Z_RHCAP]) if m[K.Z_RSPARSE] else 0,
        "rkey": nr if m[K.Z_RSPARSE] else 0,
        "hkey": 2 * nh,  # key, slot pairs
        "pbits": 2 * int(m[K.Z_PBITS]),
        "pb2": 2 * int(m[K.Z_PB2]),
        "pb3": 2 * int(m[K.Z_PB3]),
        "l1": 2 * int(m[K.Z_L1]),
        "skey": ns,
        "sspt": ns,
        "ssept": ns,
        "samples": max(1, int(m[K.P_NSAMPLES])) * K.N_T,
        "fstack": int(m[K.P_FSTACK]),
    }


def _layout(fixed: np.ndarray, old: np.ndarray | None = None) -> np.ndarray:
    """A new m with the fixed slots of ``fixed`` and regions laid out after them.

    With ``old``, each region's old contents are copied to the start of its new place
    (per-vCPU regions keep their row strides, so old rows stay valid).
    """
    sizes = _sizes(fixed)
    total = K.FIXED + sum(sizes.values())
    m = np.zeros(total, dtype=np.int64)
    m[: K.FIXED] = fixed[: K.FIXED]
    off = K.FIXED
    for name, slot in REGIONS:
        m[slot] = off
        if old is not None:
            old_sizes = _sizes(old)
            src = int(old[slot])
            n = min(old_sizes[name], sizes[name])
            m[off : off + n] = old[src : src + n]
        off += sizes[name]
    return m


def build(
    header: TraceHeader,
    params: Mapping[str, int | bool],
    alloc: str,
    *,
    sample_every: int = 0,
    nsamples: int = 0,
) -> State:
    """A fresh model state for one strategy on one trace."""
    eff = effective_strategy(header, alloc)
    strat = STRATEGIES.index(eff)
    tdx = header.is_tdx
    dpamt = tdx and eff != "none"
    L = header.root_level
    cap = int(params["capacity"])
    pairs = int(params["pamt_pairs"])
    target = 2 * pairs + (int(params["prealloc_sept"]) if eff == "dpamt-prealloc" else 0)
    if not dpamt:
        target = 0
    kbase = kernel_base(header, params)
    kpages = int(params["kernel_pages"])
    host_ranges = -(-max(header.host_pfn_limit, kbase + kpages) // 512)
    if host_ranges * 512 > MAX_PFN:
        raise KvmcacheError(
            f"{header.path or 'trace'}: host memory plus the kernel region end at pfn "
            f"{host_ranges * 512:#x}, beyond the 2^54 pfns the model indexes; lower "
            "host_pfn_limit, kernel_base_pfn or kernel_pages"
        )
    margin = grow_margin(params, L, target)
    sparse = host_ranges > DENSE_RANGES_MAX
    nranges = INITIAL_SPARSE_RANGES + 2 * margin if sparse else host_ranges
    fstack = min(INITIAL_FSTACK, kpages) + 2 * margin
    ctrl = int(params["tdvpr_pages"]) + int(params["tdcx_pages"])

    need = nranges * 32 + fstack * 8 + nsamples * 64
    if need > MAX_STATE_BYTES:
        raise KvmcacheError(
            f"{header.path or 'trace'}: the model state would need {need / 2**30:.1f} GiB "
            f"({nranges:,} host 2 MiB ranges for host_pfn_limit and kernel_pages, "
            f"{fstack:,} free-page slots for capacity and pamt_pairs); lower the largest"
        )

    fixed = np.zeros(K.FIXED, dtype=np.int64)
    for slot, name in (
        (K.P_MIN_DESC, "min_desc"),
        (K.P_MIN_SEPT, "min_sept"),
        (K.P_MIN_SPT, "min_spt"),
        (K.P_MIN_HEADER, "min_header"),
        (K.P_PREALLOC_SEPT, "prealloc_sept"),
        (K.P_TDR, "tdr_pages"),
        (K.P_TDCS, "tdcs_pages"),
        (K.P_TDVPR, "tdvpr_pages"),
        (K.P_TDCX, "tdcx_pages"),
        (K.P_SPREAD, "spread"),
    ):
        fixed[slot] = int(params[name])
    fixed[K.P_CAPACITY] = cap
    fixed[K.P_PAMT_PAIRS] = pairs
    fixed[K.P_KBASE] = kbase
    fixed[K.P_KPAGES] = kpages
    fixed[K.P_STRAT] = strat
    fixed[K.P_TDX] = 1 if tdx else 0
    fixed[K.P_ROOT_LEVEL] = L
    fixed[K.P_PAMT_TARGET] = target
    fixed[K.P_DPAMT] = 1 if dpamt else 0
    fixed[K.P_NVCPU] = INITIAL_VCPUS
    fixed[K.P_FSTACK] = fstack
    fixed[K.P_GROW_MARGIN] = margin
    fixed[K.P_SAMPLE_EVERY] = sample_every
    fixed[K.P_NSAMPLES] = nsamples
    fixed[K.P_PREFETCH] = PREFETCH_AHEAD if header.gfn_limit >= PREFETCH_MIN_GFNS else 0
    fixed[K.Z_SPT] = max(cap, 1)
    fixed[K.Z_SEPT] = 3 * max(cap, 1)
    fixed[K.Z_PAMT] = max(target, 1)
    fixed[K.Z_VCTRL] = max(ctrl, 1)
    fixed[K.Z_NRANGES] = nranges
    fixed[K.Z_RSPARSE] = 1 if sparse else 0
    _size_hash(fixed, K.Z_RHCAP, K.Z_RHSHIFT, nranges if sparse else 0)
    # The presence bitmap covers gfn_limit in whole 2 MiB regions, up to PBITS_MAX_GFNS.
    fixed[K.Z_PBITS] = 8 * -(-min(header.gfn_limit, PBITS_MAX_GFNS) // 512)
    # 2 MiB and 1 GiB leaves over the same gfns, in whole tables (8 words of 512 bits).
    fixed[K.Z_PB2] = 8 * -(-int(fixed[K.Z_PBITS]) // 512)
    fixed[K.Z_PB3] = 8 * -(-int(fixed[K.Z_PBITS]) // (512 * 512))
    fixed[K.Z_L1] = int(fixed[K.Z_PBITS]) // 8  # one word per level-1 table of those gfns
    _size_tables(fixed, INITIAL_SLOTS)
    m = _layout(fixed)
    lf = np.zeros(512 * INITIAL_SLOTS, dtype=np.uint32)
    u = np.zeros(K.N_U + INITIAL_VCPUS, dtype=np.uint64)
    for slot, name in NS_SLOTS:
        u[slot] = int(params[name])
    return State(m, lf, u)


def _size_hash(fixed: np.ndarray, cap_slot: int, shift_slot: int, entries: int) -> None:
    """A hash of at least twice ``entries`` positions (load <= 1/2), a power of two."""
    hcap = 1
    while hcap < 2 * entries:
        hcap *= 2
    fixed[cap_slot] = hcap
    fixed[shift_slot] = 64 - (hcap.bit_length() - 1)


def _size_tables(fixed: np.ndarray, slots: int) -> None:
    """Table slot capacity and its hash."""
    fixed[K.Z_SLOTS] = slots
    _size_hash(fixed, K.Z_HCAP, K.Z_HSHIFT, slots)


def grow_ranges(s: State) -> State:
    """A sparse state with twice the range indices, rehashed."""
    fixed = s.m[: K.FIXED].copy()
    n = 2 * int(fixed[K.Z_NRANGES])
    fixed[K.Z_NRANGES] = n
    _size_hash(fixed, K.Z_RHCAP, K.Z_RHSHIFT, n)
    m = _layout(fixed, s.m)
    K.rehash_ranges(m)
    return State(m, s.lf, s.u)


def grow_tables(s: State) -> State:
    """A state with twice the table slots (and leaf blocks), rehashed."""
    fixed = s.m[: K.FIXED].copy()
    slots = 2 * int(fixed[K.Z_SLOTS])
    _size_tables(fixed, slots)
    m = _layout(fixed, s.m)
    K.rehash(m)
    lf = np.zeros(512 * slots, dtype=np.uint32)
    lf[: len(s.lf)] = s.lf
    return State(m, lf, s.u)


def grow_vcpus(s: State, need: int) -> State:
    """A state whose per-vCPU regions hold at least ``need`` vCPUs (doubling)."""
    nv = int(s.m[K.P_NVCPU])
    while nv < need:
        nv *= 2
    fixed = s.m[: K.FIXED].copy()
    fixed[K.P_NVCPU] = min(nv, K.MAX_VCPUS)
    u = np.zeros(K.N_U + int(fixed[K.P_NVCPU]), dtype=np.uint64)
    u[: len(s.u)] = s.u  # busy[v] per vCPU slot follows the fixed words
    return State(_layout(fixed, s.m), s.lf, u)


def grow_fstack(s: State) -> State:
    """A state whose host free stack has head-room for the next event."""
    cur = int(s.m[K.P_FSTACK])
    need = int(s.m[K.G_K]) + 2 * int(s.m[K.P_GROW_MARGIN])
    fixed = s.m[: K.FIXED].copy()
    fixed[K.P_FSTACK] = max(2 * cur, need)
    return State(_layout(fixed, s.m), s.lf, s.u)


def samples(s: State) -> np.ndarray:
    """The timeline rows taken since the last flush (a copy); resets the row count."""
    n = int(s.m[K.G_NSAMPLES])
    base = int(s.m[K.O_SAMPLES])
    out = s.m[base : base + n * K.N_T].reshape(n, K.N_T).copy()
    s.m[K.G_NSAMPLES] = 0
    return out
