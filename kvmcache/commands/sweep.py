"""`kvmcache sweep`: parameter grids x strategies x traces, ranked, with the Pareto front."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from kvmcache.commands import _common as common
from kvmcache.errors import KvmcacheError
from kvmcache.report.formats import Report, format_for


@contextmanager
def points_progress(enabled: bool) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """(on_start(total), on_done(n)) driving a points-done bar with an ETA on stderr (TTY only)."""
    from kvmcache import verbosity

    if not enabled or verbosity.is_quiet() or not sys.stderr.isatty():
        yield (lambda total: None), (lambda n: None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from kvmcache.report.formats import make_console

    bar = Progress(
        TextColumn("[cyan]sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("points"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=make_console(stderr=True),
        transient=True,
        refresh_per_second=10,
    )
    task = bar.add_task("sweep", total=None)

    def start(total: int) -> None:
        bar.update(task, total=total)
        bar.start()

    def done(n: int) -> None:
        bar.advance(task, n)

    try:
        yield start, done
    finally:
        bar.stop()


@click.command("sweep")
@click.argument(
    "traces", nargs=-1, required=True, metavar="TRACE...", type=click.Path(dir_okay=False)
)
@click.option(
    "--alloc",
    "allocs",
    multiple=True,
    type=common.alloc_choice(),
    help="Allocation strategy; repeatable (default: every strategy meaningful for the trace).",
)
@click.option(
    "--grid",
    "grids",
    multiple=True,
    metavar="NAME=V1,V2,...",
    help="A parameter axis: values, or START:STOP[:STEP] ranges that include STOP when "
    "the step lands on it (capacity=8:64:8); repeatable, one axis per parameter.",
)
@common.set_option
@common.config_option
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=None,
    help="Units replayed at once on this machine, on threads (default: CPU count).",
)
@click.option(
    "--scheduler",
    envvar="DASK_SCHEDULER_ADDRESS",
    metavar="ADDRESS",
    default=None,
    help="Run on an existing Dask cluster (tcp://HOST:PORT; env DASK_SCHEDULER_ADDRESS). "
    "Workers read traces by path: use a filesystem they share. Needs kvmcache[dask].",
)
@click.option(
    "--scheduler-timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Seconds to wait for the Dask scheduler to resolve, connect and answer (default 5).",
)
@click.option(
    "--sort",
    "sort_by",
    default="cache_pages_idle_peak",
    show_default=True,
    metavar="COUNTER",
    help="Rank points by this counter (ascending; -COUNTER for descending): any counter, "
    "including the Time counters, or fault_latency_p99_ns / fault_latency_mean_ns (docs/figures.md).",
)
@click.option(
    "--pareto",
    "pareto",
    multiple=True,
    metavar="OBJECTIVE",
    help="A Pareto objective (minimised); repeatable; replaces the default set "
    "(cache_pages_idle_peak, alloc_under_lock + fault_retries, pages_allocated, "
    "fault_latency_ns). Any counter or fault_latency_p99_ns, fault_latency_mean_ns.",
)
@common.format_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write the report to this file (atomically) instead of standard output; "
    "the format defaults from its extension (.json, .csv, else table).",
)
@common.strict_option
@common.progress_option
@click.pass_context
def command(
    ctx: click.Context,
    traces: tuple[str, ...],
    allocs: tuple[str, ...],
    grids: tuple[str, ...],
    sets: tuple[str, ...],
    config_path: str | None,
    jobs: int | None,
    scheduler: str | None,
    scheduler_timeout: float | None,
    sort_by: str,
    pareto: tuple[str, ...],
    fmt: str | None,
    output: str | None,
    strict: bool,
    no_progress: bool,
) -> None:
    """Replay parameter grids x strategies x traces, in parallel.

    Replay every TRACE under every --alloc at every point of the --grid.

    Parameters merge as defaults < trace params < --config < --set < grid point. A point
    with invalid parameters is reported (invalid, with the reason), not fatal; the sweep
    fails (exit 2) only when every point is invalid. The Pareto front of each trace is
    marked among its valid points: by default it minimises idle cache pages at peak,
    allocations under lock + retries, pages allocated and fault_latency_ns (the time
    objective); --pareto chooses the objectives, e.g. --pareto cache_pages_idle_peak
    --pareto fault_latency_p99_ns.
    """
    from kvmcache.sim import sweep as sweep_mod

    common.check_outputs({"-o": output}, [*traces, config_path])
    src = click.core.ParameterSource
    if scheduler is not None and jobs is not None:
        if ctx.get_parameter_source("scheduler") == src.ENVIRONMENT:
            scheduler = None  # an explicit --jobs beats DASK_SCHEDULER_ADDRESS
        else:
            raise KvmcacheError("--jobs and --scheduler exclude each other; choose one")
    if scheduler is not None:
        scheduler = scheduler.strip() or None
    timeout = _scheduler_timeout(scheduler_timeout)
    if scheduler:
        sweep_mod.import_dask()  # fail early, before any trace is read
    sweep_mod.sort_key(sort_by)
    objectives = sweep_mod.parse_objectives(pareto)
    grid = sweep_mod.parse_grid(grids)
    config, overrides = common.load_inputs(config_path, sets)
    if fmt is None and output:
        fmt = format_for(output)
    fmt = common.resolve_format(fmt)

    common.first_run_note()
    with points_progress(not no_progress) as (on_start, on_done):
        result = sweep_mod.run_sweep(
            list(traces),
            list(allocs) or None,
            grid,
            config=config.params,
            overrides=overrides,
            strict=strict,
            jobs=jobs or os.cpu_count() or 1,
            scheduler=scheduler,
            scheduler_timeout=timeout,
            on_start=on_start,
            on_done=on_done,
            objectives=objectives,
        )
    if not result.valid:
        first = result.invalid[0]
        raise KvmcacheError(
            f"every point of the sweep is invalid ({len(result.points)} points); "
            f"first: {first.trace} {first.alloc}: {first.error}"
        )

    from kvmcache.report.documents import sweep_document

    doc = sweep_document(result, sort_by) if fmt == "json" else {}
    report = Report("sweep", doc, sweep=result, sort_by=sort_by)
    common.emit(report, fmt, output)


def _scheduler_timeout(value: float | None) -> float:
    """``--scheduler-timeout``: a positive number of seconds (default: docs/limits.md)."""
    from kvmcache.limits import SCHEDULER_TIMEOUT

    if value is None:
        return SCHEDULER_TIMEOUT
    if not 0 < value <= 86400:  # NaN fails too
        raise KvmcacheError(
            f"--scheduler-timeout: {value:g} is not a number of seconds in (0, 86400]"
        )
    return value
