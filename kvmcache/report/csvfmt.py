"""CSV reports: one row per run, every parameter and counter a column."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from kvmcache.params import PARAMS
from kvmcache.results import VERDICTS, ReplayResult, verdict
from kvmcache.sim.counters import COUNTERS, FAULT_PAGES_BUCKETS


def columns(extra: Sequence[str] = ()) -> list[str]:
    """The header row."""
    return (
        ["trace", "alloc", "effective_alloc", *extra]
        + [p.name for p in PARAMS]
        + list(COUNTERS)
        + [f"fault_pages_{i}" for i in range(FAULT_PAGES_BUCKETS)]
        + list(VERDICTS)
    )


def row(result: ReplayResult, extra: Sequence[object] = ()) -> list[object]:
    """One run as a row matching :func:`columns`."""
    params = [
        str(result.params[p.name]).lower() if p.is_bool else result.params[p.name] for p in PARAMS
    ]
    return (
        [result.header.path, result.alloc, result.effective_alloc, *extra]
        + params
        + [result.counters[c] for c in COUNTERS]
        + list(result.histograms["fault_pages"])
        + [str(ok).lower() for ok in verdict(result.counters).values()]
    )


def render(results: Iterable[ReplayResult]) -> str:
    """CSV text for a list of runs."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns())
    for r in results:
        w.writerow(row(r))
    return out.getvalue()
