"""Rich terminal reports for one replay."""

from __future__ import annotations

from rich import box
from rich.console import Console, Group
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kvmcache.report.figures import (
    DOC,
    PERCENTILES,
    fault_pages_label,
    latency_bucket_label,
    percentile_text,
)
from kvmcache.report.units import (
    PAGE_BYTES,
    PAIR_BYTES,
    compact,
    duration,
    fmt_int,
    human_bytes,
    page_seconds,
    pages_bytes,
)
from kvmcache.results import ReplayResult, spinlock_problem
from kvmcache.sim.counters import CACHES

__all__ = [
    "duration",
    "fmt_int",
    "histogram_table",
    "page_seconds",
    "render_replay",
    "sparkline",
    "time_rows",
    "verdict_text",
]

SPARK = " ▁▂▃▄▅▆▇█"


def sparkline(values: list[int]) -> str:
    """A one-line bar chart of a histogram (no dependencies beyond text)."""
    top = max(values) if values else 0
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[0 if v == 0 else max(1, round(v * 8 / top))] for v in values)


def verdict_text(result: ReplayResult) -> Text:
    """The one-line verdict: spinlock-safe and balanced, with the counts behind them."""
    c = result.counters
    t = Text()
    if result.spinlock_safe:
        t.append("spinlock-safe", style="bold green")
        t.append(" (no allocation under mmu_lock, no fault retries)")
    else:
        # Two different verdicts: a page allocated inside the locked section, or a fault
        # that dropped the lock to retry (which allocates nothing under it).
        t.append(f"NOT spinlock-safe: {spinlock_problem(c)}", style="bold red")
        t.append(
            f" ({fmt_int(c['alloc_under_lock'])} allocations under mmu_lock, "
            f"{fmt_int(c['fault_retries'])} fault retries)"
        )
    t.append("; ")
    if result.balanced:
        t.append("balanced", style="bold green")
        t.append(" (no refcount underflow, no leaked range)")
    else:
        t.append("NOT balanced", style="bold red")
        t.append(
            f" ({fmt_int(c['refcount_underflow'])} refcount underflows, "
            f"{fmt_int(c['leaked_ranges'])} leaked ranges)"
        )
    return t


def _kv_table(title: str, rows: list[tuple[str, str]]) -> Table:
    t = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    t.add_column("figure", style="cyan")
    t.add_column("value", justify="right")
    for k, v in rows:
        t.add_row(k, v)
    return t


def pages_text(pages: int) -> str:
    """``399 (1.6 MiB)``: a number of 4 KiB pages and their memory."""
    return f"{fmt_int(pages)} ({pages_bytes(pages)})" if pages else "0"


def object_bytes(result: ReplayResult, cache: str) -> int:
    """The memory of one object of ``cache``: a slab object's size parameter, or its pages."""
    if cache == "desc":
        return int(result.params.get("desc_bytes", 128))
    if cache == "header":
        return int(result.params.get("header_bytes", 192))
    if cache == "sept" and result.effective_alloc == "dpamt-pair":
        return 3 * PAGE_BYTES  # the page and its pair
    return PAGE_BYTES


def pamt_memory_rows(result: ReplayResult) -> list[tuple[str, str]]:
    """PAMT memory at peak in bytes, and what it is made of for this strategy."""
    c = result.counters
    total = c["pamt_bytes_peak"]
    if result.header.vm_type != "tdx":
        return [("PAMT memory at peak", "0 (not a TD)")]
    if result.effective_alloc == "none":
        return [
            ("PAMT memory at peak", human_bytes(total)),
            ("  static PAMT_4K", "all host memory"),
        ]
    pairs = PAIR_BYTES * c["pamt_pairs_peak"]
    return [
        ("PAMT memory at peak", human_bytes(total)),
        ("  pairs + refcount array", f"{human_bytes(pairs)} + {human_bytes(total - pairs)}"),
    ]


