"""Sweep reports: CSV rows and a ranked rich table (the JSON document is in documents.py)."""

from __future__ import annotations

import csv
import io
import os

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kvmcache.params import PARAMS
from kvmcache.report import csvfmt
from kvmcache.results import VERDICTS
from kvmcache.sim.counters import COUNTERS, FAULT_PAGES_BUCKETS
from kvmcache.sim.sweep import PointResult, SweepResult, point_metric, rank, sort_key

#: Counters the table shows for every point (the sort counter is added when it is another).
KEY_COUNTERS: tuple[str, ...] = (
    "pages_allocated",
    "cache_pages_idle_peak",
    "alloc_under_lock",
    "fault_retries",
    "pamt_pairs_peak",
    "pamt_add",
)
PARETO_MARK = "★"


def _param_text(v: int | bool) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


CSV_EXTRA = ("status", "pareto", "error")


def csv_columns() -> list[str]:
    """The sweep CSV header: a replay CSV row with status, pareto and error after the strategy."""
    return csvfmt.columns(CSV_EXTRA)


def _invalid_row(p: PointResult) -> list[object]:
    params = [_param_text(p.params[q.name]) if q.name in p.params else "" for q in PARAMS]
    blanks = [""] * (len(COUNTERS) + FAULT_PAGES_BUCKETS + len(VERDICTS))
    return [p.trace, p.alloc, "", "invalid", "false", p.error or "", *params, *blanks]


def render_csv(sweep: SweepResult, by: str = "cache_pages_idle_peak") -> str:
    """One row per point (valid ones ranked by ``by``, then the invalid ones)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(csv_columns())
    for p in rank(sweep.points, by):
        if p.result is not None:
            w.writerow(csvfmt.row(p.result, ("ok", str(p.pareto).lower(), "")))
        else:
            w.writerow(_invalid_row(p))
    return out.getvalue()


def _metric_text(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def _short(path: str, others: list[str]) -> str:
    """A trace's base name, or its full path when two traces share a base name."""
    base = os.path.basename(path)
    return base if sum(os.path.basename(o) == base for o in others) == 1 else path


def _header(name: str) -> str:
    """A counter name on two lines, broken at the underscore nearest its middle."""
    cuts = [i for i, ch in enumerate(name) if ch == "_"]
    if len(name) <= 10 or not cuts:
        return name
    i = min(cuts, key=lambda c: abs(c - len(name) / 2))
    return name[: i + 1] + "\n" + name[i + 1 :]


def render_table(sweep: SweepResult, console: Console, by: str = "cache_pages_idle_peak") -> None:
    """Points ranked by ``by`` with the grid values, key counters and a Pareto mark."""
    counter, desc = sort_key(by)
    shown = list(KEY_COUNTERS) + ([counter] if counter not in KEY_COUNTERS else [])
    ranked = rank(sweep.points, by)
    valid = [p for p in ranked if p.valid]
    invalid = [p for p in ranked if not p.valid]
    axes = list(sweep.grid)
    front = sum(p.pareto for p in valid)
    title = (
        f"kvmcache sweep: {len(sweep.points)} points, {len(valid)} valid, "
        f"{front} on the Pareto front ({PARETO_MARK})"
    )
    t = Table(title=title, title_justify="left")
    t.add_column("#", justify="right", style="dim", min_width=len(str(len(valid))))
    t.add_column("trace", min_width=10)
    t.add_column("alloc", style="magenta", min_width=14)
    for a in axes:
        t.add_column(_header(a), justify="right", style="cyan")
    for c in shown:
        t.add_column(_header(c), justify="right", style="bold" if c == counter else None)
    t.add_column("pareto", justify="center")
    for i, p in enumerate(valid, 1):
        t.add_row(
            str(i),
            _short(p.trace, sweep.traces),
            p.alloc,
            *(_param_text(p.params[a]) for a in axes),
            *(_metric_text(point_metric(p, name)) for name in shown),
            Text(PARETO_MARK, style="bold yellow") if p.pareto else "",
        )
    console.print(t)
    note = Text(
        f"sorted by {counter} ({'descending' if desc else 'ascending'}); Pareto front per trace "
        f"among valid points, minimising {', '.join(sweep.objectives)}",
        style="dim",
    )
    console.print(note)
    if invalid:
        # one row per (trace, grid point, reason), its strategies listed together
        groups: dict[tuple[int, int, str], list[PointResult]] = {}
        for p in sorted(invalid, key=lambda p: p.order):
            groups.setdefault((p.trace_index, p.point_index, p.error or ""), []).append(p)
        bad = Table(title=f"{len(invalid)} invalid points", title_justify="left")
        bad.add_column("trace", min_width=10)
        bad.add_column("alloc", style="magenta", min_width=14)
        for a in axes:
            bad.add_column(_header(a), justify="right", style="cyan")
        bad.add_column("reason", style="red")
        for (_, _, error), ps in groups.items():
            first = ps[0]
            bad.add_row(
                _short(first.trace, sweep.traces),
                ", ".join(p.alloc for p in ps),
                *(_param_text(first.point.get(a, first.params.get(a, ""))) for a in axes),
                error,
            )
        console.print()
        console.print(bad)


def table_text(sweep: SweepResult, by: str = "cache_pages_idle_peak", width: int = 160) -> str:
    """The table as plain text (no colour), for ``-o FILE``."""
    buf = io.StringIO()
    render_table(sweep, Console(file=buf, width=width, color_system=None), by)
    return buf.getvalue()
