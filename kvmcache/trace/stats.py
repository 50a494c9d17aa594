"""Statistics of a trace: header fields, events per op, faults, vCPUs, timestamps (`info`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kvmcache.params import parse_mapping
from kvmcache.trace import TraceSource, sidecar_path
from kvmcache.trace.events import (
    FLAG_PRIVATE,
    LEVEL_NAMES,
    MAX_VCPUS,
    OP_FAULT,
    OP_NAMES,
    OP_VCPU_CREATE,
    OP_VCPU_DESTROY,
)
from kvmcache.trace.validate import Validator

PAGE_SIZE = 4096


def gather(source: TraceSource) -> dict[str, Any]:
    """Validate every event and return the statistics of the trace (the `trace`, `events`,
    `ops`, `faults`, `vcpus`, `ts` and `params` of the `kvmcache.info/1` document)."""
    h = source.header
    validator = Validator(h)
    ops = np.zeros(8, dtype=np.int64)
    levels = np.zeros(4, dtype=np.int64)
    private = faults = 0
    seen = np.zeros(MAX_VCPUS, dtype=bool)
    first = last = tmin = tmax = None
    regressions = 0
    n = 0
    for chunk in source.chunks():
        validator.check(chunk, n)
        if len(chunk) == 0:
            continue
        op = chunk["op"]
        ops += np.bincount(op, minlength=8)[:8]
        is_fault = op == OP_FAULT
        faults += int(np.count_nonzero(is_fault))
        private += int(np.count_nonzero(chunk["flags"][is_fault] & FLAG_PRIVATE))
        levels += np.bincount(chunk["level"][is_fault], minlength=4)[:4]
        with_vcpu = is_fault | (op == OP_VCPU_CREATE) | (op == OP_VCPU_DESTROY)
        seen[chunk["vcpu"][with_vcpu]] = True
        ts = chunk["ts"]
        if first is None:
            first = int(ts[0])
        elif last > int(ts[0]):
            regressions += 1
        regressions += int(np.count_nonzero(ts[1:] < ts[:-1]))
        last = int(ts[-1])
        cmin, cmax = int(ts.min()), int(ts.max())
        tmin = cmin if tmin is None else min(tmin, cmin)
        tmax = cmax if tmax is None else max(tmax, cmax)
        n += len(chunk)
    side = sidecar_path(h.path) if h.format == "binary" else h.path
    params = parse_mapping(h.params, side) if h.params else {}
    vcpus = np.flatnonzero(seen)
    return {
        "trace": {
            "path": h.path,
            "format": h.format,
            "format_version": f"{h.version[0]}.{h.version[1]}",
            "vm_type": h.vm_type,
            "root_level": h.root_level,
            "gfn_limit": h.gfn_limit,
            "guest_memory_bytes": h.gfn_limit * PAGE_SIZE,
            "host_pfn_limit": h.host_pfn_limit,
            "host_memory_bytes": h.host_pfn_limit * PAGE_SIZE,
            "declared_count": h.count,
            "complete": h.complete,
        },
        "events": n,
        "ops": {name: int(ops[code]) for code, name in OP_NAMES.items()},
        "faults": {
            "total": faults,
            "private": private,
            "shared": faults - private,
            "levels": {name: int(levels[code]) for code, name in LEVEL_NAMES.items()},
        },
        "vcpus": {"count": len(vcpus), "max": int(vcpus[-1]) if len(vcpus) else None},
        "ts": {
            "first": first,
            "last": last,
            "min": tmin,
            "max": tmax,
            "span": (tmax - tmin) if tmax is not None else None,
            "regressions": regressions,
        },
        "params": params,
    }
