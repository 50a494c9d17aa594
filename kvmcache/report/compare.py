"""Side-by-side table of one trace under several strategies (the JSON document is in documents.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kvmcache.report.table import duration, fmt_int, page_seconds
from kvmcache.results import VERDICTS, ReplayResult, verdict
from kvmcache.sim.counters import COUNTERS

#: The figures of the default table: (label, counter). Lower is better for all of them.
KEY_FIGURES: tuple[tuple[str, str], ...] = (
    ("pages allocated", "pages_allocated"),
    ("live pages at peak", "pages_live_peak"),
    ("PAMT pairs at peak", "pamt_pairs_peak"),
    ("PAMT pairs at end", "pamt_pairs_end"),
    ("PAMT.ADD", "pamt_add"),
    ("PAMT.REMOVE", "pamt_remove"),
    ("pamt_lock acquisitions", "pamt_lock_acquired"),
    ("SEAMCALLs under mmu_lock", "seamcalls_under_mmu_lock"),
    ("pairs discarded", "pairs_discarded"),
    ("idle cache pages at peak", "cache_pages_idle_peak"),
    ("idle cache pages at end", "cache_pages_idle_end"),
    ("idle cache page-seconds", "cache_idle_page_ns"),
    ("allocations under mmu_lock", "alloc_under_lock"),
    ("fault retries", "fault_retries"),
)
KEY_LABELS: dict[str, str] = {c: label for label, c in KEY_FIGURES}


# --------------------------------------------------------------------------- table


def relative_spread(values: Sequence[int]) -> float:
    """(max - min) / max over the strategies: 0 when they agree, 1 when one is 0 and another not."""
    hi, lo = max(values), min(values)
    top = max(abs(hi), abs(lo))
    return (hi - lo) / top if top else 0.0


def fmt_delta(value: int, ref: int, page_ns: bool = False) -> str:
    """The difference from the reference: '+56, +4.8%'; percent is n/a when ref is 0."""
    d = value - ref
    absolute = f"{d / 1e9:+,.3f}" if page_ns else f"{d:+,}"
    pct = "n/a" if ref == 0 else f"{d * 100 / ref:+.1f}%"
    return f"{absolute}, {pct}"


def fmt_value(counter: str, value: int, all_counters: bool) -> str:
    if counter == "cache_idle_page_ns" and not all_counters:
        return page_seconds(value)
    return fmt_int(value)


@dataclass
class Row:
    """One figure of the table and how much the strategies disagree on it."""

    label: str
    counter: str
    values: list[int]
    spread: float
    order: int


def table_rows(results: Sequence[ReplayResult], all_counters: bool = False) -> list[Row]:
    """The figures, most different first (relative spread), ties in their usual order."""
    figures = (
        [(KEY_LABELS.get(c, c.replace("_", " ")), c) for c in COUNTERS]
        if all_counters
        else list(KEY_FIGURES)
    )
    rows = []
    for i, (label, c) in enumerate(figures):
        values = [r.counters[c] for r in results]
        rows.append(Row(label, c, values, relative_spread(values), i))
    rows.sort(key=lambda row: (-row.spread, row.order))
    return rows


def build_table(
    results: Sequence[ReplayResult],
    reference: str,
    all_counters: bool = False,
    stacked: bool = False,
    counter_column: bool = True,
) -> Table:
    """One column per strategy (reference first), one row per figure, then the verdicts.

    ``counter_column`` adds the exact counter names (what --limit takes); ``stacked``
    puts each difference under its value, for terminals too narrow for one line per cell.
    """
    ref_i = next(i for i, r in enumerate(results) if r.alloc == reference)
    order = [ref_i] + [i for i in range(len(results)) if i != ref_i]
    t = Table(
        box=box.SIMPLE_HEAD if stacked else box.HEAVY_HEAD,
        show_lines=stacked,
        pad_edge=not stacked,
    )
    t.add_column("figure", style="cyan", no_wrap=not stacked, min_width=13)
    counter_column = counter_column and not stacked
    if counter_column:
        t.add_column("counter", style="dim", no_wrap=True)
    for i in order:
        r = results[i]
        name = r.alloc.replace("-", "-\n", 1) if stacked else r.alloc
        head = Text(name, style="bold magenta")
        if i == ref_i:
            head.append("\n(reference)", style="dim")
        elif r.effective_alloc != r.alloc:
            head.append(f"\n(= {r.effective_alloc})", style="dim")
        t.add_column(head, justify="right", no_wrap=not stacked)
    sep = "\n" if stacked else " "
    for row in table_rows(results, all_counters):
        highlight = row.counter in KEY_LABELS and row.spread > 0
        best = min(row.values)
        ref = row.values[ref_i]
        cells: list[Text] = []
        for i in order:
            v = row.values[i]
            cell = Text(
                fmt_value(row.counter, v, all_counters),
                style="bold green" if highlight and v == best else "",
            )
            if i != ref_i:
                if v == ref:
                    cell.append(f"{sep}(=)", style="dim")
                else:
                    page_ns = row.counter == "cache_idle_page_ns" and not all_counters
                    cell.append(
                        f"{sep}({fmt_delta(v, ref, page_ns)})",
                        style="red" if v > ref else "green",
                    )
            cells.append(cell)
        if counter_column:
            t.add_row(row.label, row.counter, *cells)
        else:
            t.add_row(row.label, *cells)
    t.add_section()
    for attr, counters in VERDICTS.items():
        label, behind = attr.replace("_", "-"), ", ".join(counters)
        cells = [
            Text("yes", style="bold green")
            if verdict(results[i].counters)[attr]
            else Text("NO", style="bold red")
            for i in order
        ]
        if counter_column:
            t.add_row(Text(label, style="bold"), behind, *cells)
        else:
            t.add_row(Text(label, style="bold"), *cells)
    return t


def render_compare(
    results: Sequence[ReplayResult],
    reference: str,
    console: Console,
    all_counters: bool = False,
) -> None:
    """Print a compare: the trace, then the side-by-side table."""
    first = results[0]
    h = first.header
    c = first.counters
    head = Text()
    head.append(f"{h.path}", style="bold")
    head.append(f"  {h.vm_type}, root level {h.root_level}, ")
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
    for layout in ({}, {"counter_column": False}, {"stacked": True}):
        table = build_table(results, reference, all_counters, **layout)
        if Measurement.get(console, wide, table).maximum <= console.width:
            break
    table.caption = (
        "lower is better; best value per row in bold green; "
        f"differences (absolute, percent) are against {reference}"
    )
    table.caption_justify = "left"
    console.print(table)
