"""The HTML report of ``kvmcache plot -o REPORT.html``: the tables and the charts of a
result in one self-contained page (inline SVG, inline CSS, no script, nothing fetched),
viewable offline. Plain HTML tables; matplotlib draws the charts (report/plots.py)."""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Sequence
from typing import Any

from kvmcache import __version__
from kvmcache.report.plots import (
    COMPARE_FIGURES,
    TIMELINE_FIGURES,
    PlotData,
    Run,
    _run_labels,
    axis_title,
    choose_axes,
    draw,
    figure_bytes,
    latency_runs,
)
from kvmcache.results import VERDICTS, spinlock_problem
from kvmcache.sim.counters import COUNTERS

#: Rows of a compare report's key-figure table, after COMPARE_FIGURES.
TIME_FIGURES: tuple[str, ...] = (
    "fault_latency_p99_ns",
    "fault_latency_mean_ns",
    "fault_latency_max_ns",
    "time_topup_ns",
    "time_locked_ns",
    "time_locked_max_ns",
    "pamt_lock_wait_ns",
    "pamt_lock_wait_max_ns",
    "pamt_lock_contended",
    "vcpu_delay_ns",
    "pamt_bytes_peak",
)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .55em}
th{background:#f3f3f3;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.pareto td{background:#fff8d6}.fail{color:#b00020;font-weight:600}.pass{color:#1b6e20}
.skip{color:#8a6d00}figure{margin:1em 0}figure svg{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}.note{font-size:.85em;color:#555}
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: int | None) -> str:
    return "–" if v is None else f"{v:,}"


def _table(caption: str, head: Sequence[str], rows: Iterable[tuple[str, Sequence[str]]]) -> str:
    """A plain table; each row is (css class, cells); a cell starting with '#' is numeric
    (right-aligned, the '#' dropped); cells are escaped here."""
    out = [f"<table>\n<caption>{_e(caption)}</caption>\n<thead><tr>"]
    out += [f"<th>{_e(h)}</th>" for h in head]
    out.append("</tr></thead>\n<tbody>\n")
    for cls, cells in rows:
        out.append(f'<tr class="{_e(cls)}">' if cls else "<tr>")
        for c in cells:
            if c.startswith("#"):
                out.append(f'<td class="n">{_e(c[1:])}</td>')
            else:
                out.append(f"<td>{_e(c)}</td>")
        out.append("</tr>\n")
    out.append("</tbody>\n</table>\n")
    return "".join(out)


def _svg(fig) -> str:
    """A figure as inline SVG markup (the XML prolog and doctype dropped)."""
    text = figure_bytes(fig, "svg").decode("utf-8")
    start = text.find("<svg")
    return text[start:] if start >= 0 else text


def _figure(fig, caption: str) -> str:
    return f"<figure>\n{_svg(fig)}\n<figcaption>{_e(caption)}</figcaption>\n</figure>\n"


def _verdict_cells(runs: Sequence[Run]) -> list[tuple[str, list[str]]]:
    spin = ["spinlock-safe"]
    bal = ["balanced"]
    for r in runs:
        c = r.counters
        if all(k in c for k in VERDICTS["spinlock_safe"]):
            problem = spinlock_problem(c)
            spin.append("yes" if problem is None else f"no: {problem}")
        else:
            spin.append("–")
        if all(k in c for k in VERDICTS["balanced"]):
            bal.append("yes" if all(c[k] == 0 for k in VERDICTS["balanced"]) else "no")
        else:
            bal.append("–")
    return [("", spin), ("", bal)]


def _gates(docs: Sequence[dict[str, Any]]) -> str:
    """The gates recorded in the JSON inputs (replay/compare --limit, --require, --baseline)."""
    out = []
    for doc in docs:
        gates = doc.get("gates")
        if not isinstance(gates, dict) or not isinstance(gates.get("checks"), list):
            continue
        rows = []
        for c in gates["checks"]:
            if not isinstance(c, dict):
                continue
            status = str(c.get("status", ""))
            cls = {"failed": "fail", "passed": "pass", "skipped": "skip"}.get(status, "")
            rows.append((cls, [str(c.get("alloc", "")), str(c.get("name", "")), status,
                               str(c.get("message", ""))]))  # fmt: skip
        summary = (
            f"CI gates: {gates.get('checked', 0)} checked, {gates.get('passed', 0)} passed, "
            f"{gates.get('failed', 0)} failed, {gates.get('skipped', 0)} not compared"
        )
        out.append(_table(summary, ["strategy", "gate", "status", "detail"], rows))
    return "<h2>Gates</h2>\n" + "".join(out) if out else ""


def _compare_body(data: PlotData) -> str:
    labels = _run_labels(data.runs)
    head = ["figure", *labels]
    rows: list[tuple[str, list[str]]] = []
    for name in (*COMPARE_FIGURES, *TIME_FIGURES):
        rows.append(("", [name, *(f"#{_num(r.value(name))}" for r in data.runs)]))
    rows += _verdict_cells(data.runs)
    parts = ["<h2>Key figures</h2>\n", _table("key figures per strategy", head, rows)]
    parts.append(_gates(data.documents))
    parts.append("<h2>Charts</h2>\n")
    parts.append(_figure(draw(data, which="bars"), "key figures, each relative to its largest run"))
    if data.asked:
        caption = f"{axis_title(data.x or '')} vs {axis_title(data.y or '')} per strategy"
        parts.append(_figure(draw(data), caption))
    if latency_runs(data):
        parts.append(
            _figure(
                draw(data, which="latency"),
                "fault-latency distribution per strategy (share of non-spurious faults per "
                "power-of-two bucket)",
            )
        )
    present = {k for r in data.runs for k in r.counters}
    names = [c for c in COUNTERS if c in present] + sorted(present - set(COUNTERS))
    every = [(c, [c, *(f"#{_num(r.counters.get(c))}" for r in data.runs)]) for c in names]
    parts.append("<h2>Every counter</h2>\n")
    parts.append(_table("every counter per strategy", head, [("", cells) for _, cells in every]))
    return "".join(parts)


def _sweep_body(data: PlotData) -> str:
    if data.x is None or data.y is None:
        choose_axes(data)
    xn, yn = data.x or "", data.y or ""
    objectives = [o for o in data.objectives if o not in (xn, yn)]
    head = ["#", "trace", "strategy", *data.grid, xn, yn, *objectives, "Pareto"]
    rows = []
    for i, r in enumerate(data.runs, 1):
        cells = [f"#{i}", os.path.basename(r.trace), r.alloc]
        cells += [str(r.params.get(g, "")).lower() for g in data.grid]
        cells += [f"#{_num(r.value(n))}" for n in (xn, yn, *objectives)]
        cells.append("★" if r.pareto else "")
        rows.append(("pareto" if r.pareto else "", cells))
    parts = [
        "<h2>Points</h2>\n",
        _table(f"{len(data.runs)} valid points, in the order of the input", head, rows),
    ]
    invalid = [p for d in data.documents for p in (d.get("invalid") or []) if isinstance(p, dict)]
    if invalid:
        bad = [
            ("", [os.path.basename(str(p.get("trace", ""))), str(p.get("alloc", "")),
                  str(p.get("error", ""))])
            for p in invalid
        ]  # fmt: skip
        parts.append(_table(f"{len(invalid)} invalid points", ["trace", "strategy", "reason"], bad))
    parts.append("<h2>Trade-off</h2>\n")
    parts.append(
        _figure(draw(data), f"{axis_title(xn)} vs {axis_title(yn)}, one panel per strategy")
    )
    return "".join(parts)


def _timeline_body(data: PlotData) -> str:
    rows = []
    for s in data.series:
        for col in TIMELINE_FIGURES:
            v = s.columns[col]
            rows.append(("", [s.label, col, f"#{_num(min(v, default=0))}",
                              f"#{_num(max(v, default=0))}", f"#{_num(v[-1] if v else 0)}"]))  # fmt: skip
    return (
        "<h2>Summary</h2>\n"
        + _table("each timeline column", ["series", "figure", "min", "max", "last"], rows)
        + "<h2>Timeline</h2>\n"
        + _figure(draw(data), "running figures over the events")
    )


def report_page(data: PlotData, title: str | None = None) -> bytes:
    """The whole page as UTF-8 bytes."""
    heading = title or f"kvmcache {data.kind}: {', '.join(map(os.path.basename, data.sources))}"
    body = {"compare": _compare_body, "sweep": _sweep_body, "timeline": _timeline_body}[data.kind](
        data
    )
    sources = ", ".join(_e(s) for s in data.sources)
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(heading)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{_e(heading)}</h1>\n"
        f'<p class="note">From {sources}; kvmcache {_e(__version__)}. Latency percentiles are '
        "bucket bounds: the upper bound of the power-of-two bucket that holds them.</p>\n"
        f"{body}</body>\n</html>\n"
    )
    return page.encode("utf-8")
