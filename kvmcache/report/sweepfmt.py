"""Sweep reports: CSV rows and a ranked rich table (the JSON document is in documents.py)."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from kvmcache.params import PARAMS
from kvmcache.report import csvfmt
from kvmcache.report.compare import short_name
from kvmcache.report.figures import DOC, FIGURES, fmt_value, ordered
from kvmcache.report.units import compact, duration
from kvmcache.results import VERDICTS
from kvmcache.sim.counters import COUNTERS
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
    blanks = [""] * (len(COUNTERS) + len(csvfmt.histogram_columns()) + len(VERDICTS))
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


def _header(name: str, width: int = 10) -> str:
    """A counter name on lines of at most ``width`` characters, broken after underscores
    (a part longer than ``width`` stays whole): the name still reads as what --sort takes."""
    if len(name) <= width:
        return name
    lines: list[str] = []
    line = ""
    for part in name.replace("_", "_\0").split("\0"):
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    lines.append(line)
    return "\n".join(lines)


@dataclass(frozen=True)
class SweepLayout:
    """How the sweep table is laid out; the first of :data:`SWEEP_LAYOUTS` that fits wins."""

    heavy: bool = True  # box lines between columns
    abbreviate: bool = False  # dpamt-install -> install
    header_width: int = 12  # counter names broken into lines of this many characters
    compact: bool = False  # 12,345,678 -> 12.3M
    trace_keys: bool = False  # t1, t2, ... for trace names (a legend follows the table)


SWEEP_LAYOUTS: tuple[SweepLayout, ...] = (
    SweepLayout(),
    SweepLayout(heavy=False, header_width=10),
    SweepLayout(heavy=False, abbreviate=True, header_width=8),
    SweepLayout(heavy=False, abbreviate=True, header_width=8, trace_keys=True),
    SweepLayout(heavy=False, abbreviate=True, header_width=6, compact=True, trace_keys=True),
)


def _trace_name(path: str, sweep: SweepResult, layout: SweepLayout) -> str:
    if layout.trace_keys:
        return f"t{sweep.traces.index(path) + 1}"
    return _short(path, sweep.traces)


def shown_counters(counter: str) -> list[str]:
    """The key counters in the figures' group order, the sort counter added when another."""
    shown = [f.counter for f in ordered(all_counters=True) if f.counter in KEY_COUNTERS]
    return shown + ([counter] if counter not in shown else [])


def _metric(p: PointResult, name: str) -> int | None:
    """The value a column shows for a valid point (None: not available), derived figures
    (fault_latency_p99_ns, ...) included."""
    return point_metric(p, name)


def _unit(name: str) -> str:
    fig = FIGURES.get(name)
    if fig is not None:
        return fig.unit
    return "ns" if name.endswith("_ns") else "count"  # a metric derived from the counters


def _cell(name: str, value: int | None, compact_numbers: bool) -> str:
    if value is None:
        return "-"
    unit = _unit(name)
    if unit == "ns":
        return duration(value)
    if unit in ("bytes", "page_ns"):
        return fmt_value(FIGURES[name], value, narrow=True)
    return compact(value) if compact_numbers else f"{value:,}"


def _build(
    sweep: SweepResult, ranked: list[PointResult], counter: str, layout: SweepLayout
) -> Table:
    valid = [p for p in ranked if p.valid]
    axes = list(sweep.grid)
    one_trace = len(sweep.traces) == 1
    t = Table(
        box=box.HEAVY_HEAD if layout.heavy else box.SIMPLE_HEAD,
        pad_edge=layout.heavy,
        show_edge=layout.heavy,
        padding=(0, 1) if layout.heavy else 0,  # the box's blank rule separates columns
    )
    t.add_column("#", justify="right", style="dim", no_wrap=True)
    t.add_column(PARETO_MARK, justify="center", no_wrap=True)
    if not one_trace:
        t.add_column("trace", no_wrap=True)
    t.add_column("alloc", style="magenta", no_wrap=True)
    for a in axes:
        t.add_column(_header(a, layout.header_width), justify="right", style="cyan", no_wrap=True)
    shown = shown_counters(counter)
    for c in shown:
        t.add_column(
            _header(c, layout.header_width),
            justify="right",
            style="bold" if c == counter else None,
            no_wrap=True,
        )
    for i, p in enumerate(valid, 1):
        t.add_row(
            str(i),
            Text(PARETO_MARK, style="bold yellow") if p.pareto else "",
            *([] if one_trace else [_trace_name(p.trace, sweep, layout)]),
            short_name(p.alloc) if layout.abbreviate else p.alloc,
            *(_param_text(p.params[a]) for a in axes),
            *(_cell(name, _metric(p, name), layout.compact) for name in shown),
        )
    return t