def time_rows(result: ReplayResult) -> list[tuple[str, str]]:
    """The Time block: MODEL.md section 8 counters in the unit that reads best."""
    c = result.counters
    hist = result.histograms.get("fault_latency", [])
    n = sum(hist)
    pcts = " / ".join(percentile_text(hist, q) for _, q in PERCENTILES)
    mean = (
        f"{duration(c['fault_latency_ns'] // n)} over {fmt_int(n)} fault{'s' if n != 1 else ''}"
        if n
        else "no fault"
    )
    return [
        ("allocating outside the lock (top-ups)", duration(c["time_topup_ns"])),
        (
            "under mmu_lock: total / longest section",
            f"{duration(c['time_locked_ns'])} / {duration(c['time_locked_max_ns'])}",
        ),
        (
            "pamt_lock waits: total / longest",
            f"{duration(c['pamt_lock_wait_ns'])} / {duration(c['pamt_lock_wait_max_ns'])}",
        ),
        (
            "pamt_lock acquisitions that waited",
            f"{fmt_int(c['pamt_lock_contended'])} of {fmt_int(c['pamt_lock_acquired'])}",
        ),
        ("pamt_lock held", duration(c["pamt_lock_held_ns"])),
        (
            "fault latency p50 / p99 / max",
            f"{pcts} / {duration(c['fault_latency_max_ns'])}" if n else "-",
        ),
        ("fault latency mean", mean),
        ("vCPU delay (vCPU still busy)", duration(c["vcpu_delay_ns"])),
    ]


def histogram_table(name: str, hist: list[int], width: int = 16) -> Table:
    """A histogram as labelled rows (non-empty buckets only) with a bar per row."""
    if name == "fault_latency":
        title, head = "fault latency (non-spurious faults)", "latency"
        labels = [latency_bucket_label(b) for b in range(len(hist))]
    else:
        title, head = "pages per locked fault section", "pages"
        labels = [fault_pages_label(b, len(hist)) for b in range(len(hist))]
    t = Table(title=title, title_justify="left", box=None, pad_edge=False)
    t.add_column(head, style="cyan", no_wrap=True)
    t.add_column("faults", justify="right", no_wrap=True)
    t.add_column("", no_wrap=True)
    top = max(hist) if hist else 0
    for label, count in zip(labels, hist, strict=True):
        if count:
            bar = "█" * max(1, round(count * width / top))
            t.add_row(label, fmt_int(count), Text(bar, style="magenta"))
    if not top:
        t.add_row("(no fault)", "0", "")
    return t


