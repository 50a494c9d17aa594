"""Allocation and sizing of the model's state arrays from the trace header and parameters.

Memory (documented in docs/model.md): per guest 4 KiB page 8 bytes of leaf state (two
roots x uint32) plus about 1/64 byte for 2 MiB / 1 GiB leaves and tables; per 2 MiB host
range (guest memory and the kernel allocation region) 32 bytes; per vCPU a few cache
stacks; the host free stack grows with the pages the model ever allocated. Arrays are
``np.zeros`` so untouched parts of a sparse guest cost address space, not resident memory.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kvmcache.errors import KvmcacheError
from kvmcache.sim import kernel as K
from kvmcache.sim.counters import STRATEGIES
from kvmcache.trace.events import TraceHeader

#: Refuse a model whose state would need more address space than this.
MAX_STATE_BYTES = 64 << 30
INITIAL_VCPUS = 8
INITIAL_FSTACK = 1 << 16


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


def table_counts(header: TraceHeader) -> list[int]:
    """Tables per level k = 1..root_level-1, each rounded up to whole 512-entry parents."""
    out = [0]
    for k in range(1, header.root_level):
        span = 512**k
        out.append(max(512, _align_up(-(-header.gfn_limit // span), 512)))
    return out


def grow_margin(params: Mapping[str, int | bool], root_level: int, pamt_target: int) -> int:
    """An upper bound of fresh pages one event can allocate (free-stack head-room)."""
    cap = int(params["capacity"])
    ctrl = sum(int(params[n]) for n in ("tdr_pages", "tdcs_pages", "tdvpr_pages", "tdcx_pages"))
    per_topup = 4 * cap + pamt_target + 8
    return 2 * (3 * ctrl + (root_level + 3) * per_topup + 64)


def build(
    header: TraceHeader,
    params: Mapping[str, int | bool],
    alloc: str,
    *,
    sample_every: int = 0,
    nsamples: int = 0,
) -> K.State:
    """A fresh model state for one strategy on one trace."""
    eff = effective_strategy(header, alloc)
    strat = STRATEGIES.index(eff)
    tdx = header.is_tdx
    L = header.root_level
    cap = int(params["capacity"])
    pairs = int(params["pamt_pairs"])
    target = 2 * pairs + (int(params["prealloc_sept"]) if eff == "dpamt-prealloc" else 0)
    kbase = kernel_base(header, params)
    kpages = int(params["kernel_pages"])
    nranges = -(-max(header.host_pfn_limit, kbase + kpages) // 512)
    tables = table_counts(header)
    toff = np.zeros(8, dtype=np.int64)
    for k in range(1, L):
        toff[k + 1] = toff[k] + tables[k]
    for k in range(L + 1, 8):
        toff[k] = toff[L]
    ntables = int(toff[L])
    n1 = tables[1] * 512
    n2 = tables[2] * 512
    n3 = tables[3] * 512
    margin = grow_margin(params, L, target)
    fstack = min(INITIAL_FSTACK, kpages) + 2 * margin

    need = (
        2 * n1 * 4
        + 2 * n2 * 4
        + 2 * n3
        + ntables * 24
        + nranges * 32
        + fstack * 8
        + nsamples * K.N_T * 8
    )
    if need > MAX_STATE_BYTES:
        raise KvmcacheError(
            f"the model state for this trace would need {need / 2**30:.1f} GiB "
            f"(gfn_limit {header.gfn_limit:#x}, {nranges} host 2 MiB ranges); "
            "lower gfn_limit/host_pfn_limit or kernel_pages"
        )
    if nranges >= 2**32 - 1:
        raise KvmcacheError(
            "host memory plus the kernel region exceeds 2^41 pfns, beyond the model"
        )

    P = np.zeros(K.N_P, dtype=np.int64)
    P[K.P_CAPACITY] = cap
    P[K.P_MIN_DESC] = params["min_desc"]
    P[K.P_MIN_SEPT] = params["min_sept"]
    P[K.P_MIN_SPT] = params["min_spt"]
    P[K.P_MIN_HEADER] = params["min_header"]
    P[K.P_PAMT_PAIRS] = pairs
    P[K.P_PREALLOC_SEPT] = params["prealloc_sept"]
    P[K.P_TDR] = params["tdr_pages"]
    P[K.P_TDCS] = params["tdcs_pages"]
    P[K.P_TDVPR] = params["tdvpr_pages"]
    P[K.P_TDCX] = params["tdcx_pages"]
    P[K.P_SPREAD] = params["spread"]
    P[K.P_KBASE] = kbase
    P[K.P_KPAGES] = kpages
    P[K.P_STRAT] = strat
    P[K.P_TDX] = 1 if tdx else 0
    P[K.P_ROOT_LEVEL] = L
    P[K.P_PAMT_TARGET] = target if (tdx and eff != "none") else 0
    P[K.P_DPAMT] = 1 if (tdx and eff != "none") else 0
    P[K.P_NVCPU] = INITIAL_VCPUS
    P[K.P_FSTACK] = fstack
    P[K.P_GROW_MARGIN] = margin
    P[K.P_SAMPLE_EVERY] = sample_every
    P[K.P_NSAMPLES] = nsamples

    nv = INITIAL_VCPUS
    ctrl = int(params["tdvpr_pages"]) + int(params["tdcx_pages"])
    return K.State(
        P=P,
        G=np.zeros(K.N_G, dtype=np.int64),
        U=np.zeros(K.N_U, dtype=np.uint64),
        C=np.zeros(K.N_COUNTERS, dtype=np.int64),
        H=np.zeros(17, dtype=np.int64),
        vlive=np.zeros(nv, dtype=np.uint8),
        vcnt=np.zeros((nv, 5), dtype=np.int64),
        spt=np.zeros((nv, max(cap, 1)), dtype=np.int64),
        sept=np.zeros((nv, 3 * max(cap, 1)), dtype=np.int64),
        pamt=np.zeros((nv, max(int(P[K.P_PAMT_TARGET]), 1)), dtype=np.int64),
        vctrl=np.zeros((nv, max(ctrl, 1)), dtype=np.int64),
        tdctrl=np.zeros(
            max(int(params["tdr_pages"]) + int(params["tdcs_pages"]), 1), dtype=np.int64
        ),
        fstack=np.zeros(fstack, dtype=np.int64),
        refc=np.zeros(nranges, dtype=np.int64),
        pair=np.zeros((nranges, 2), dtype=np.int64),
        cached=np.zeros(nranges, dtype=np.int64),
        toff=toff,
        tspt=np.zeros((2, max(ntables, 1)), dtype=np.int64),
        tsept=np.zeros(max(ntables, 1), dtype=np.int64),
        leaf1=np.zeros((2, n1), dtype=np.uint32),
        leaf2=np.zeros((2, n2), dtype=np.uint32),
        leaf3=np.zeros((2, n3), dtype=np.uint8),
        samples=np.zeros((max(nsamples, 1), K.N_T), dtype=np.int64),
    )


def _grow_rows(a: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows,) + a.shape[1:], dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


def grow_vcpus(s: K.State, need: int) -> K.State:
    """A state whose per-vCPU arrays hold at least ``need`` vCPUs (doubling)."""
    nv = int(s.P[K.P_NVCPU])
    while nv < need:
        nv *= 2
    nv = min(nv, 65536)
    s.P[K.P_NVCPU] = nv
    return s._replace(
        vlive=_grow_rows(s.vlive, nv),
        vcnt=_grow_rows(s.vcnt, nv),
        spt=_grow_rows(s.spt, nv),
        sept=_grow_rows(s.sept, nv),
        pamt=_grow_rows(s.pamt, nv),
        vctrl=_grow_rows(s.vctrl, nv),
    )


def grow_fstack(s: K.State) -> K.State:
    """A state whose host free stack has head-room for the next event."""
    cur = int(s.P[K.P_FSTACK])
    need = int(s.G[K.G_K]) + 2 * int(s.P[K.P_GROW_MARGIN])
    size = max(2 * cur, need)
    s.P[K.P_FSTACK] = size
    return s._replace(fstack=_grow_rows(s.fstack, size))
