"""The naive reference model (tests/naive.py) against the golden scenarios, and on random traces."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import GOLDEN_DIR

from kvmcache.params import DEFAULTS
from kvmcache.sim.counters import CACHES, COUNTERS, FAULT_PAGES_BUCKETS, STRATEGIES
from kvmcache.trace.events import EVENT_DTYPE, FLAG_PRIVATE, LEVEL_CODES, OP_CODES

try:  # tests/ as a package (rootdir on sys.path) or as a plain directory (pytest prepend mode)
    from tests import naive
    from tests.randtrace import random_trace, to_yaml_text
except ImportError:  # pragma: no cover
    import naive  # type: ignore[no-redef]
    from randtrace import random_trace, to_yaml_text  # type: ignore[no-redef]

GOLDEN = Path(GOLDEN_DIR)
SCENARIOS = sorted(GOLDEN.glob("*.yaml"))

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _size(value: Any) -> int:
    """A YAML size (`4GiB`, `64 GB`, an integer of bytes) in bytes."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(0x[0-9a-fA-F]+|[0-9]+)\s*([kmgt]?)(?:i?b)?\s*", str(value).lower())
    assert m, f"bad size {value!r}"
    return int(m.group(1), 0) * _UNITS[m.group(2)]


def _int(value: Any) -> int:
    return value if isinstance(value, int) else int(str(value), 0)


def load_yaml_trace(text: str) -> tuple[dict[str, Any], np.ndarray, dict[str, Any]]:
    """A minimal reader of INTERFACES.md section 2 traces: (header, events, params)."""
    doc = yaml.safe_load(text)
    vm = doc["vm"]
    header = {
        "vm_type": vm["type"],
        "root_level": int(vm["root_level"]),
        "gfn_limit": _int(vm["gfn_limit"])
        if "gfn_limit" in vm
        else _size(vm["guest_memory"]) // 4096,
        "host_pfn_limit": _int(vm["host_pfn_limit"])
        if "host_pfn_limit" in vm
        else _size(vm["host_memory"]) // 4096,
    }
    raw = doc["events"] or []
    events = np.zeros(len(raw), dtype=EVENT_DTYPE)
    ts = 0
    for i, ev in enumerate(raw):
        ts = _int(ev.get("ts", ts))
        op = ev["op"]
        level = ev.get("level", 0)
        if isinstance(level, str):
            level = LEVEL_CODES[level.lower()]
        events[i]["ts"] = ts
        events[i]["op"] = OP_CODES[op] if isinstance(op, str) else op
        events[i]["vcpu"] = _int(ev.get("vcpu", 0))
        events[i]["gfn"] = _int(ev.get("gfn", 0))
        events[i]["pfn"] = _int(ev.get("pfn", 0))
        events[i]["level"] = level
        events[i]["flags"] = FLAG_PRIVATE if ev.get("private", False) else 0
    return header, events, dict(doc.get("params") or {})