def caches_table(result: ReplayResult, width: int) -> Table:
    """The five caches' counters and the memory they held at the peak; counts over ten
    million are compacted (``12.3M``) when the exact table would not fit ``width``."""
    c = result.counters
    fields = ("topups", "allocated", "consumed", "freed_unused", "held_peak", "held_end")
    heads = ("top-ups", "allocated", "consumed", "freed\nunused", "held at\npeak", "held at\nend")
    for fmt in (fmt_int, compact):
        caches = Table(
            title="Caches (per-vCPU kvm_mmu_memory_cache, summed; objects)",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        caches.add_column("cache", style="cyan", no_wrap=True)
        for col in heads:
            caches.add_column(col, justify="right", no_wrap=True)
        caches.add_column("memory\nat peak", justify="right", no_wrap=True)
        for name in CACHES:
            label = name
            if name == "pamt" and result.effective_alloc == "dpamt-prealloc":
                label = "pamt (list)"
            caches.add_row(
                label,
                *(fmt(c[f"{name}_{f}"]) for f in fields),
                human_bytes(c[f"{name}_held_peak"] * object_bytes(result, name)),
            )
        probe = Console(width=1 << 16)
        if Measurement.get(probe, probe.options, caches).maximum <= width:
            break
    return caches


def render_replay(result: ReplayResult, console: Console) -> None:
    """Print one replay: trace, faults, caches, DPAMT, pages and waste, time, verdict."""
    c = result.counters
    h = result.header
    span = ""
    if result.ts_first is not None and result.ts_last is not None:
        span = duration(result.ts_last - result.ts_first)
    head = Text()
    head.append(f"{h.path}", style="bold")
    head.append(f"\n{h.vm_type}, root level {h.root_level}, ")
    head.append(f"{fmt_int(c['events'])} events, {fmt_int(c['vcpus_created'])} vCPUs")
    if span:
        head.append(f", span {span}")
    head.append("\nstrategy ")
    head.append(result.alloc, style="bold magenta")
    for note in result.notes:
        head.append(f"  ({note})", style="yellow")

    faults = _kv_table(
        "Faults and tree",
        [
            (
                "faults (private / shared)",
                f"{fmt_int(c['faults'])} ({fmt_int(c['faults_private'])} / {fmt_int(c['faults_shared'])})",
            ),
            ("spurious", fmt_int(c["faults_spurious"])),
            (
                "level adjusted / collapses",
                f"{fmt_int(c['faults_level_adjusted'])} / {fmt_int(c['collapses'])}",
            ),
            ("fault retries", fmt_int(c["fault_retries"])),
            ("unmaps (missing)", f"{fmt_int(c['unmaps'])} ({fmt_int(c['unmaps_missing'])})"),
            ("splits", fmt_int(c["splits"])),
            (
                "tables linked mirror / direct",
                f"{fmt_int(c['tables_linked_mirror'])} / {fmt_int(c['tables_linked_direct'])}",
            ),
            ("tables freed", fmt_int(c["tables_freed"])),
            (
                "leaves 4K / 2M / 1G",
                f"{fmt_int(c['leaves_4k'])} / {fmt_int(c['leaves_2m'])} / {fmt_int(c['leaves_1g'])}",
            ),
        ],
    )

    caches = caches_table(result, console.width)

    dpamt = _kv_table(
        "DPAMT",
        [
            *pamt_memory_rows(result),
            (
                "pairs at peak / end",
                f"{fmt_int(c['pamt_pairs_peak'])} / {fmt_int(c['pamt_pairs_end'])}"
                + (
                    f" ({human_bytes(PAIR_BYTES * c['pamt_pairs_peak'])} at peak)"
                    if c["pamt_pairs_peak"]
                    else ""
                ),
            ),
            (
                "refcount gets (fast path)",
                f"{fmt_int(c['pamt_get'])} ({fmt_int(c['pamt_get_fast'])})",
            ),
            (
                "refcount puts (fast path)",
                f"{fmt_int(c['pamt_put'])} ({fmt_int(c['pamt_put_fast'])})",
            ),
            ("PAMT.ADD / PAMT.REMOVE", f"{fmt_int(c['pamt_add'])} / {fmt_int(c['pamt_remove'])}"),
            ("pamt_lock acquired", fmt_int(c["pamt_lock_acquired"])),
            ("PAMT.ADD under mmu_lock", fmt_int(c["seamcalls_under_mmu_lock"])),
            (
                "pairs discarded",
                pages_text(2 * c["pairs_discarded"]).replace(
                    fmt_int(2 * c["pairs_discarded"]), fmt_int(c["pairs_discarded"]), 1
                ),
            ),
            ("ranges pinned only by cached pages at peak", fmt_int(c["cache_only_ranges_peak"])),
        ],
    )

    freed_unused_pages = (
        c["spt_freed_unused"]
        + c["pamt_freed_unused"]
        + c["sept_freed_unused"] * (3 if result.effective_alloc == "dpamt-pair" else 1)
    )
    waste = _kv_table(
        "Pages and waste",
        [
            (
                "pages allocated / freed",
                f"{fmt_int(c['pages_allocated'])} / {fmt_int(c['pages_freed'])}",
            ),
            ("live pages at peak", pages_text(c["pages_live_peak"])),
            ("allocated directly (no cache)", fmt_int(c["alloc_direct"])),
            ("allocated under mmu_lock", fmt_int(c["alloc_under_lock"])),
            ("idle cache pages at peak", pages_text(c["cache_pages_idle_peak"])),
            ("idle cache pages at end", pages_text(c["cache_pages_idle_end"])),
            ("idle cache page-seconds", page_seconds(c["cache_idle_page_ns"])),
            ("cached pages freed unused", pages_text(freed_unused_pages)),
            ("timestamps going backwards", fmt_int(c["ts_backwards"])),
        ],
    )
    times = _kv_table("Time (model clock, ns_* parameters)", time_rows(result))

    hists = [
        histogram_table("fault_pages", result.histograms["fault_pages"]),
        histogram_table("fault_latency", result.histograms.get("fault_latency", [])),
    ]

    console.print(Panel(head, title="kvmcache replay", expand=False))
    console.print(faults)
    console.print()
    console.print(caches)
    console.print(Group(dpamt, Text(), waste, Text(), times))
    console.print()
    if console.width >= 100:
        grid = Table.grid(padding=(0, 4))
        grid.add_row(*hists)
        console.print(grid)
    else:
        console.print(Group(hists[0], Text(), hists[1]))
    console.print()
    console.print(Text("verdict: ", style="bold") + verdict_text(result))
    console.print(
        Text(
            "fault latency p50/p99 are upper bounds of fault_latency buckets (powers of 2 ns); "
            f"every figure is defined in {DOC}",
            style="dim",
        )
    )
