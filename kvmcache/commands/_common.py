"""Options and helpers shared by the replay-family commands (replay, compare, sweep)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import click

from kvmcache.config import Config, load_config
from kvmcache.params import parse_assignments
from kvmcache.report import formats
from kvmcache.report.formats import Report
from kvmcache.sim.counters import STRATEGIES

F = TypeVar("F", bound=Callable[..., object])

FORMATS = tuple(formats.FORMATS)
resolve_format = formats.resolve_format
out_console = formats.out_console


def set_option(f: F) -> F:
    return click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="NAME=VALUE",
        help="Set a model parameter (each is defined in docs/figures.md); repeatable.",
    )(f)


def config_option(f: F) -> F:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        help="YAML file of parameters (and limits:/require: for CI gates).",
    )(f)


def format_option(f: F) -> F:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default=None,
        help="Output format (default: table on a terminal, json otherwise).",
    )(f)


def strict_option(f: F) -> F:
    return click.option(
        "--strict", is_flag=True, help="Treat a trailing partial record as an error."
    )(f)


def progress_option(f: F) -> F:
    return click.option("--no-progress", is_flag=True, help="Never show a progress bar.")(f)


def alloc_choice() -> click.Choice:
    return click.Choice(STRATEGIES)


def load_inputs(config_path: str | None, sets: tuple[str, ...]) -> tuple[Config, dict]:
    """The config file and the --set overrides (validated later, after merging)."""
    return load_config(config_path), parse_assignments(sets)


FIRST_RUN_NOTE = "kvmcache: compiling (first run only, ~20 s; `kvmcache warmup` does it ahead)"


def first_run_note() -> None:
    """On a terminal, say so when the replay kernel is about to be compiled: a progress bar
    would otherwise sit at 0 for 15-25 s."""
    import os

    from kvmcache.jit import compile_pending

    kernel = os.path.join(os.path.dirname(os.path.dirname(__file__)), "sim", "kernel.py")
    if sys.stderr.isatty() and compile_pending(kernel, "run_chunk"):
        print(FIRST_RUN_NOTE, file=sys.stderr, flush=True)


def replay_with_progress(
    trace: str, source, allocs: list[str], *, no_progress: bool, label: str = "replay", **kwargs
) -> list:
    """``replay_many`` of ``source`` under ``allocs`` behind a progress bar, then the ``-v``
    line (events, content digest, time); ``kwargs`` go to ``replay_many``."""
    from kvmcache import verbosity
    from kvmcache.sim.replay import replay_many

    with progress_bar(source.header.count, not no_progress, label=label) as progress:
        started = time.perf_counter()
        results = replay_many(source, allocs, progress=progress, **kwargs)
    verbosity.detail(
        f"{trace}: {results[0].counters['events']:,} events, content {results[0].trace_digest}; "
        f"replayed in {time.perf_counter() - started:.2f} s"
    )
    return results


@contextmanager
def progress_bar(
    total: int | None, enabled: bool, label: str = "replay"
) -> Iterator[Callable[[int], None]]:
    """A callback(events_done) driving a rich progress bar on stderr.

    The bar appears only when stderr is a terminal and the work has run for over a
    second; the callback is called per chunk, so it costs nothing per event.
    """
    first_run_note()
    from kvmcache import verbosity

    if not enabled or verbosity.is_quiet() or not sys.stderr.isatty():
        yield lambda done: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from kvmcache.report.formats import make_console

    start = time.monotonic()
    state: dict[str, object] = {"bar": None, "task": None}
    console = make_console(stderr=True)

    def update(done: int) -> None:
        if state["bar"] is None:
            if time.monotonic() - start < 1.0:
                return
            bar = Progress(
                TextColumn(f"[cyan]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("events"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
                refresh_per_second=10,
            )
            bar.start()
            state["bar"] = bar
            state["task"] = bar.add_task(label, total=total)
        bar = state["bar"]
        bar.update(state["task"], completed=done)  # type: ignore[union-attr]

    try:
        yield update
    finally:
        if state["bar"] is not None:
            state["bar"].stop()  # type: ignore[union-attr]


def echo_out(text: str) -> None:
    """Write a report to standard output (reports only; diagnostics go to stderr)."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def emit(report: Report, fmt: str, output: str | None = None) -> None:
    """Render ``report`` in format ``fmt`` to ``output`` (atomically) or standard output."""
    text = formats.FORMATS[fmt].render(report, output is not None)
    if text is None:  # printed to the terminal by rich
        return
    if output:
        from kvmcache.atomic import write_atomic

        write_atomic(output, text)
    else:
        echo_out(text)


def check_outputs(outputs: dict[str, str | None], inputs: list[str | None]) -> None:
    """Usage errors for output files (option name -> path) that are ``-`` or one of the
    ``inputs`` (a trace also stands for its params sidecar), before any work is done."""
    from kvmcache.atomic import refuse_overwriting_inputs
    from kvmcache.errors import KvmcacheError
    from kvmcache.trace import sidecar_path

    names = [p for p in inputs if p and p != "-"]
    names += [sidecar_path(p) for p in list(names)]
    for option, path in outputs.items():
        if path == "-":
            raise KvmcacheError(f"{option} needs a file path, not standard output")
        refuse_overwriting_inputs(path, names, option)
