"""`kvmcache compare`: one trace under several strategies, side by side, with CI gates."""

from __future__ import annotations

import os

import click

from kvmcache.commands import _common as common
from kvmcache.commands import _gates as gating
from kvmcache.report.formats import Report
from kvmcache.sim.counters import DEFAULT_STRATEGY


def choose_strategies(asked: tuple[str, ...], everything: list[str]) -> tuple[list[str], str]:
    """(strategies in column order, reference).

    None asked: every strategy meaningful for the trace, reference dpamt-install (or the
    first). One asked: it against the default strategy, which is the reference. Several:
    the first is the reference. Duplicates are dropped.
    """
    if not asked:
        ref = DEFAULT_STRATEGY if DEFAULT_STRATEGY in everything else everything[0]
        return list(everything), ref
    uniq = list(dict.fromkeys(asked))
    if len(uniq) == 1 and uniq[0] != DEFAULT_STRATEGY:
        return [DEFAULT_STRATEGY, uniq[0]], DEFAULT_STRATEGY
    return uniq, uniq[0]


@click.command("compare")
@click.argument("trace", type=click.Path(allow_dash=True))
@click.option(
    "--alloc",
    "allocs",
    multiple=True,
    type=common.alloc_choice(),
    help="A strategy to compare; repeatable. One: it against dpamt-install (the reference). "
    "Several: the first is the reference. Default: every strategy meaningful for the trace.",
)
@common.set_option
@common.config_option
@common.format_option
@click.option(
    "--all-counters",
    is_flag=True,
    help="Show every counter in the table, not only key figures (docs/figures.md).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Threads replaying the strategies (0: one per strategy, up to the CPUs).",
)
@common.strict_option
@common.progress_option
@gating.gate_options
def command(
    trace: str,
    allocs: tuple[str, ...],
    sets: tuple[str, ...],
    config_path: str | None,
    fmt: str | None,
    all_counters: bool,
    threads: int,
    strict: bool,
    no_progress: bool,
    save_path: str | None,
    baseline_path: str | None,
    limits: tuple[str, ...],
    require: tuple[str, ...],
    junit_path: str | None,
) -> None:
    """Replay a trace under several strategies, side by side.

    Replay TRACE (YAML or binary; - reads standard input) under several strategies.

    The trace is read once: each chunk of events runs through one model state per
    strategy. Exit 3 when a --limit or --require fails (the report is still printed).
    Every figure of the table is defined in docs/figures.md.
    """
    from kvmcache.jit import use_python
    from kvmcache.sim.replay import all_strategies_for, resolve_params
    from kvmcache.trace import open_trace

    common.check_outputs(
        {"--save-baseline": save_path, "--junit": junit_path}, [trace, config_path, baseline_path]
    )
    config, overrides = common.load_inputs(config_path, sets)
    gate = gating.build_gate(config, limits, require, baseline_path, save_path, junit_path)
    fmt = common.resolve_format(fmt)
    source = open_trace(trace, strict=strict)
    strategies, reference = choose_strategies(allocs, all_strategies_for(source.header))
    use_python((source.header.count or 0) * len(strategies))  # a tiny trace: no numba start-up
    params = resolve_params(source.header, config.params, overrides)
    gate.check_before(source.header, strategies, params)
    if threads == 0:
        threads = min(len(strategies), os.cpu_count() or 1)
    results = common.replay_with_progress(
        trace,
        source,
        strategies,
        no_progress=no_progress,
        label="compare",
        params=params,
        threads=threads,
        digest=gating.wants_digest(gate, fmt),
    )

    from kvmcache.report.documents import compare_document

    doc = compare_document(results, reference)
    checks = gating.check(gate, doc, doc["runs"])
    report = Report("compare", doc, results, reference=reference, all_counters=all_counters)
    common.emit(report, fmt)
    gating.finish(gate, doc, checks, f"kvmcache compare {trace}")
