"""The numba kernel against the slow reference (tests/naive.py) on random traces.

Every counter and the histogram must agree for every strategy, both VM types and both
root levels. KVMCACHE_RANDOM_TRACES scales the number of traces (default below).
"""

from __future__ import annotations

import os

import naive
import numpy as np
import pytest
from randtrace import random_trace

from kvmcache.errors import KvmcacheError
from kvmcache.params import DEFAULTS
from kvmcache.sim.counters import COUNTERS, STRATEGIES
from kvmcache.sim.replay import replay_many
from kvmcache.trace import InMemoryTrace
from kvmcache.trace.events import EVENT_DTYPE, OP_FAULT, TraceHeader

TRACES_PER_CASE = int(os.environ.get("KVMCACHE_RANDOM_TRACES", "500"))
CASES = [("tdx", 4), ("tdx", 5), ("vmx", 4), ("vmx", 5)]


def _compare(seed: int, vm_type: str, root_level: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    hdr, events, overrides = random_trace(rng, n, vm_type=vm_type, root_level=root_level)
    params = dict(DEFAULTS)
    params.update(overrides)
    header = TraceHeader(
        hdr["vm_type"], hdr["root_level"], hdr["gfn_limit"], hdr["host_pfn_limit"], path="random"
    )
    # One pass carrying all five strategies, as compare does; chunks of 1 to 13 events so
    # that chunk boundaries fall at every position (and inside the kernel's fast path).
    try:
        got = replay_many(
            InMemoryTrace(header, events, chunk_events=1 + seed % 13),
            list(STRATEGIES),
            params=params,
        )
        kernel_error = None
    except KvmcacheError as e:
        got, kernel_error = None, str(e)
    stats: dict[str, int] = {}
    for i, alloc in enumerate(STRATEGIES):
        try:
            want, hist = naive.replay(
                hdr["vm_type"],
                hdr["root_level"],
                hdr["gfn_limit"],
                hdr["host_pfn_limit"],
                events,
                params,
                alloc,
                stats,
            )
        except naive.ModelError as e:
            assert kernel_error is not None, f"seed {seed}: naive error {e}, kernel none"
            assert f"event {e.event_index}:" in kernel_error, (seed, str(e), kernel_error)
            continue
        assert kernel_error is None, f"seed {seed} {alloc}: kernel error {kernel_error}"
        c = got[i].counters
        diff = {k: (c[k], want[k]) for k in COUNTERS if c[k] != want[k]}
        assert not diff, f"seed {seed} {vm_type} L{root_level} {alloc}: (kernel, naive) {diff}"
        assert got[i].histograms == hist, f"seed {seed} {alloc}"
        SEEN.update(k for k in TIME_COUNTERS if c[k])
        if stats["saturations"]:
            SEEN.add("saturated")


#: Section 8 counters that the random traces must make non-zero somewhere (waits, delays).
TIME_COUNTERS = (
    "time_topup_ns",
    "time_locked_ns",
    "pamt_lock_wait_ns",
    "pamt_lock_contended",
    "fault_latency_ns",
    "vcpu_delay_ns",
)
SEEN: set[str] = set()


@pytest.mark.parametrize("vm_type,root_level", CASES)
def test_kernel_equals_naive_on_random_traces(vm_type, root_level):
    base = {"tdx": 0, "vmx": 1_000_000}[vm_type] + root_level * 100_000
    SEEN.clear()
    for seed in range(base, base + TRACES_PER_CASE):
        _compare(seed, vm_type, root_level)
    # The traces exercise the time model: pamt_lock waits (tdx only), vCPU delays and
    # clocks that saturate at 2^64 - 1, not only zeros.
    want = set(TIME_COUNTERS) | {"saturated"}
    if vm_type == "vmx":
        want -= {"pamt_lock_wait_ns", "pamt_lock_contended"}
    assert want <= SEEN, want - SEEN


def _both(header: TraceHeader, events, overrides=None):
    params = dict(DEFAULTS)
    params.update(overrides or {})
    got = replay_many(InMemoryTrace(header, events), list(STRATEGIES), params=params)
    for r, alloc in zip(got, STRATEGIES, strict=True):
        want, hist = naive.replay(
            header.vm_type,
            header.root_level,
            header.gfn_limit,
            header.host_pfn_limit,
            events,
            params,
            alloc,
        )
        assert r.counters == want, alloc
        assert r.histograms == hist, alloc
    return got


def test_gfns_far_beyond_the_root_and_the_last_vcpu():
    """gfns at 2^40 and 2^50 (>= 512^L, sparse tables) and vCPU 65535 work and agree."""
    from kvmcache.trace.events import EVENT_DTYPE

    rows = [
        (0, 0, 0, 65535, 3, 0, 0),  # vcpu_create 65535
        (1, 1 << 40, 0x1000, 65535, 5, 1, 1),  # private 4K fault at gfn 2^40
        (2, (1 << 40) + 1, 0x1001, 65535, 5, 1, 1),
        (3, 1 << 50, 0x200000, 0, 5, 2, 1),  # private 2M fault at 2^50 on vCPU 0
        (4, (1 << 50) + 3, 0, 0, 7, 0, 1),  # split it
        (5, (1 << 40) + 1, 0, 0, 6, 1, 1),  # unmap one 4K leaf
        (6, 1 << 50, 0x300000, 1, 5, 2, 0),  # shared 2M fault at 2^50
    ]
    ev = np.zeros(len(rows), dtype=EVENT_DTYPE)
    for i, (ts, gfn, pfn, vcpu, op, level, flags) in enumerate(rows):
        ev[i] = (ts, gfn, pfn, vcpu, op, level, flags)
    for root_level in (4, 5):
        header = TraceHeader("tdx", root_level, (1 << 51), 1 << 24, path="far")
        got = _both(header, ev)
        c = got[1].counters  # dpamt-install
        assert c["leaves_4k"] == 2 and c["leaves_2m"] == 2 and c["splits"] == 1
        assert c["vcpus_created"] == 3 and c["leaked_ranges"] == 0  # 65535, 0 and 1


_PYTHON_BODY = r"""
import sys
sys.path.insert(0, sys.argv[1])
import test_kernel_vs_naive as t
t.test_shared_1g_fault_collapsing_a_level_2_table()
for vm_type, root_level in t.CASES:
    for seed in range(int(sys.argv[2]), int(sys.argv[2]) + int(sys.argv[3])):
        t._compare(seed, vm_type, root_level)
print("ok")
"""


def test_kernel_python_body_equals_naive_on_random_traces():
    """The kernel's Python body (what `replay` and `compare` run for tiny traces) against the
    reference too: it once overflowed hashing a table key that came from a Python range()
    (a shared 1 GiB fault collapsing a level-2 table)."""
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    n = max(1, TRACES_PER_CASE // 25)
    p = subprocess.run(
        [sys.executable, "-c", _PYTHON_BODY, here, "7000000", str(n)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout[-2000:] + p.stderr[-2000:]


def test_shared_1g_fault_collapsing_a_level_2_table():
    """A 4 KiB fault, then a 1 GiB fault over it (direct: collapse); also run by the test
    above in the Python body."""
    header = TraceHeader("vmx", 4, 1 << 20, 1 << 20, path="collapse-1g")
    events = np.zeros(2, dtype=EVENT_DTYPE)
    events["ts"] = [0, 1]
    events["op"] = OP_FAULT
    events["gfn"] = [0, 1]
    events["pfn"] = [0, 0x40000]
    events["level"] = [1, 3]
    got = _both(header, events)
    assert got[0].counters["collapses"] == 1 and got[0].counters["leaves_1g"] == 1


@pytest.mark.parametrize("scenario", ["steady", "churn", "hugepage-split"])
def test_fast_path_equals_general_path_on_synthetic_mixes(scenario):
    """The kernel applies common 4 KiB events inline (a fast path) unless a timeline samples
    every event; both ways give the same counters and histograms on realistic mixes, where
    most events take the fast path, for every strategy, at spreads that make PAMT.ADD and
    REMOVE frequent."""
    from kvmcache.synth.generator import generate

    header, blocks = generate(scenario, events=30_000, seed=3, vcpus=3)
    events = np.concatenate(list(blocks))
    for spread in (1, 64):
        params = {**DEFAULTS, "spread": spread}
        fast = replay_many(InMemoryTrace(header, events, 4099), list(STRATEGIES), params=params)
        slow = replay_many(
            InMemoryTrace(header, events, 4099), list(STRATEGIES), params=params, timeline_every=1
        )
        for a, b in zip(fast, slow, strict=True):
            assert a.counters == b.counters, (scenario, spread, a.alloc)
            assert a.histograms == b.histograms, (scenario, spread, a.alloc)