def render_table(sweep: SweepResult, console: Console, by: str = "cache_pages_idle_peak") -> None:
    """Points ranked by ``by`` with a Pareto mark, the grid values and the key counters, in
    the widest layout that fits the console (names never broken)."""
    counter, desc = sort_key(by)
    ranked = rank(sweep.points, by)
    valid = [p for p in ranked if p.valid]
    invalid = [p for p in ranked if not p.valid]
    axes = list(sweep.grid)
    front = sum(p.pareto for p in valid)
    title = Text(
        f"kvmcache sweep: {len(sweep.points)} points, {len(valid)} valid, "
        f"{front} on the Pareto front ({PARETO_MARK})"
    )
    if len(sweep.traces) == 1:
        title.append(f"\ntrace {sweep.traces[0]}")
    wide = console.options.update_width(1 << 16)
    for layout in SWEEP_LAYOUTS:
        t = _build(sweep, ranked, counter, layout)
        if Measurement.get(console, wide, t).maximum <= console.width:
            break
    console.print(title)
    console.print(t)
    lines = [
        f"sorted by {counter} ({'descending' if desc else 'ascending'}); Pareto front per trace "
        f"among valid points, minimising {', '.join(sweep.objectives)}",
        f"columns are counter names (what --sort and --limit take), defined in {DOC}",
    ]
    if layout.abbreviate:
        lines.append("install, alloc, pair, prealloc = dpamt-install, dpamt-alloc, ...")
    shown = shown_counters(counter)
    if layout.compact and any(
        _unit(n) not in ("bytes", "ns", "page_ns") and (_metric(p, n) or 0) >= 10**7
        for p in valid
        for n in shown
    ):
        lines.append("M = million, G = billion, T = trillion")
    if layout.trace_keys and len(sweep.traces) > 1:
        lines += [f"t{i} = {path}" for i, path in enumerate(sweep.traces, 1)]
    console.print(Text("\n".join(lines), style="dim"))
    if invalid:
        # one row per (trace, grid point, reason), its strategies listed together
        groups: dict[tuple[int, int, str], list[PointResult]] = {}
        for p in sorted(invalid, key=lambda p: p.order):
            groups.setdefault((p.trace_index, p.point_index, p.error or ""), []).append(p)
        bad = Table(
            title=f"{len(invalid)} invalid points",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        bad.add_column("trace", no_wrap=True)
        bad.add_column("alloc", style="magenta", min_width=8)
        for a in axes:
            bad.add_column(_header(a), justify="right", style="cyan", no_wrap=True)
        bad.add_column("reason", style="red", ratio=1)
        for (_, _, error), ps in groups.items():
            first = ps[0]
            bad.add_row(
                _trace_name(first.trace, sweep, layout),
                ", ".join(short_name(p.alloc) for p in ps),
                *(_param_text(first.point.get(a, first.params.get(a, ""))) for a in axes),
                error,
            )
        console.print()
        console.print(bad)


def table_text(
    sweep: SweepResult, by: str = "cache_pages_idle_peak", width: int | None = None
) -> str:
    """The table as plain text (no colour), for ``-o FILE`` or a pipe: ``width`` columns,
    else COLUMNS when set, else 160."""
    if width is None:
        env = os.environ.get("COLUMNS", "")
        width = int(env) if env.isdigit() and int(env) > 0 else 160
    buf = io.StringIO()
    render_table(sweep, Console(file=buf, width=width, color_system=None), by)
    return buf.getvalue()
