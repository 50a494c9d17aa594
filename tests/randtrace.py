"""Random VALID traces that stress the model (MODEL.md), for comparing implementations.

The guest space is a few 2 MiB regions inside a few 1 GiB regions, so that collisions,
spurious faults, level fits, collapses, splits and unmaps of present and missing leaves
happen often; host pfns are clustered in a few 2 MiB host ranges; several vCPUs come and
go; parameters are small so that empty-cache fallbacks and pamt retries happen too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kvmcache.trace.events import (
    EVENT_DTYPE,
    FLAG_PRIVATE,
    LEVEL_NAMES,
    OP_FAULT,
    OP_NAMES,
    OP_SPLIT,
    OP_UNMAP,
    OP_VCPU_CREATE,
    OP_VCPU_DESTROY,
    OP_VM_CREATE,
    OP_VM_DESTROY,
    U64_MAX,
)

NS_PARAMS = (
    "ns_alloc",
    "ns_slab",
    "ns_topup",
    "ns_free",
    "ns_pamt_add",
    "ns_pamt_remove",
    "ns_fault",
    "ns_link",
)


def _chance(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def _pick(rng: np.random.Generator, seq: list[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def random_params(rng: np.random.Generator, host_pfn_limit: int) -> dict[str, Any]:
    """Small random parameter overrides (always a valid merged set)."""
    out: dict[str, Any] = {}
    if _chance(rng, 0.1):
        return out  # the defaults: capacity 40, 5 pairs, ...
    if _chance(rng, 0.9):
        cap = int(rng.integers(1, 13))
        out["capacity"] = cap
        for name in ("min_desc", "min_sept", "min_spt", "min_header"):
            out[name] = int(rng.integers(0, cap + 1))
    if _chance(rng, 0.8):
        out["pamt_pairs"] = int(_pick(rng, [1, 1, 1, 2, 3]))
    if _chance(rng, 0.8):
        out["spread"] = int(_pick(rng, [1, 2, 3, 4, 5, 6, 7, 8, 8, 8]))
    if _chance(rng, 0.7):
        out["prealloc_sept"] = int(rng.integers(0, 5))
    for name in ("tdr_pages", "tdcs_pages", "tdvpr_pages", "tdcx_pages"):
        if _chance(rng, 0.7):
            out[name] = 0 if _chance(rng, 0.5) else int(rng.integers(1, 4))
    if _chance(rng, 0.8):
        out["teardown"] = _chance(rng, 0.5)
    if _chance(rng, 0.5):
        # Section 8 costs: tight (0, 1), small, the defaults, or extreme (2^32 - 1).
        for name in NS_PARAMS:
            if _chance(rng, 0.6):
                out[name] = int(_pick(rng, [0, 1, 2, int(rng.integers(0, 5000)), 2**32 - 1]))
    if _chance(rng, 0.1):
        # An explicit kernel region: aligned or not, after host memory or overlapping the
        # guest's host ranges (then S-EPT pages and guest pages share DPAMT ranges).
        kind = int(rng.integers(3))
        if kind == 0:
            out["kernel_base_pfn"] = host_pfn_limit + int(rng.integers(0, 4096))
        elif kind == 1:
            out["kernel_base_pfn"] = int(rng.integers(1, max(2, host_pfn_limit)))
        else:
            out["kernel_base_pfn"] = ((host_pfn_limit >> 9) + int(rng.integers(1, 8))) << 9
    return out


def random_trace(
    rng: np.random.Generator, n_events: int, *, vm_type: str, root_level: int
) -> tuple[dict[str, Any], np.ndarray, dict[str, Any]]:
    """(header, EVENT_DTYPE events, params overrides) of one random valid trace."""
    tdx = vm_type == "tdx"

    # Guest space: a few 1 GiB regions, each with a few 2 MiB regions.
    gig_regions: list[int] = []
    for _ in range(int(rng.integers(1, 4))):
        gig_regions.append(int(rng.integers(0, 8)) << 18)
    if _chance(rng, 0.1):
        # A gfn at or above 512^L: still one root, tables indexed by gfn >> 9k.
        gig_regions.append(1 << (9 * root_level))
    two_m: list[int] = []
    for base in gig_regions:
        for _ in range(int(rng.integers(1, 4))):
            two_m.append(base + (int(rng.integers(0, 4)) << 9))
    gfn_limit = max(gig_regions) + (1 << 18)
    if _chance(rng, 0.3):
        gfn_limit += int(rng.integers(0, 1 << 20))

    # Host memory: a few 2 MiB host ranges; the limit is not always 2 MiB aligned.
    host_pfn_limit = int(_pick(rng, [0x40000, 0x100000, 0x1000000]))
    if _chance(rng, 0.3):
        host_pfn_limit += int(rng.integers(1, 512))
    host_ranges = [
        int(rng.integers(0, host_pfn_limit >> 9)) for _ in range(int(rng.integers(1, 9)))
    ]

    header = {
        "vm_type": vm_type,
        "root_level": root_level,
        "gfn_limit": gfn_limit,
        "host_pfn_limit": host_pfn_limit,
    }
    params = random_params(rng, host_pfn_limit)

    vcpu_pool = sorted({int(rng.integers(0, 6)) for _ in range(int(rng.integers(1, 5)))})
    if _chance(rng, 0.05):
        vcpu_pool.append(65535)
    live: set[int] = set()
    history: list[tuple[int, int, bool]] = []  # (gfn, level, private) of past faults

    # ts, op, vcpu, gfn, pfn, level, flags
    rows: list[tuple[int, int, int, int, int, int, int]] = []
    ts = int(rng.integers(0, 1000))
    if _chance(rng, 0.05):
        ts = U64_MAX - int(rng.integers(0, 100_000))  # the model clock saturates (section 8.1)

    def next_ts() -> int:
        nonlocal ts
        r = rng.random()
        if r < 0.06 and ts > 0:
            ts -= int(rng.integers(1, min(ts, 5000) + 1))  # goes backwards
        elif r < 0.10:
            pass  # equal
        elif r < 0.11:
            ts = min(U64_MAX, ts + (1 << int(rng.integers(32, 63))))  # a huge gap
        else:
            ts = min(U64_MAX, ts + int(rng.integers(1, 2000)))
        return ts

    def random_gfn() -> int:
        base = _pick(rng, two_m)
        if _chance(rng, 0.7):
            return base + int(rng.integers(0, 8))
        return base + int(rng.integers(0, 512))

    def random_pfn(level: int) -> int:
        r = _pick(rng, host_ranges)
        if level > 1 and _chance(rng, 0.8):
            return r << 9  # aligned
        return (r << 9) + int(rng.integers(0, 512))

    want_vm_create = _chance(rng, 0.6)
    want_vm_destroy = _chance(rng, 0.3)
    body = n_events - int(want_vm_create and n_events > 0)
    body -= int(want_vm_destroy and body > 0)
    if want_vm_create and n_events > 0:
        rows.append((ts, OP_VM_CREATE, 0, 0, 0, 0, 0))
    for _ in range(max(0, body)):
        t = next_ts()
        r = rng.random()
        not_live = [v for v in vcpu_pool if v not in live]
        if r < 0.06 and not_live:
            v = _pick(rng, not_live)
            live.add(v)
            rows.append((t, OP_VCPU_CREATE, v, 0, 0, 0, 0))
        elif r < 0.11:
            v = _pick(rng, vcpu_pool)  # a vCPU that is not live is created, then destroyed
            live.discard(v)
            rows.append((t, OP_VCPU_DESTROY, v, 0, 0, 0, 0))
        elif r < 0.26:
            if history and _chance(rng, 0.7):
                gfn, level, private = _pick(rng, history)
                if _chance(rng, 0.3):
                    level = int(rng.integers(1, 4))
                if _chance(rng, 0.2):
                    gfn = (gfn >> 9 << 9) + int(rng.integers(0, 512))
            else:
                gfn, level, private = (
                    random_gfn(),
                    int(rng.integers(1, 4)),
                    tdx and _chance(rng, 0.6),
                )
            if not tdx:
                private = _chance(rng, 0.05)  # a private unmap on vmx misses
            rows.append((t, OP_UNMAP, 0, gfn, 0, level, FLAG_PRIVATE if private else 0))
        elif r < 0.33:
            big = [h for h in history if h[1] == 2]
            if big and _chance(rng, 0.8):
                gfn, _level, private = _pick(rng, big)
                gfn = (gfn >> 9 << 9) + int(rng.integers(0, 512))
            else:
                gfn, private = random_gfn(), tdx and _chance(rng, 0.6)
            if not tdx:
                private = _chance(rng, 0.05)  # a private split on vmx misses
            rows.append((t, OP_SPLIT, 0, gfn, 0, 0, FLAG_PRIVATE if private else 0))
        else:
            v = _pick(rng, vcpu_pool)
            live.add(v)
            if history and _chance(rng, 0.25):
                gfn, level, private = _pick(rng, history)  # likely spurious
                if _chance(rng, 0.5):
                    gfn = (gfn >> 9 << 9) + int(rng.integers(0, 512))
            else:
                gfn = random_gfn()
                level = int(_pick(rng, [1, 1, 1, 1, 1, 1, 2, 2, 2, 3]))
                private = tdx and _chance(rng, 0.65)
            pfn = random_pfn(level)
            history.append((gfn, level, private))
            rows.append((t, OP_FAULT, v, gfn, pfn, level, FLAG_PRIVATE if private else 0))
    if want_vm_destroy and len(rows) < n_events:
        rows.append((next_ts(), OP_VM_DESTROY, 0, 0, 0, 0, 0))

    events = np.zeros(len(rows), dtype=EVENT_DTYPE)
    for i, (t, op, vcpu, gfn, pfn, level, flags) in enumerate(rows):
        events[i] = (t, gfn, pfn, vcpu, op, level, flags)
    return header, events, params


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(int(value))


def to_yaml_text(header: dict[str, Any], events: np.ndarray, params: dict[str, Any]) -> str:
    """The same trace as an INTERFACES.md section 2 YAML document."""
    lines = [
        "kvmcache-trace: 1",
        f"vm: {{type: {header['vm_type']}, root_level: {int(header['root_level'])}, "
        f"gfn_limit: {int(header['gfn_limit']):#x}, "
        f"host_pfn_limit: {int(header['host_pfn_limit']):#x}}}",
    ]
    if params:
        inner = ", ".join(f"{k}: {_yaml_value(v)}" for k, v in params.items())
        lines.append(f"params: {{{inner}}}")
    if len(events) == 0:
        lines.append("events: []")
        return "\n".join(lines) + "\n"
    lines.append("events:")
    for e in events:
        op = int(e["op"])
        fields = [f"ts: {int(e['ts'])}", f"op: {OP_NAMES[op]}"]
        if op in (OP_VCPU_CREATE, OP_VCPU_DESTROY, OP_FAULT):
            fields.append(f"vcpu: {int(e['vcpu'])}")
        if op in (OP_FAULT, OP_UNMAP, OP_SPLIT):
            fields.append(f"gfn: {int(e['gfn']):#x}")
        if op == OP_FAULT:
            fields.append(f"pfn: {int(e['pfn']):#x}")
        if op in (OP_FAULT, OP_UNMAP):
            fields.append(f"level: {LEVEL_NAMES[int(e['level'])]}")
        if op in (OP_FAULT, OP_UNMAP, OP_SPLIT) and int(e["flags"]) & FLAG_PRIVATE:
            fields.append("private: true")
        lines.append(f"  - {{{', '.join(fields)}}}")
    return "\n".join(lines) + "\n"
