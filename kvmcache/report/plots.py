"""Charts of kvmcache results: timelines, sweep trade-offs and strategy comparisons.

Inputs are recognised by their content, not their name: a timeline CSV (``replay
--timeline``), a sweep result (``sweep`` JSON or CSV) or a compare/replay result (JSON
``kvmcache.compare/1`` or ``kvmcache.replay/1``, or a replay/compare CSV). matplotlib is an
optional extra, imported only when a chart is drawn (Agg backend, no pyplot state);
:func:`text_summary` needs nothing beyond the standard library.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvmcache.errors import KvmcacheError, reading
from kvmcache.limits import excerpt
from kvmcache.params import PARAMS
from kvmcache.report.documents import COMPARE_SCHEMA, REPLAY_SCHEMA, SWEEP_SCHEMA, parse_document
from kvmcache.results import (
    DERIVED_METRICS,
    SPINLOCK_COST,
    TIMELINE_COLUMNS,
    latency_bucket_bounds,
    metric_value,
    spinlock_cost,
)
from kvmcache.sim.counters import COUNTERS, STRATEGIES

PLOT_HINT = "pip install 'kvmcache[plot]'"
IMAGE_FORMATS = ("png", "svg", "html")
KINDS = ("timeline", "sweep", "compare")
#: The JSON documents this module plots.
PLOT_SCHEMAS = (SWEEP_SCHEMA, COMPARE_SCHEMA, REPLAY_SCHEMA)

#: Timeline panels: CSV column -> panel title.
TIMELINE_FIGURES: dict[str, str] = {
    "pages_live": "live pages",
    "cache_pages_idle": "idle cache pages",
    "pamt_pairs_live": "PAMT pairs live (ranges with refcount > 0)",
    "alloc_under_lock": "allocations under mmu_lock (cumulative)",
    "fault_retries": "fault retries (cumulative)",
    "pages_allocated": "pages allocated (cumulative)",
}
#: Key figures of a comparison, grouped bars normalised per figure.
COMPARE_FIGURES: tuple[str, ...] = (
    "pages_allocated",
    "pages_live_peak",
    "cache_pages_idle_peak",
    "alloc_under_lock",
    "fault_retries",
    "pamt_add",
    "pamt_pairs_peak",
    "seamcalls_under_mmu_lock",
)
SPARK = " ▁▂▃▄▅▆▇█"
#: Default axes of a sweep chart: the first of each list whose value differs between runs
#: (and that every run has) is used; ``plot --x/--y`` choose any counter or derived metric.
SWEEP_X: tuple[str, ...] = (
    "cache_pages_idle_peak",
    "pages_allocated",
    "cache_idle_page_ns",
    "pages_live_peak",
    "pamt_bytes_peak",
)
SWEEP_Y: tuple[str, ...] = (
    "fault_latency_p99_ns",
    "fault_latency_ns",
    "time_locked_max_ns",
    SPINLOCK_COST,
    "pamt_lock_wait_ns",
    "time_topup_ns",
    "pages_allocated",
)
#: Axis titles of the figures that read better in words.
AXIS_TITLES: dict[str, str] = {
    "cache_pages_idle_peak": "idle cache pages at peak",
    "fault_latency_p99_ns": "fault latency p99, ns (upper bound of its power-of-two bucket)",
    "fault_latency_mean_ns": "mean fault latency, ns",
    "fault_latency_ns": "fault latency, ns, summed over the faults",
    SPINLOCK_COST: "allocs under mmu_lock + fault retries",
    "pages_allocated": "pages allocated",
}
#: Label every point of a sweep panel up to this many points (beyond: the Pareto ones).
LABEL_ALL_UP_TO = 40
#: Counters a sweep chart or summary reads from every run.
SWEEP_COUNTERS: tuple[str, ...] = (
    "cache_pages_idle_peak",
    "alloc_under_lock",
    "fault_retries",
    "pages_allocated",
)


# --------------------------------------------------------------------------- inputs


@dataclass
class Series:
    """One strategy's timeline: a label and one list of ints per timeline column."""

    label: str
    columns: dict[str, list[int]]


