"""Side-by-side table of one trace under several strategies (the JSON document is in documents.py).

Rows come in a stable order, grouped (memory, safety, DPAMT traffic, waste, time; see
:mod:`kvmcache.report.figures`). The table picks the widest layout that fits the console:
one line per figure with absolute and relative differences, then shorter cells, then two
lines per figure (label over counter name, value over difference) with abbreviated
strategy names. Strategy names are never broken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kvmcache.report.figures import (
    DOC,
    KEY_FIGURES,
    Figure,
    fmt_difference,
    fmt_value,
    ordered,
    value_of,
)
from kvmcache.report.units import duration, fmt_int
from kvmcache.results import VERDICTS, ReplayResult, verdict

__all__ = [
    "KEY_FIGURES",
    "LAYOUTS",
    "Row",
    "build_table",
    "relative_spread",
    "render_compare",
    "table_rows",
    "tie_notes",
]

KEY_LABELS: dict[str, str] = {f.counter: f.label for f in KEY_FIGURES}


def relative_spread(values: Sequence[int]) -> float:
    """(max - min) / max over the strategies: 0 when they agree, 1 when one is 0 and another not."""
    hi, lo = max(values), min(values)
    top = max(abs(hi), abs(lo))
    return (hi - lo) / top if top else 0.0


@dataclass
class Row:
    """One figure of the table and how much the strategies disagree on it."""

    figure: Figure
    values: list[int]
    spread: float

    @property
    def counter(self) -> str:
        return self.figure.counter

    @property
    def label(self) -> str:
        return self.figure.label


def table_rows(results: Sequence[ReplayResult], all_counters: bool = False) -> list[Row]:
    """The figures in their stable, grouped order (key figures, or every counter)."""
    rows = []
    for fig in ordered(all_counters):
        values = [value_of(fig, r.counters, r.histograms) for r in results]
        rows.append(Row(fig, values, relative_spread(values)))
    return rows


def short_name(alloc: str) -> str:
    """``dpamt-install`` -> ``install`` (the legend under the table says so)."""
    return alloc.removeprefix("dpamt-")


@dataclass(frozen=True)
class Layout:
    """How the table is laid out: see the module docstring."""

    stacked: bool = False  # two lines per figure
    counter_column: bool = True  # exact counter names in their own column (wide layouts)
    full_cells: bool = True  # "value (bytes) (+abs, +pct)" rather than "value pct"
    abbreviate: bool = False  # strategy names without "dpamt-"
    tight: bool = False  # two-line layouts: one space between columns instead of two


#: Tried in order; the first that fits the console's width is used.
LAYOUTS: tuple[Layout, ...] = (
    Layout(),
    Layout(abbreviate=True),
    Layout(full_cells=False, abbreviate=True),
    Layout(stacked=True, counter_column=False),
    Layout(stacked=True, counter_column=False, abbreviate=True),
    Layout(stacked=True, counter_column=False, tight=True),
    Layout(stacked=True, counter_column=False, abbreviate=True, tight=True),
    Layout(stacked=True, counter_column=False, full_cells=False, abbreviate=True),
    Layout(stacked=True, counter_column=False, full_cells=False, abbreviate=True, tight=True),
)
#: The figure column wraps a long label beyond this width.
LABEL_WIDTH = 26


def _cell(row: Row, i: int, ref_i: int, result: ReplayResult, layout: Layout, best: bool) -> Text:
    v, ref = row.values[i], row.values[ref_i]
    text = Text(
        fmt_value(row.figure, v, result.histograms, narrow=not layout.full_cells),
        style="bold green" if best else "",
    )
    if i == ref_i:
        if layout.stacked:
            text.append("\n")
        return text
    sep = "\n" if layout.stacked else " "
    if v == ref:
        text.append(f"{sep}(=)" if layout.full_cells else f"{sep}=", style="dim")
        return text
    diff = fmt_difference(row.figure, v, ref, narrow=not layout.full_cells)
    text.append(
        f"{sep}({diff})" if layout.full_cells else f"{sep}{diff}",
        style="red" if v > ref else "green",
    )
    return text


def build_table(
    results: Sequence[ReplayResult],
    reference: str,
    all_counters: bool = False,
    layout: Layout = LAYOUTS[0],
) -> Table:
    """One column per strategy (reference first), one row per figure, then the verdicts."""
    ref_i = next(i for i, r in enumerate(results) if r.alloc == reference)
    order = [ref_i] + [i for i in range(len(results)) if i != ref_i]
    t = Table(
        box=box.SIMPLE_HEAD if layout.stacked else box.HEAVY_HEAD,
        pad_edge=not layout.stacked,
        show_edge=not layout.stacked,
        padding=(0, 1) if not layout.stacked else (0, 0, 0, 0 if layout.tight else 1),
    )
    t.add_column(
        "figure" + ("\ncounter (--limit)" if layout.stacked else ""),
        style="cyan",
        max_width=LABEL_WIDTH,
        min_width=max(len(f.counter) for f in ordered(all_counters)) if layout.stacked else None,
    )
    if layout.counter_column:
        t.add_column("counter (--limit)", style="dim", no_wrap=True)
    for i in order:
        r = results[i]
        head = Text(short_name(r.alloc) if layout.abbreviate else r.alloc, style="bold magenta")
        if i == ref_i:
            head.append("\n(ref)" if layout.abbreviate else "\n(reference)", style="dim")
        elif r.effective_alloc != r.alloc:
            head.append(f"\n(= {short_name(r.effective_alloc)})", style="dim")
        t.add_column(head, justify="right", no_wrap=True)
    rows = table_rows(results, all_counters)
    for n, row in enumerate(rows):
        highlight = row.figure.key and row.spread > 0
        low = min(row.values)
        cells = [
            _cell(row, i, ref_i, results[i], layout, highlight and row.values[i] == low)
            for i in order
        ]
        counter = row.counter if row.figure.limitable else "(histogram)"
        last_of_group = n + 1 == len(rows) or rows[n + 1].figure.group != row.figure.group
        if layout.stacked:
            label = Text(row.figure.short_label)
            label.append(f"\n{counter}", style="dim")
            t.add_row(label, *cells, end_section=last_of_group)
        elif layout.counter_column:
            t.add_row(row.label, counter, *cells, end_section=last_of_group)
        else:
            t.add_row(row.label, *cells, end_section=last_of_group)
    for attr, counters in VERDICTS.items():
        label, behind = attr.replace("_", "-"), ",\n".join(counters)
        cells = [
            Text("yes", style="bold green")
            if verdict(results[i].counters)[attr]
            else Text("NO", style="bold red")
            for i in order
        ]
        if layout.counter_column:
            t.add_row(Text(label, style="bold"), behind, *cells)
        else:
            t.add_row(Text(label, style="bold"), *cells)
    return t


def tie_notes(results: Sequence[ReplayResult], all_counters: bool = False) -> list[str]:
    """A note for each pair of DPAMT strategies that tie on every figure of the table:
    why, and what to vary."""
    rows = table_rows(results, all_counters)
    notes = []
    for i, a in enumerate(results):
        for j in range(i + 1, len(results)):
            b = results[j]
            if a.effective_alloc == b.effective_alloc or "none" in (a.alloc, b.alloc):
                continue
            if any(row.values[i] != row.values[j] for row in rows):
                continue
            names = f"{a.alloc} and {b.alloc}"
            if {a.alloc, b.alloc} == {"dpamt-alloc", "dpamt-install"} and a.params.get(
                "spread"
            ) == 1:
                notes.append(
                    f"{names} tie on every figure: with spread=1 every fresh page lands in a "
                    "2 MiB range that is already live, so a page dpamt-alloc caches never "
                    "pins a range of its own. Try --set spread=512 and compare "
                    "cache_only_ranges_peak."
                )
            else:
                notes.append(
                    f"{names} tie on every figure: this trace and these parameters do not "
                    "reach what separates them (when a pair is prepared). Try --set "
                    "spread=512, a smaller capacity or pamt_pairs."
                )
    return notes


def render_compare(
    results: Sequence[ReplayResult],
    reference: str,
    console: Console,
    all_counters: bool = False,
) -> None:
    """Print a compare: the trace, then the side-by-side table that fits, then its notes."""
    first = results[0]
    h = first.header
    c = first.counters
    head = Text()
    head.append(f"{h.path}", style="bold")
    head.append(f"\n{h.vm_type}, root level {h.root_level}, ")
    head.append(f"{fmt_int(c['events'])} events, {fmt_int(c['vcpus_created'])} vCPUs")
    if first.ts_first is not None and first.ts_last is not None:
        head.append(f", span {duration(first.ts_last - first.ts_first)}")
    head.append("\nreference ")
    head.append(reference, style="bold magenta")
    notes = sorted({n for r in results for n in r.notes})
    for note in notes:
        head.append(f"\n{note}", style="yellow")
    console.print(Panel(head, title="kvmcache compare", expand=False))
    wide = console.options.update_width(1 << 16)
    for layout in LAYOUTS:
        table = build_table(results, reference, all_counters, layout)
        if Measurement.get(console, wide, table).maximum <= console.width:
            break
    console.print(table)
    for note in tie_notes(results, all_counters):
        console.print(Text(note, style="yellow"))
    lines = [
        "lower is better; best value per row in bold green; "
        f"differences (absolute, percent) are against {reference}",
        "fault latency p50/p99 are bounds of fault_latency histogram buckets (powers of 2 ns)",
    ]
    if layout.abbreviate:
        lines.append("install, alloc, pair, prealloc = dpamt-install, dpamt-alloc, ...")
    if not layout.full_cells:
        lines.append("a page is 4 KiB, a PAMT pair 8 KiB; differences in percent")
    lines.append(f"every figure is defined in {DOC}")
    console.print(Text("\n".join(lines), style="dim"))
