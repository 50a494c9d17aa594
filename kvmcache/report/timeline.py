"""Timeline CSV: running figures sampled every N events by the kernel (no Python per event)."""

from __future__ import annotations

import csv
from collections.abc import Sequence

from kvmcache.atomic import atomic_open
from kvmcache.results import TIMELINE_COLUMNS, ReplayResult


def default_every(count: int | None, rows: int = 1000) -> int:
    """Sample spacing giving about ``rows`` rows over a trace of ``count`` events."""
    if not count:
        return 1000
    return max(1, count // rows)


def write_timeline(path: str, results: Sequence[ReplayResult]) -> int:
    """Write the timelines of one or more runs (one `alloc` column) atomically; returns rows."""
    rows = 0
    with atomic_open(path, "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("alloc",) + TIMELINE_COLUMNS)
        for r in results:
            if r.timeline is None:
                continue
            for sample in r.timeline.tolist():
                w.writerow([r.alloc, *sample])
                rows += 1
    return rows