@dataclass
class Run:
    """One replay of a sweep or a comparison (what the charts need of a replay document)."""

    trace: str
    alloc: str
    params: dict[str, Any]
    counters: dict[str, int]
    pareto: bool = False
    histograms: dict[str, list[int]] = field(default_factory=dict)
    document: dict[str, Any] | None = None  # the replay document, when read from JSON

    def value(self, name: str) -> int | None:
        """A counter or derived metric of this run (None when the input lacks it)."""
        return metric_value(name, self.counters, self.histograms)


@dataclass
class PlotData:
    """Everything read from the inputs, all of one kind."""

    kind: str
    sources: list[str] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)  # timeline
    runs: list[Run] = field(default_factory=list)  # sweep (valid points) and compare
    grid: list[str] = field(default_factory=list)  # sweep: the parameters that vary
    documents: list[dict[str, Any]] = field(default_factory=list)  # the JSON inputs
    objectives: list[str] = field(default_factory=list)  # sweep: its Pareto objectives
    x: str | None = None  # the chosen axes (sweep and compare scatter)
    y: str | None = None
    asked: bool = False  # --x or --y given (a compare then draws a scatter, not bars)


_NOT_TEXT = "a kvmcache CSV or JSON result"


def _read_text(path: str) -> str:
    """The input as text, read in bounded blocks: binary data (``/dev/zero``) is refused
    at its first block instead of being read into memory."""
    from kvmcache.yamlio import read_text_stream

    with reading(path):
        if path == "-":
            return read_text_stream(_stdin_bytes(), "<stdin>", _NOT_TEXT)
        with open(path, "rb") as f:
            return read_text_stream(f, path, _NOT_TEXT)


def _stdin_bytes() -> Any:
    """Standard input as bytes (a test's replacement text stream is encoded)."""
    buf = getattr(sys.stdin, "buffer", None)
    if buf is not None:
        return buf
    return io.BytesIO(sys.stdin.read().encode("utf-8"))


