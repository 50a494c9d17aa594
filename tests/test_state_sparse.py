"""Per-range state of a huge host: sized by the ranges a trace touches, not by the host.

A host with more 2 MiB ranges than ``state.DENSE_RANGES_MAX`` keeps its refcounts, pairs
and cached refs in a hash of the ranges the trace used; the counters are the same as with
dense state (here forced both ways on the same traces) and as tests/naive.py's.
"""

from __future__ import annotations

import naive
import numpy as np
import pytest
from randtrace import random_trace

from kvmcache.params import DEFAULTS
from kvmcache.sim import state
from kvmcache.sim.counters import STRATEGIES
from kvmcache.sim.replay import replay_events, replay_many
from kvmcache.trace import InMemoryTrace
from kvmcache.trace.events import EVENT_DTYPE, FLAG_PRIVATE, OP_FAULT, OP_UNMAP, TraceHeader


def _faults_in_many_ranges(n: int, host_pfn_limit: int) -> tuple[TraceHeader, np.ndarray]:
    """n private 4 KiB faults, each in its own host 2 MiB range, every third one unmapped."""
    rows = []
    for i in range(n):
        rows.append((i, i, i * 512 + 7, 0, OP_FAULT, 1, FLAG_PRIVATE))
        if i % 3 == 0:
            rows.append((i, i, 0, 0, OP_UNMAP, 1, FLAG_PRIVATE))
    ev = np.array(rows, dtype=EVENT_DTYPE)
    return TraceHeader("tdx", 4, 1 << 20, host_pfn_limit, path="many-ranges"), ev


def test_sparse_equals_dense_and_grows(monkeypatch):
    header, ev = _faults_in_many_ranges(12_000, 1 << 24)
    dense = [replay_events(header, ev, a).counters for a in STRATEGIES]
    monkeypatch.setattr(state, "DENSE_RANGES_MAX", 0)
    grown = []
    real = state.grow_ranges
    monkeypatch.setattr(state, "grow_ranges", lambda s: grown.append(1) or real(s))
    sparse = [replay_events(header, ev, a).counters for a in STRATEGIES]
    assert sparse == dense
    assert grown  # 12,000 guest ranges outgrow the initial sparse capacity


def test_tiny_trace_on_a_huge_host_costs_what_it_touches():
    """One fault at a high pfn of a 2^50-pfn host: state of a few MiB, not 2^41 ranges."""
    header = TraceHeader("tdx", 4, 1 << 20, 1 << 50, path="huge")
    ev = np.array([(0, 5, (1 << 50) - 1, 0, OP_FAULT, 1, FLAG_PRIVATE)], dtype=EVENT_DTYPE)
    params = dict(DEFAULTS)
    s = state.build(header, params, "dpamt-install")
    assert s.m.nbytes < 8 << 20
    r = replay_events(header, ev, "dpamt-install")
    assert r.counters["pamt_add"] >= 1 and r.counters["leaked_ranges"] == 0
    host_ranges = ((1 << 50) + 1048576) // 512  # host memory, then the 4 GiB kernel region
    assert r.counters["pamt_bytes_peak"] == 8192 * r.counters["pamt_pairs_peak"] + 4 * host_ranges


def test_host_beyond_2_54_pfns_is_one_clear_error():
    from kvmcache.errors import KvmcacheError

    header = TraceHeader("tdx", 4, 1 << 20, (1 << 54) + 1, path="t.kvmt")
    with pytest.raises(KvmcacheError, match="beyond the 2\\^54 pfns"):
        state.build(header, dict(DEFAULTS), "none")


@pytest.mark.parametrize("root_level", [4, 5])
def test_sparse_kernel_equals_naive_on_random_traces(monkeypatch, root_level):
    monkeypatch.setattr(state, "DENSE_RANGES_MAX", 0)
    for seed in range(700_000 + root_level * 1000, 700_000 + root_level * 1000 + 120):
        rng = np.random.default_rng(seed)
        hdr, events, overrides = random_trace(
            rng, int(rng.integers(1, 120)), vm_type="tdx", root_level=root_level
        )
        params = {**DEFAULTS, **overrides}
        header = TraceHeader("tdx", root_level, hdr["gfn_limit"], hdr["host_pfn_limit"])
        try:
            got = replay_many(
                InMemoryTrace(header, events, chunk_events=5), list(STRATEGIES), params=params
            )
        except Exception as e:  # an input error the model defines: naive must agree
            with pytest.raises(naive.ModelError):
                naive.replay("tdx", root_level, 0, hdr["host_pfn_limit"], events, params, "none")
            assert "event" in str(e)
            continue
        for r, alloc in zip(got, STRATEGIES, strict=True):
            want, hists = naive.replay(
                "tdx", root_level, 0, hdr["host_pfn_limit"], events, params, alloc
            )
            assert r.counters == want, (seed, alloc)
            assert r.histograms == hists, (seed, alloc)
