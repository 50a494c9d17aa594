"""CSV reports: one row per run, every parameter, counter and histogram bucket a column."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from kvmcache.params import PARAMS
from kvmcache.results import VERDICTS, ReplayResult, verdict
from kvmcache.sim.counters import COUNTERS, HISTOGRAM_BUCKETS, HISTOGRAMS


def histogram_columns() -> list[str]:
    """``fault_pages_0`` .. ``fault_pages_16``, then ``fault_latency_0`` .. ``fault_latency_31``."""
    return [f"{h}_{i}" for h in HISTOGRAMS for i in range(HISTOGRAM_BUCKETS[h])]


def columns(extra: Sequence[str] = ()) -> list[str]:
    """The header row."""
    return (
        ["trace", "alloc", "effective_alloc", *extra]
        + [p.name for p in PARAMS]
        + list(COUNTERS)
        + histogram_columns()
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
        + [n for h in HISTOGRAMS for n in _buckets(result, h)]
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


def _buckets(result: ReplayResult, name: str) -> list[int]:
    """A histogram's buckets (zeros for a result made without it)."""
    return list(result.histograms.get(name, [0] * HISTOGRAM_BUCKETS[name]))
