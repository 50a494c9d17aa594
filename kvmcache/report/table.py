"""Rich terminal reports for one replay."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kvmcache.results import ReplayResult
from kvmcache.sim.counters import CACHES

SPARK = " ▁▂▃▄▅▆▇█"


def fmt_int(n: int) -> str:
    """Integers with thousands separators."""
    return f"{n:,}"


def page_seconds(page_ns: int) -> str:
    """Idle page-nanoseconds as page-seconds, readable (small values keep 3 significant digits)."""
    value = page_ns / 1e9
    if value == 0 or value >= 1:
        return f"{value:,.3f}"
    return f"{value:.3g}"


def duration(ns: int) -> str:
    """A span of nanoseconds in the unit that reads best."""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if abs(ns) >= scale:
            return f"{ns / scale:,.3f} {unit}"
    return f"{ns} ns"


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
        t.append("NOT spinlock-safe", style="bold red")
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


def render_replay(result: ReplayResult, console: Console) -> None:
    """Print one replay: trace, faults, caches, DPAMT, pages and waste, verdict."""
    c = result.counters
    h = result.header
    span = ""
    if result.ts_first is not None and result.ts_last is not None:
        span = duration(result.ts_last - result.ts_first)
    head = Text()
    head.append(f"{h.path}", style="bold")
    head.append(f"  {h.vm_type}, root level {h.root_level}, ")
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

    caches = Table(title="Caches (per-vCPU kvm_mmu_memory_cache, summed)", title_justify="left")
    caches.add_column("cache", style="cyan")
    for col in ("top-ups", "allocated", "consumed", "freed unused", "peak held", "held at end"):
        caches.add_column(col, justify="right")
    for name in CACHES:
        label = name
        if name == "pamt" and result.effective_alloc == "dpamt-prealloc":
            label = "pamt (shared list)"
        caches.add_row(
            label,
            *(
                fmt_int(c[f"{name}_{f}"])
                for f in (
                    "topups",
                    "allocated",
                    "consumed",
                    "freed_unused",
                    "held_peak",
                    "held_end",
                )
            ),
        )

    dpamt = _kv_table(
        "DPAMT",
        [
            ("gets (fast path)", f"{fmt_int(c['pamt_get'])} ({fmt_int(c['pamt_get_fast'])})"),
            ("puts (fast path)", f"{fmt_int(c['pamt_put'])} ({fmt_int(c['pamt_put_fast'])})"),
            ("PAMT.ADD / PAMT.REMOVE", f"{fmt_int(c['pamt_add'])} / {fmt_int(c['pamt_remove'])}"),
            ("pamt_lock acquired", fmt_int(c["pamt_lock_acquired"])),
            ("SEAMCALLs under mmu_lock", fmt_int(c["seamcalls_under_mmu_lock"])),
            (
                "pairs at peak / end",
                f"{fmt_int(c['pamt_pairs_peak'])} / {fmt_int(c['pamt_pairs_end'])}",
            ),
            ("pairs discarded", fmt_int(c["pairs_discarded"])),
            ("ranges pinned only by idle caches (peak)", fmt_int(c["cache_only_ranges_peak"])),
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
            ("live pages at peak", fmt_int(c["pages_live_peak"])),
            ("allocated directly (no cache)", fmt_int(c["alloc_direct"])),
            ("allocated under mmu_lock", fmt_int(c["alloc_under_lock"])),
            (
                "idle cache pages at peak / end",
                f"{fmt_int(c['cache_pages_idle_peak'])} / {fmt_int(c['cache_pages_idle_end'])}",
            ),
            ("idle cache page-seconds", page_seconds(c["cache_idle_page_ns"])),
            ("cached pages freed unused", fmt_int(freed_unused_pages)),
            ("timestamps going backwards", fmt_int(c["ts_backwards"])),
        ],
    )
    hist = result.histograms["fault_pages"]
    hist_text = Text()
    hist_text.append("pages per locked fault section (0..16+): ", style="cyan")
    hist_text.append(sparkline(hist))
    hist_text.append("  " + " ".join(str(x) for x in hist), style="dim")

    console.print(Panel(head, title="kvmcache replay", expand=False))
    console.print(faults)
    console.print()
    console.print(caches)
    console.print()
    console.print(Group(dpamt, Text(), waste))
    console.print()
    console.print(hist_text)
    console.print(Text("verdict: ", style="bold") + verdict_text(result))
