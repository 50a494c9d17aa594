"""Software prefetch in the kernel's fast path (kernel.P_PREFETCH, the rule in state.py):
a hint only, so every counter and histogram is the same with it on and off."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from randtrace import random_trace

from kvmcache import jit
from kvmcache.errors import KvmcacheError
from kvmcache.params import DEFAULTS
from kvmcache.sim import kernel as K
from kvmcache.sim import state
from kvmcache.sim.counters import STRATEGIES
from kvmcache.sim.replay import replay_many
from kvmcache.trace import InMemoryTrace
from kvmcache.trace.events import TraceHeader


def _replay(header, events, params, chunk, ahead, *, min_gfns=0):
    """Every strategy's (counters, histograms), prefetching ``ahead`` events on (0: off) at
    every guest size from ``min_gfns``; or the error message."""
    saved = state.PREFETCH_MIN_GFNS, state.PREFETCH_AHEAD
    state.PREFETCH_MIN_GFNS, state.PREFETCH_AHEAD = min_gfns, ahead
    try:
        got = replay_many(InMemoryTrace(header, events, chunk), list(STRATEGIES), params=params)
    except KvmcacheError as e:
        return str(e)
    finally:
        state.PREFETCH_MIN_GFNS, state.PREFETCH_AHEAD = saved
    return [(r.counters, r.histograms) for r in got]


def _random_case(seed: int):
    rng = np.random.default_rng(seed)
    vm_type = "tdx" if seed % 3 else "vmx"
    hdr, events, overrides = random_trace(
        rng, int(rng.integers(1, 200)), vm_type=vm_type, root_level=4 + seed % 2
    )
    header = TraceHeader(
        hdr["vm_type"], hdr["root_level"], hdr["gfn_limit"], hdr["host_pfn_limit"], path="random"
    )
    return header, events, {**DEFAULTS, **overrides}


def _on_off_random(seeds: range) -> None:
    for seed in seeds:
        header, events, params = _random_case(seed)
        chunk = 1 + seed % 13  # chunk ends at every position, also within `ahead` of one
        off = _replay(header, events, params, chunk, 0)
        for ahead in (1, 3, 16):
            assert _replay(header, events, params, chunk, ahead) == off, (seed, ahead)


def test_prefetch_changes_no_counter_on_random_traces():
    _on_off_random(range(250))


@pytest.mark.parametrize("scenario", ["steady", "boot", "churn", "scatter", "hugepage-split"])
def test_prefetch_changes_no_counter_on_synthetic_mixes(scenario):
    """Mixes where most events take the fast path, on a guest where the rule turns the
    prefetch on by itself, and forced on at 1 and 16 events ahead."""
    from kvmcache.synth.generator import generate

    header, blocks = generate(
        scenario, events=40_000, seed=5, vcpus=3, guest_memory="16GiB", host_memory="64GiB"
    )
    assert header.gfn_limit >= state.PREFETCH_MIN_GFNS
    events = np.concatenate(list(blocks))
    params = {**DEFAULTS, "spread": 64}
    off = _replay(header, events, params, 4099, 0)
    assert isinstance(off, list) and off[0][0]["events"] == len(events)
    auto = _replay(header, events, params, 4099, state.PREFETCH_AHEAD, min_gfns=1 << 22)
    assert auto == off
    for ahead in (1, 16):
        assert _replay(header, events, params, 4099, ahead) == off, ahead


def _header(gfn_limit: int, host_pfn_limit: int = 1 << 24) -> TraceHeader:
    return TraceHeader("tdx", 4, gfn_limit, host_pfn_limit, path="rule")


def test_the_rule_turns_prefetch_on_from_16_gib_guests():
    params = dict(DEFAULTS)
    assert (state.PREFETCH_MIN_GFNS, state.PREFETCH_AHEAD) == (1 << 22, 16)
    on = state.build(_header(1 << 22), params, "dpamt-install")
    off = state.build(_header((1 << 22) - 1), params, "dpamt-install")
    assert int(on.m[K.P_PREFETCH]) == 16 and int(off.m[K.P_PREFETCH]) == 0
    # The state keeps it when it grows (the fixed words are copied).
    assert int(state.grow_tables(on).m[K.P_PREFETCH]) == 16


def test_prefetch_emits_llvm_prefetch_and_is_a_no_op_in_python_mode():
    read, write = jit.prefetch(), jit.prefetch(True)

    def f(a, i):
        read(a, i)
        write(a, np.uint64(i + 1))
        return a[i]

    g = jit.compiled(cache=False, nogil=True, _nrt=False)(f)
    a = np.arange(8)
    assert g(a, 3) == 3
    ir = "".join(g.inspect_llvm().values())
    # (address, rw, locality 3, data cache)
    assert "call void @llvm.prefetch.p0(ptr" in ir
    assert ", i32 0, i32 3, i32 1)" in ir and ", i32 1, i32 3, i32 1)" in ir
    saved = jit._python
    jit._python = True
    try:
        assert jit.prefetch()(a, 3) is None and jit.prefetch(True)(a, 99) is None
    finally:
        jit._python = saved


_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
import test_prefetch as t
t._on_off_random(range(int(sys.argv[2]), int(sys.argv[2]) + int(sys.argv[3])))
print("ok")
"""


@pytest.mark.parametrize(
    "env",
    [
        # The kernel's Python body: the prefetch is a no-op, its index words are still read.
        {"NUMBA_DISABLE_JIT": "1"},
        # Compiled with bounds checks (the prefetch's index included), in a cache of its own.
        {"NUMBA_BOUNDSCHECK": "1"},
    ],
    ids=["python-body", "boundscheck"],
)
def test_prefetch_in_python_and_bounds_checked(env, tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), **env)
    p = subprocess.run(
        [sys.executable, "-c", _CHILD, here, "9000", "16"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout[-2000:] + p.stderr[-2000:]