def _replay(header: dict[str, Any], events: np.ndarray, overrides: dict[str, Any], alloc: str):
    params = {**DEFAULTS, **overrides}
    return naive.replay(
        header["vm_type"],
        header["root_level"],
        header["gfn_limit"],
        header["host_pfn_limit"],
        events,
        params,
        alloc,
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_golden(scenario: Path, strategy: str) -> None:
    header, events, overrides = load_yaml_trace(scenario.read_text())
    expected = json.loads(scenario.with_suffix("").with_suffix(".expected.json").read_text())[
        strategy
    ]
    counters, hist = _replay(header, events, overrides, strategy)
    assert list(counters) == list(COUNTERS)
    diff = {
        name: (counters[name], expected["counters"][name])
        for name in COUNTERS
        if counters[name] != expected["counters"][name]
    }
    assert not diff, f"(got, expected): {diff}"
    assert hist == expected["histograms"]


def _check_invariants(
    counters: dict[str, int], hists: dict[str, list[int]], params: dict[str, Any], destroyed: bool
) -> None:
    """Sanity invariants of MODEL.md that hold on every valid trace and strategy.

    ``destroyed``: the VM was destroyed, by an explicit vm_destroy or the end-of-trace teardown.
    """
    c = counters
    hist = hists["fault_pages"]
    torn_down = destroyed and bool(params["teardown"])  # freed_unused includes the teardown
    for cache in CACHES:
        held = c[f"{cache}_allocated"] - c[f"{cache}_consumed"] - c[f"{cache}_freed_unused"]
        # *_end is taken before the teardown; an explicit vm_destroy leaves 0 held.
        assert held == (0 if destroyed else c[f"{cache}_held_end"]) or (torn_down and held == 0), (
            cache
        )
        assert c[f"{cache}_held_peak"] >= c[f"{cache}_held_end"]
    assert c["desc_consumed"] == 0
    if destroyed:
        assert c["pages_allocated"] == c["pages_freed"]
    assert c["pages_live_peak"] >= c["pages_allocated"] - c["pages_freed"]
    assert c["pamt_get"] >= c["pamt_get_fast"]
    assert c["pamt_put"] >= c["pamt_put_fast"]
    assert c["pamt_lock_acquired"] == c["pamt_add"] + c["pamt_remove"]
    assert c["pamt_pairs_peak"] >= c["pamt_pairs_end"]
    assert c["cache_pages_idle_peak"] >= c["cache_pages_idle_end"]
    assert c["refcount_underflow"] == 0
    assert c["leaked_ranges"] == 0
    assert c["faults"] == c["faults_private"] + c["faults_shared"]
    assert sum(hist) == c["faults"] - c["faults_spurious"]
    assert len(hist) == FAULT_PAGES_BUCKETS
    # Section 8: one latency per non-spurious fault; the lock holds add up exactly.
    assert sum(hists["fault_latency"]) == c["faults"] - c["faults_spurious"]
    assert len(hists["fault_latency"]) == 32
    assert c["pamt_lock_held_ns"] == (
        params["ns_pamt_add"] * c["pamt_add"] + params["ns_pamt_remove"] * c["pamt_remove"]
    )
    assert c["pamt_lock_wait_ns"] >= c["pamt_lock_wait_max_ns"] >= 0
    assert c["pamt_lock_contended"] <= c["pamt_lock_acquired"]
    assert c["time_locked_ns"] >= c["time_locked_max_ns"]
    assert c["fault_latency_ns"] >= c["fault_latency_max_ns"]
    assert c["fault_latency_ns"] >= c["time_locked_ns"]
    if c["pamt_add"] == 0 and c["pamt_remove"] == 0:
        assert c["pamt_lock_wait_ns"] == c["pamt_lock_contended"] == 0
    assert c["vcpus_created"] >= c["vcpus_destroyed"]
    if destroyed:
        assert c["vcpus_created"] == c["vcpus_destroyed"]
        if c["pamt_get"] or c["pamt_add"]:
            assert c["pamt_add"] == c["pamt_remove"]


#: Counters that stay 0 on every valid trace.
ALWAYS_ZERO = {"desc_consumed", "refcount_underflow", "leaked_ranges"}


@pytest.mark.parametrize("root_level", [4, 5])
@pytest.mark.parametrize("vm_type", ["tdx", "vmx"])
def test_random_traces(vm_type: str, root_level: int) -> None:
    """Random traces replay under every strategy without errors and keep the invariants."""
    rng = np.random.default_rng(1000 * root_level + (vm_type == "tdx"))
    seen: set[str] = set()
    for _ in range(30 if vm_type == "tdx" else 10):
        header, events, overrides = random_trace(
            rng, int(rng.integers(1, 200)), vm_type=vm_type, root_level=root_level
        )
        text = to_yaml_text(header, events, overrides)
        h2, ev2, p2 = load_yaml_trace(text)
        assert h2 == header and p2 == overrides and (ev2 == events).all()
        if vm_type == "vmx":  # no private faults on vmx (private unmap/split are fine)
            private = (events["flags"] & FLAG_PRIVATE) != 0
            assert not (private & (events["op"] == OP_CODES["fault"])).any()
        params = {**DEFAULTS, **overrides}
        vm_destroy = bool((events["op"] == OP_CODES["vm_destroy"]).any())
        destroyed = vm_destroy or bool(params["teardown"])
        for strategy in STRATEGIES:
            counters, hist = _replay(header, events, overrides, strategy)
            _check_invariants(counters, hist, params, destroyed)
            seen |= {name for name in COUNTERS if counters[name]}
            if vm_type == "vmx" or strategy == "none":
                for name in ("pamt_get", "pamt_put", "pamt_add", "pamt_pairs_peak"):
                    assert counters[name] == 0, name
                assert counters["pamt_allocated"] == 0
            if vm_type == "vmx":
                assert counters["sept_allocated"] == 0
    if vm_type == "tdx":
        # the generator exercises every counter of the model
        assert set(COUNTERS) - seen == ALWAYS_ZERO


def test_model_errors() -> None:
    """The input errors the model defines raise naive.ModelError with the event index."""
    base = "kvmcache-trace: 1\nvm: {type: %s, root_level: 4, gfn_limit: 0x100000, host_pfn_limit: 0x1000}\n"
    cases = [
        ("vmx", "events:\n  - {op: fault, vcpu: 0, gfn: 1, pfn: 1, level: 4k, private: true}\n", 0),
        ("tdx", "events:\n  - {op: vcpu_create, vcpu: 1}\n  - {op: vcpu_create, vcpu: 1}\n", 1),
        ("tdx", "events:\n  - {op: vm_create}\n  - {op: vm_create}\n", 1),
        ("tdx", "events:\n  - {op: vcpu_create, vcpu: 1}\n  - {op: vm_create}\n", 1),
        ("tdx", "events:\n  - {op: vm_destroy}\n  - {op: unmap, gfn: 0, level: 4k}\n", 1),
        ("vmx", "params: {kernel_pages: 30}\nevents:\n  - {op: vcpu_create, vcpu: 0}\n", 0),
    ]
    for vm_type, body, index in cases:
        header, events, overrides = load_yaml_trace(base % vm_type + body)
        for strategy in STRATEGIES:
            with pytest.raises(naive.ModelError) as info:
                _replay(header, events, overrides, strategy)
            assert info.value.event_index == index
    # a vcpu_destroy of a destroyed vCPU re-creates it; private unmap/split on vmx miss
    header, events, overrides = load_yaml_trace(
        base % "vmx"
        + "events:\n  - {op: vcpu_destroy, vcpu: 2}\n  - {op: vcpu_destroy, vcpu: 2}\n"
        + "  - {op: unmap, gfn: 0, level: 4k, private: true}\n  - {op: split, gfn: 0, private: true}\n"
    )
    counters, _ = _replay(header, events, overrides, "dpamt-install")
    assert counters["vcpus_created"] == counters["vcpus_destroyed"] == 2
    assert counters["unmaps"] == 1 and counters["unmaps_missing"] == 2
