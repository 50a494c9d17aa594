"""`kvmcache plot`: chart a timeline, sweep or compare result (PNG, SVG, HTML or text)."""

from __future__ import annotations

import os

import click

from kvmcache.commands import _common as common
from kvmcache.errors import KvmcacheError

_FORMATS = ("png", "svg", "html", "table")


@click.command("plot")
@click.argument(
    "inputs", nargs=-1, required=True, metavar="INPUT...", type=click.Path(allow_dash=True)
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Chart file: .png, .svg, or .html (a self-contained report: the tables and the "
    "charts); written atomically.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(_FORMATS),
    default=None,
    help="Output format (default: from the -o extension). table prints a text summary with "
    "sparklines and needs no matplotlib.",
)
@click.option("--title", default=None, help="Chart title (default: from the inputs).")
@click.option(
    "--x",
    "x",
    metavar="COUNTER",
    default=None,
    help="Horizontal axis of a sweep or compare chart: any counter (Time counters too) or "
    "fault_latency_p99_ns, fault_latency_mean_ns, 'alloc_under_lock + fault_retries' "
    "(default: the first that varies of cache_pages_idle_peak, pages_allocated, ...).",
)
@click.option(
    "--y",
    "y",
    metavar="COUNTER",
    default=None,
    help="Vertical axis, as --x (default: the first that varies of fault_latency_p99_ns, "
    "fault_latency_ns, time_locked_max_ns, ...).",
)
def command(
    inputs: tuple[str, ...],
    output: str | None,
    fmt: str | None,
    title: str | None,
    x: str | None,
    y: str | None,
) -> None:
    """Chart a timeline, sweep or compare result.

    Chart INPUT files, recognised by content: a timeline CSV (replay --timeline), a sweep
    result (JSON or CSV) or a compare/replay result (JSON, or CSV). Several inputs must be of
    one kind; several timelines draw one line per file and strategy.

    \b
    Timeline: one panel per figure over events, one line per strategy.
    Sweep:    --x against --y (default idle cache pages at peak vs fault latency
              p99, a bucket bound), one panel per strategy, every point labelled
              with its grid values, the Pareto front marked.
    Compare:  grouped bars of key figures per strategy (or --x against --y), and
              the fault-latency distribution per strategy on log-scale buckets.
    HTML:     a report with the tables and every chart, viewable offline.
    Needs matplotlib (pip install 'kvmcache[plot]') except with --format table.
    """
    from kvmcache.report import plots

    if fmt is None:
        if not output:
            raise KvmcacheError(
                "plot: give -o OUT.png, OUT.svg or OUT.html (or --format table for a text summary)"
            )
        ext = os.path.splitext(output)[1].lower().lstrip(".")
        if ext not in plots.IMAGE_FORMATS:
            raise KvmcacheError(
                f"{output}: unknown chart type {('.' + ext) if ext else '(no extension)'}; "
                "use .png, .svg or .html, or --format"
            )
        fmt = ext
    if output == "-":
        raise KvmcacheError("plot: -o needs a file path, not standard output")
    common.check_outputs({"-o": output}, list(inputs))
    if fmt != "table" and not output:
        raise KvmcacheError(f"plot: --format {fmt} needs -o FILE")
    if fmt != "table":
        plots.require_matplotlib()  # fail before reading large inputs
    data = plots.load(list(inputs))
    plots.choose_axes(data, x, y)
    if fmt == "table":
        text = plots.text_summary(data)
        if output:
            from kvmcache.atomic import write_atomic

            write_atomic(output, text)
        else:
            click.echo(text, nl=False)
        return
    payload = plots.render(data, fmt, title)
    from kvmcache.atomic import write_atomic

    assert output is not None
    write_atomic(output, payload)