def _int(path: str, row: int, col: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise KvmcacheError(
            f"{path}: row {row}: {col} is not an integer: {excerpt(value)}"
        ) from None


def _run_from_document(doc: dict[str, Any]) -> Run:
    """A run of a replay document checked by :func:`~kvmcache.report.documents.parse_document`."""
    return Run(
        trace=str(doc["trace"].get("path")),
        alloc=doc["alloc"],
        params=dict(doc["params"]),
        counters=dict(doc["counters"]),
        pareto=bool(doc.get("pareto", False)),
        histograms=_histograms(doc.get("histograms")),
        document=doc,
    )


def _histograms(h: Any) -> dict[str, list[int]]:
    """The histograms of a replay document that are lists of integers (others ignored)."""
    if not isinstance(h, dict):
        return {}
    return {
        k: list(v)
        for k, v in h.items()
        if isinstance(v, list) and all(type(x) is int and x >= 0 for x in v)
    }


def _parse_json(path: str, text: str) -> PlotData:
    schema, doc, runs_doc = parse_document(path, text, PLOT_SCHEMAS, "plot input")
    runs = [_run_from_document(r) for r in runs_doc]
    if schema != SWEEP_SCHEMA:
        return PlotData("compare", [path], runs=runs, documents=[doc])
    for i, run in enumerate(runs):
        _require_counters(path, f"runs[{i}].counters", run.counters)
    grid = doc.get("grid")
    names = [str(k) for k in grid] if isinstance(grid, dict) else _varying(runs)
    objectives = doc.get("pareto_objectives")
    objectives = [str(o) for o in objectives] if isinstance(objectives, list) else []
    return PlotData("sweep", [path], runs=runs, grid=names, documents=[doc], objectives=objectives)


def _require_counters(path: str, where: str, present: Any) -> None:
    """A sweep chart reads SWEEP_COUNTERS of every run: name the first one missing."""
    missing = [c for c in SWEEP_COUNTERS if c not in present]
    if missing:
        raise KvmcacheError(
            f"{path}: {where} lacks {', '.join(missing)} (needed for a sweep chart)"
        )


def _varying(runs: Sequence[Run]) -> list[str]:
    """Parameters whose value differs between runs of one trace (a sweep CSV does not name
    its grid; different traces may bring different parameters of their own)."""
    traces = {r.trace for r in runs}
    return [
        p.name
        for p in PARAMS
        if any(len({str(r.params.get(p.name)) for r in runs if r.trace == t}) > 1 for t in traces)
    ]


def _parse_csv(path: str, text: str) -> PlotData:
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise KvmcacheError(f"{path}: not a kvmcache CSV or JSON result ({e})") from None
    if not rows:
        raise KvmcacheError(f"{path}: empty file")
    head = rows[0]
    body = [r for r in rows[1:] if r]
    if tuple(head) == ("alloc", *TIMELINE_COLUMNS):
        by_alloc: dict[str, dict[str, list[int]]] = {}
        for n, r in enumerate(body, 2):
            if len(r) != len(head):
                raise KvmcacheError(f"{path}: row {n}: {len(r)} fields, expected {len(head)}")
            cols = by_alloc.setdefault(r[0], {c: [] for c in TIMELINE_COLUMNS})
            for c, v in zip(TIMELINE_COLUMNS, r[1:], strict=True):
                cols[c].append(_int(path, n, c, v))
        series = [Series(a, cols) for a, cols in by_alloc.items()]
        return PlotData("timeline", [path], series=series)
    if head[:3] == ["trace", "alloc", "effective_alloc"] and "cache_pages_idle_peak" in head:
        idx = {name: i for i, name in enumerate(head)}
        sweep = "pareto" in idx
        if sweep:
            _require_counters(path, "the header", idx)
            if "status" not in idx:
                raise KvmcacheError(f"{path}: the header has no status column")
        runs = []
        for n, r in enumerate(body, 2):
            if len(r) != len(head):
                raise KvmcacheError(f"{path}: row {n}: {len(r)} fields, expected {len(head)}")
            if sweep and r[idx["status"]] != "ok":
                continue  # an invalid point: no counters
            counters = {c: _int(path, n, c, r[idx[c]]) for c in COUNTERS if c in idx}
            params = {p.name: r[idx[p.name]] for p in PARAMS if p.name in idx}
            pareto = sweep and r[idx["pareto"]].lower() == "true"
            runs.append(Run(r[idx["trace"]], r[idx["alloc"]], params, counters, pareto))
        if sweep:
            return PlotData("sweep", [path], runs=runs, grid=_varying(runs))
        return PlotData("compare", [path], runs=runs)
    raise KvmcacheError(
        f"{path}: not a kvmcache result this command can plot (expected a timeline CSV, "
        "a sweep JSON/CSV or a compare/replay JSON/CSV)"
    )


def read_input(path: str) -> PlotData:
    """One input file, its kind recognised from its content."""
    text = _read_text(path)
    if text.lstrip().startswith("{"):
        return _parse_json(path, text)
    return _parse_csv(path, text)


def _stem(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".csv", ".json"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def load(paths: Sequence[str]) -> PlotData:
    """Every input, which must all be of one kind; several timelines label lines by file."""
    parts = [read_input(p) for p in paths]
    kinds = {d.kind for d in parts}
    if len(kinds) > 1:
        listing = ", ".join(f"{d.sources[0]} ({d.kind})" for d in parts)
        raise KvmcacheError(f"plot: inputs of different kinds cannot share a chart: {listing}")
    out = PlotData(parts[0].kind, [p for d in parts for p in d.sources])
    for d in parts:
        if d.kind == "timeline" and len(parts) > 1:
            for s in d.series:
                out.series.append(Series(f"{_stem(d.sources[0])}: {s.label}", s.columns))
        else:
            out.series.extend(d.series)
        out.runs.extend(d.runs)
        out.grid.extend(g for g in d.grid if g not in out.grid)
        out.documents.extend(d.documents)
        out.objectives.extend(o for o in d.objectives if o not in out.objectives)
    if out.kind == "timeline" and not any(s.columns["event"] for s in out.series):
        raise KvmcacheError(f"{', '.join(out.sources)}: the timeline has no rows")
    if out.kind != "timeline" and not out.runs:
        raise KvmcacheError(f"{', '.join(out.sources)}: no valid runs to plot")
    return out


# --------------------------------------------------------------------------- axes


def axis_title(name: str) -> str:
    return AXIS_TITLES.get(name, name)


def _missing(data: PlotData, name: str) -> list[Run]:
    return [r for r in data.runs if r.value(name) is None]


def _varies(data: PlotData, name: str) -> bool:
    return len({r.value(name) for r in data.runs}) > 1


def choose_axes(data: PlotData, x: str | None = None, y: str | None = None) -> None:
    """Set ``data.x`` and ``data.y``: the names asked for (each a counter or derived metric
    that every run has), else the first of :data:`SWEEP_X` / :data:`SWEEP_Y` that varies
    between the runs (else the first every run has). Only sweeps and compares have axes."""
    from kvmcache.sim.sweep import check_metric

    if data.kind == "timeline":
        if x or y:
            raise KvmcacheError(
                "plot: --x and --y apply to sweep and compare inputs, not a timeline"
            )
        return
    for option, name in (("--x", x), ("--y", y)):
        if name is None:
            continue
        check_metric(name, option)
        lacking = _missing(data, name)
        if lacking:
            why = (
                " (no fault_latency histogram: a CSV, or a report from before the time model)"
                if name.startswith("fault_latency_") and name in DERIVED_METRICS
                else ""
            )
            raise KvmcacheError(
                f"plot: {option} {name}: {lacking[0].trace} {lacking[0].alloc} has no {name}{why}"
            )

    def pick(prefer: tuple[str, ...], avoid: str | None) -> str:
        have = [n for n in prefer if n != avoid and not _missing(data, n)]
        for n in have:
            if _varies(data, n):
                return n
        return have[0] if have else "cache_pages_idle_peak"

    data.asked = bool(x or y)
    data.x = x or pick(SWEEP_X, y)
    data.y = y or pick(SWEEP_Y, data.x)


# --------------------------------------------------------------------------- shared helpers


def lock_cost(counters: dict[str, int]) -> int:
    """Allocations under mmu_lock plus fault retries: the spinlock-safety cost of a run."""
    return spinlock_cost(counters)


def front_2d(points: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The points no other point beats on both axes (minimised), sorted by x: a staircase."""
    best: list[tuple[int, int]] = []
    for x, y in sorted(set(points)):
        if not best or y < best[-1][1]:
            best.append((x, y))
    return best


def _order_allocs(allocs: Sequence[str]) -> list[str]:
    seen = list(dict.fromkeys(allocs))
    return sorted(seen, key=lambda a: STRATEGIES.index(a) if a in STRATEGIES else len(STRATEGIES))


def _run_labels(runs: Sequence[Run]) -> list[str]:
    traces = list(dict.fromkeys(r.trace for r in runs))
    if len(traces) == 1:
        return [r.alloc for r in runs]
    return [f"{os.path.basename(r.trace)}: {r.alloc}" for r in runs]


def sparkline(values: Sequence[int], width: int = 48) -> str:
    """Values as one line of block characters (at most ``width``, max of each bucket)."""
    vals = list(values)
    if len(vals) > width:
        n = len(vals)
        vals = [max(vals[i * n // width : (i + 1) * n // width]) for i in range(width)]
    lo = min(vals, default=0)
    lo = min(lo, 0)
    top = max(vals, default=0) - lo
    if top <= 0:
        return "".join("·" if v == 0 else SPARK[8] for v in vals)
    return "".join("·" if v == 0 else SPARK[max(1, round((v - lo) * 8 / top))] for v in vals)


# --------------------------------------------------------------------------- text summary


def text_summary(data: PlotData) -> str:
    """A plain-text summary with sparklines: the ``--format table`` output (no matplotlib)."""
    lines: list[str] = []
    if data.kind == "timeline":
        lines.append(f"timeline: {', '.join(data.sources)}")
        for s in data.series:
            ev = s.columns["event"]
            lines.append(
                f"{s.label}: {len(ev)} samples, events {ev[0] if ev else 0}..{ev[-1] if ev else 0}"
            )
            for col in TIMELINE_FIGURES:
                v = s.columns[col]
                lines.append(
                    f"  {col:<18} {sparkline(v)}  min {min(v, default=0):,} "
                    f"max {max(v, default=0):,} last {v[-1] if v else 0:,}"
                )
    elif data.kind == "sweep":
        if data.x is None or data.y is None:
            choose_axes(data)
        xn, yn = data.x or "", data.y or ""

        def v(r: Run, name: str) -> int:
            return r.value(name) or 0

        objectives = [o for o in data.objectives if o not in (xn, yn)]
        lines.append(f"sweep: {', '.join(data.sources)}; grid: {', '.join(data.grid) or '(none)'}")
        lines.append(f"per strategy, in grid order: {xn} | {yn}")
        for trace in dict.fromkeys(r.trace for r in data.runs):
            lines.append(f"{trace}")
            runs = [r for r in data.runs if r.trace == trace]
            for alloc in _order_allocs([r.alloc for r in runs]):
                rs = [r for r in runs if r.alloc == alloc]
                rs.sort(key=lambda r: tuple(_sortable(r.params.get(g)) for g in data.grid))
                best = min(rs, key=lambda r: (v(r, yn), v(r, xn)))
                lines.append(
                    f"  {alloc:<15} {sparkline([v(r, xn) for r in rs], 24)} | "
                    f"{sparkline([v(r, yn) for r in rs], 24)}  "
                    f"{len(rs)} points, {sum(r.pareto for r in rs)} Pareto; lowest {yn}: "
                    f"{_point_text(best, data.grid)}: {xn} {v(best, xn):,}, {yn} {v(best, yn):,}"
                )
            front = [r for r in runs if r.pareto]
            if front:
                lines.append(f"  Pareto front ({', '.join([xn, yn, *objectives])}):")
                for r in sorted(front, key=lambda r: (v(r, xn), v(r, yn))):
                    figures = " ".join(f"{v(r, n):>12,}" for n in (xn, yn, *objectives))
                    lines.append(f"    {r.alloc:<15} {_point_text(r, data.grid):<28} {figures}")
    else:
        labels = _run_labels(data.runs)
        width = max(len(label) for label in labels)
        lines.append(f"compare: {', '.join(data.sources)} (bars relative to the largest run)")
        for fig in COMPARE_FIGURES:
            vals = [r.counters.get(fig, 0) for r in data.runs]
            top = max(vals, default=0)
            lines.append(fig)
            for label, v in zip(labels, vals, strict=True):
                n = round(24 * v / top) if top > 0 else 0
                bar = "█" * n if n or v == 0 else "▏"
                lines.append(f"  {label:<{width}} {bar:<24} {v:,}")
    return "\n".join(lines) + "\n"


def _sortable(v: Any) -> tuple[int, Any]:
    try:
        return (0, int(v))
    except (TypeError, ValueError):
        return (1, str(v))


def _point_text(r: Run, grid: Sequence[str]) -> str:
    return " ".join(f"{g}={_value_text(r.params.get(g))}" for g in grid) or "(defaults)"


def _value_text(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


# --------------------------------------------------------------------------- charts


def require_matplotlib() -> type:
    """``matplotlib.figure.Figure`` with the Agg backend, or a usage error naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        raise KvmcacheError(
            f"plotting needs matplotlib: {PLOT_HINT} (or use --format table for a text summary)"
        ) from None
    return Figure


def _timeline_figure(Figure, data: PlotData, title: str | None):
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 9), layout="constrained")
    axes = fig.subplots(3, 2, squeeze=False).ravel()
    for ax, (col, label) in zip(axes, TIMELINE_FIGURES.items(), strict=True):
        for s in data.series:
            ax.plot(s.columns["event"], s.columns[col], label=s.label, linewidth=1.4)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("events")
        ax.grid(True, alpha=0.3)
        ax.ticklabel_format(axis="both", style="plain", useOffset=False)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if len(data.series) > 1 or data.series[0].label:
        axes[0].legend(fontsize=8)
    fig.suptitle(title or f"kvmcache timeline: {', '.join(map(os.path.basename, data.sources))}")
    return fig


def _use_log(values: Sequence[int]) -> bool:
    """A log axis when positive values span more than 16x (latency bucket bounds do)."""
    pos = [v for v in values if v > 0]
    return len(pos) == len(values) and bool(pos) and max(pos) >= 16 * min(pos)


def _sweep_figure(Figure, data: PlotData, title: str | None):
    """One panel per strategy: ``data.x`` against ``data.y`` for every valid point, each
    labelled with its grid values; ★ marks the sweep's Pareto front, the dashed staircase the
    2-D front of the two axes (all minimised)."""
    from matplotlib.ticker import MaxNLocator

    if data.x is None or data.y is None:
        choose_axes(data)
    xn, yn = data.x or "", data.y or ""
    allocs = _order_allocs([r.alloc for r in data.runs])
    traces = list(dict.fromkeys(r.trace for r in data.runs))
    ncols = min(3, len(allocs))
    nrows = -(-len(allocs) // ncols)
    fig = Figure(figsize=(5.2 * ncols, 4.4 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    colors = [f"C{i % 10}" for i in range(len(traces))]

    def xy(r: Run) -> tuple[int, int]:
        return (r.value(xn) or 0, r.value(yn) or 0)

    fronts = {t: front_2d([xy(r) for r in data.runs if r.trace == t]) for t in traces}
    xmax = {t: max(xy(r)[0] for r in data.runs if r.trace == t) for t in traces}
    for ax, alloc in zip(axes, allocs, strict=False):
        panel = [r for r in data.runs if r.alloc == alloc]
        label_all = len(panel) <= LABEL_ALL_UP_TO
        for t, color in zip(traces, colors, strict=True):
            rs = [r for r in panel if r.trace == t]
            label = os.path.basename(t) if len(traces) > 1 else None
            ax.scatter([xy(r)[0] for r in rs], [xy(r)[1] for r in rs], s=22, color=color,
                       alpha=0.6, label=label, zorder=2)  # fmt: skip
            if fronts[t]:  # the staircase, carried on to the right edge of the data
                fx = [x for x, _ in fronts[t]] + [xmax[t]]
                fy = [y for _, y in fronts[t]] + [fronts[t][-1][1]]
                ax.step(fx, fy, where="post", color=color, linestyle="--", linewidth=1, alpha=0.8)
            texts: dict[tuple[int, int], list[str]] = {}
            for r in rs:
                if r.pareto:
                    ax.scatter(*xy(r), s=90, marker="*", color=color, edgecolor="black", zorder=3)
                if data.grid and (label_all or r.pareto):
                    texts.setdefault(xy(r), []).append(_point_label(r, data.grid))
            for (x, y), labels in texts.items():
                ax.annotate(" | ".join(dict.fromkeys(labels)), (x, y),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)  # fmt: skip
        ax.set_title(alloc, fontsize=11)
        ax.grid(True, alpha=0.3)
        if len(traces) > 1:
            ax.legend(fontsize=7)
    xs = [xy(r)[0] for r in data.runs]
    ys = [xy(r)[1] for r in data.runs]
    for ax in axes[: len(allocs)]:
        if _use_log(ys):
            ax.set_yscale("log", base=2)
        else:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.ticklabel_format(axis="y", style="plain", useOffset=False)
        if _use_log(xs):
            ax.set_xscale("log", base=2)
        else:
            ax.ticklabel_format(axis="x", style="plain", useOffset=False)
        ax.set_xlabel(axis_title(xn))
        ax.xaxis.set_tick_params(labelbottom=True)
    for ax in axes[len(allocs) :]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel(axis_title(yn))
    objectives = ", ".join(data.objectives) if data.objectives else "the sweep's objectives"
    sub = f"★ Pareto front per trace ({objectives}; all minimised)"
    if data.grid:
        sub += f"; points labelled {','.join(data.grid)}"
    sub += "; dashed: 2-D front of these two axes"
    import textwrap

    sub = "\n".join(textwrap.wrap(sub, width=70 * ncols))
    fig.suptitle(
        (title or f"kvmcache sweep: {axis_title(xn)} vs {axis_title(yn)}") + "\n" + sub,
        fontsize=10,
    )
    return fig


def _point_label(r: Run, grid: Sequence[str]) -> str:
    """A point's grid values: ``capacity=16`` for one axis, ``16,2`` for several."""
    if len(grid) == 1:
        return f"{grid[0]}={_value_text(r.params.get(grid[0]))}"
    return ",".join(_value_text(r.params.get(g)) for g in grid)


def _bars(ax, data: PlotData) -> None:
    labels = _run_labels(data.runs)
    n = len(data.runs)
    width = 0.8 / max(1, n)
    for i, (run, label) in enumerate(zip(data.runs, labels, strict=True)):
        xs, hs, raw = [], [], []
        for j, figname in enumerate(COMPARE_FIGURES):
            top = max(r.counters.get(figname, 0) for r in data.runs)
            v = run.counters.get(figname, 0)
            xs.append(j - 0.4 + width * (i + 0.5))
            hs.append(v / top if top > 0 else 0.0)
            raw.append(v)
        bars = ax.bar(xs, hs, width=width * 0.95, label=label, color=f"C{i % 10}")
        ax.bar_label(bars, labels=[f"{v:,}" for v in raw], fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(COMPARE_FIGURES)))
    ax.set_xticklabels(
        [f.replace("_", "_\u200b") for f in COMPARE_FIGURES], fontsize=8, rotation=20, ha="right"
    )
    ax.set_ylim(0, 1.3)
    ax.set_ylabel("relative to the largest run (bars labelled with the value)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(5, n), loc="upper left")


def latency_runs(data: PlotData) -> list[Run]:
    """The runs that carry a fault_latency histogram with at least one fault."""
    return [r for r in data.runs if sum(r.histograms.get("fault_latency", [])) > 0]


def _latency(ax, data: PlotData) -> None:
    """The fault-latency distribution per strategy: share of faults per power-of-two bucket,
    on a log2 latency axis (bucket 0, below 128 ns, is drawn from 64 ns)."""
    runs = latency_runs(data)
    labels = dict(zip(map(id, data.runs), _run_labels(data.runs), strict=True))
    used = [b for r in runs for b, n in enumerate(r.histograms["fault_latency"]) if n]
    lo, hi = min(used), max(used)
    edges = [64 if b == 0 else latency_bucket_bounds(b)[0] for b in range(lo, hi + 1)]
    edges.append(latency_bucket_bounds(hi)[1])
    shares = []
    for r in runs:
        h = r.histograms["fault_latency"]
        total = sum(h)
        share = [100.0 * h[b] / total for b in range(lo, hi + 1)]
        shares += [v for v in share if v > 0]
        ax.stairs(share, edges, label=labels[id(r)], color=f"C{data.runs.index(r) % 10}",
                  linewidth=1.6, baseline=None)  # fmt: skip
    if shares and max(shares) > 100 * min(shares):  # a tail: show it on a log scale
        ax.set_yscale("log", nonpositive="mask")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("fault latency, ns (buckets [2^k, 2^(k+1)); the first is below 128 ns)")
    ax.set_ylabel("% of non-spurious faults")
    ax.set_title("fault-latency distribution per strategy", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _scatter(ax, data: PlotData) -> None:
    """One point per run at (--x, --y), labelled with its strategy (runs that coincide
    share one label)."""
    xn, yn = data.x or "", data.y or ""
    texts: dict[tuple[int, int], list[str]] = {}
    for i, (r, label) in enumerate(zip(data.runs, _run_labels(data.runs), strict=True)):
        x, y = r.value(xn) or 0, r.value(yn) or 0
        ax.scatter([x], [y], s=40, color=f"C{i % 10}", zorder=2)
        texts.setdefault((x, y), []).append(label)
    for (x, y), labels in texts.items():
        ax.annotate(" | ".join(labels), (x, y), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)  # fmt: skip
    ax.ticklabel_format(axis="both", style="plain", useOffset=False)
    ax.set_xlabel(axis_title(xn))
    ax.set_ylabel(axis_title(yn))
    ax.grid(True, alpha=0.3)


def _compare_figure(Figure, data: PlotData, title: str | None):
    """Key figures as grouped bars (or --x against --y), and the fault-latency distribution
    per strategy when the inputs carry it."""
    n = len(data.runs)
    with_latency = bool(latency_runs(data))
    rows = 2 if with_latency else 1
    width = 10 if data.asked else max(9, 1.3 * len(COMPARE_FIGURES) * max(1, n) / 3)
    fig = Figure(figsize=(width, 5.2 * rows), layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False).ravel()
    if data.asked:
        _scatter(axes[0], data)
    else:
        _bars(axes[0], data)
    if with_latency:
        _latency(axes[1], data)
    traces = ", ".join(dict.fromkeys(os.path.basename(r.trace) for r in data.runs))
    fig.suptitle(title or f"kvmcache compare: {traces}")
    return fig


def draw(data: PlotData, title: str | None = None, which: str = "main"):
    """A matplotlib Figure of ``data`` (Agg; no pyplot state). ``which``: "main" (the chart
    of its kind), "latency" (a compare's latency distribution alone), "bars"."""
    Figure = require_matplotlib()
    if which == "latency":
        fig = Figure(figsize=(9, 4.6), layout="constrained")
        _latency(fig.subplots(), data)
        return fig
    if which == "bars":
        fig = Figure(figsize=(max(9, 1.3 * len(COMPARE_FIGURES) * len(data.runs) / 3), 5.2),
                     layout="constrained")  # fmt: skip
        _bars(fig.subplots(), data)
        return fig
    fns = {"timeline": _timeline_figure, "sweep": _sweep_figure, "compare": _compare_figure}
    return fns[data.kind](Figure, data, title)


def figure_bytes(fig, fmt: str) -> bytes:
    """A figure as reproducible PNG or SVG bytes (no dates, fixed ids)."""
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "kvmcache", "svg.fonttype": "path"}):
        buf = io.BytesIO()
        if fmt == "png":
            fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
        else:
            fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return buf.getvalue()


def render(data: PlotData, fmt: str, title: str | None = None) -> bytes:
    """The chart as PNG or SVG bytes, or an HTML report (tables and charts, self-contained)."""
    if fmt not in IMAGE_FORMATS:
        raise KvmcacheError(f"plot: unknown output format {fmt!r} (png, svg, html)")
    require_matplotlib()
    if fmt == "html":
        from kvmcache.report.html import report_page

        return report_page(data, title)
    return figure_bytes(draw(data, title), fmt)
