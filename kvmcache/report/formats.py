"""The report formats: one table of name, file extension, binary or text, and render function.

A command builds a :class:`Report` (what it computed) and hands it to :func:`emit` with the
format asked for; each render function picks what it needs from the report. Nothing here
imports rich or matplotlib until a format is rendered (``kvmcache --help`` stays fast).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from kvmcache.results import ReplayResult
    from kvmcache.sim.sweep import SweepResult

#: Width of a table written to a pipe or file (rich would use 80 columns and wrap the wide
#: compare and sweep tables); COLUMNS, when set, still wins.
PIPE_WIDTH = 160


@dataclass
class Report:
    """What a report command computed: one replay, a comparison or a sweep."""

    kind: str  # "replay" | "compare" | "sweep"
    doc: dict[str, Any]  # its JSON document (report/documents.py)
    results: Sequence[ReplayResult] = ()
    reference: str | None = None  # compare: the reference strategy
    all_counters: bool = False  # compare: every counter in the table
    sweep: SweepResult | None = None
    sort_by: str = "cache_pages_idle_peak"  # sweep: the ranking counter
    extra: dict[str, Any] = field(default_factory=dict)


#: Renders a report: its text, or None when it printed itself to the terminal.
Render = Callable[[Report, bool], "str | None"]


@dataclass(frozen=True)
class OutputFormat:
    """One output format: its name, file extension, whether it is binary, its renderer."""

    name: str
    extension: str
    binary: bool
    render: Render


def no_color() -> bool:
    """NO_COLOR set to anything but the empty string (https://no-color.org)."""
    return bool(os.environ.get("NO_COLOR"))


def console_options() -> dict[str, Any]:
    """Options every rich console of kvmcache takes: with NO_COLOR, no ANSI styling at all
    (rich alone would drop colours but keep bold, italic and underline)."""
    return {"color_system": None} if no_color() else {}


def make_console(**kwargs: Any) -> Console:
    """A rich console honouring :func:`console_options` (progress bars, tables)."""
    from rich.console import Console

    return Console(**{**kwargs, **console_options()})


def out_console() -> Console:
    """A rich console for a report on standard output."""
    if not sys.stdout.isatty() and not os.environ.get("COLUMNS"):
        console = make_console(width=PIPE_WIDTH)
    else:
        console = make_console()
    console.on_broken_pipe = _broken_pipe  # rich would exit 1 itself
    return console


def _broken_pipe() -> None:
    # No errno: click would turn an EPIPE into exit 1; kvmcache.cli.main exits 0 quietly.
    raise BrokenPipeError("standard output's reader went away")


def _json(report: Report, to_file: bool) -> str:
    from kvmcache.report.documents import dumps

    return dumps(report.doc) + "\n"


def _csv(report: Report, to_file: bool) -> str:
    if report.kind == "sweep":
        from kvmcache.report import sweepfmt

        return sweepfmt.render_csv(report.sweep, report.sort_by)  # type: ignore[arg-type]
    from kvmcache.report import csvfmt

    return csvfmt.render(report.results)


def _table(report: Report, to_file: bool) -> str | None:
    if report.kind == "sweep":
        from kvmcache.report import sweepfmt

        if to_file or not sys.stdout.isatty():  # a file or a pipe: plain text, wide enough
            return sweepfmt.table_text(report.sweep, report.sort_by)  # type: ignore[arg-type]
        sweepfmt.render_table(report.sweep, out_console(), report.sort_by)  # type: ignore[arg-type]
        return None
    if report.kind == "compare":
        from kvmcache.report.compare import render_compare

        render_compare(
            report.results,
            report.reference or "",
            out_console(),
            all_counters=report.all_counters,
        )
        return None
    from kvmcache.report.table import render_replay

    render_replay(report.results[0], out_console())
    return None


#: Every report format, by name (the --format choices, in this order).
FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat("table", ".txt", False, _table),
        OutputFormat("json", ".json", False, _json),
        OutputFormat("csv", ".csv", False, _csv),
    )
}


def format_for(path: str | None, default: str = "table") -> str:
    """The format whose extension ``path`` has, else ``default``."""
    if path:
        ext = os.path.splitext(path)[1].lower()
        for f in FORMATS.values():
            if f.extension == ext:
                return f.name
    return default


def resolve_format(fmt: str | None) -> str:
    """table on a terminal, json in a pipeline, unless asked."""
    if fmt:
        return fmt
    return "table" if sys.stdout.isatty() else "json"
