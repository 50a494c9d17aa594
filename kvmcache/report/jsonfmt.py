"""JSON documents (INTERFACES.md section 4)."""

from __future__ import annotations

import json
from typing import Any

from kvmcache import __version__
from kvmcache.sim.replay import ReplayResult

REPLAY_SCHEMA = "kvmcache.replay/1"


def trace_info(result: ReplayResult) -> dict[str, Any]:
    """The `trace` object of a report."""
    h = result.header
    return {
        "path": h.path,
        "events": result.counters["events"],
        "vm_type": h.vm_type,
        "root_level": h.root_level,
        "gfn_limit": h.gfn_limit,
        "host_pfn_limit": h.host_pfn_limit,
        "ts_first": result.ts_first,
        "ts_last": result.ts_last,
    }


def replay_document(result: ReplayResult) -> dict[str, Any]:
    """One replay as the `kvmcache.replay/1` document."""
    return {
        "schema": REPLAY_SCHEMA,
        "version": __version__,
        "trace": trace_info(result),
        "alloc": result.alloc,
        "effective_alloc": result.effective_alloc,
        "params": dict(result.params),
        "counters": dict(result.counters),
        "histograms": {k: list(v) for k, v in result.histograms.items()},
        "verdict": {"spinlock_safe": result.spinlock_safe, "balanced": result.balanced},
        "notes": list(result.notes),
    }


def dumps(doc: Any) -> str:
    """Serialise a report document (indented, stable key order)."""
    return json.dumps(doc, indent=1)
