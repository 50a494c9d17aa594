"""`kvmcache replay`: one trace, one allocation strategy, every counter."""

from __future__ import annotations

import click

from kvmcache.commands import _common as common
from kvmcache.commands import _gates as gating
from kvmcache.report.formats import Report
from kvmcache.sim.counters import DEFAULT_STRATEGY


@click.command("replay")
@click.argument("trace", type=click.Path(allow_dash=True))
@click.option(
    "--alloc",
    type=common.alloc_choice(),
    default=DEFAULT_STRATEGY,
    show_default=True,
    help="Allocation strategy (the README's table says what each one models).",
)
@common.set_option
@common.config_option
@common.format_option
@common.strict_option
@common.progress_option
@click.option(
    "--timeline",
    "timeline_path",
    type=click.Path(dir_okay=False),
    help="Write running figures every N events to this CSV file.",
)
@click.option(
    "--every",
    type=click.IntRange(min=1),
    default=None,
    help="Timeline spacing in events (default: about 1000 rows over the trace).",
)
@gating.gate_options
def command(
    trace: str,
    alloc: str,
    sets: tuple[str, ...],
    config_path: str | None,
    fmt: str | None,
    strict: bool,
    no_progress: bool,
    timeline_path: str | None,
    every: int | None,
    save_path: str | None,
    baseline_path: str | None,
    limits: tuple[str, ...],
    require: tuple[str, ...],
    junit_path: str | None,
) -> None:
    """Replay a trace through the model under one allocation strategy.

    Replay TRACE (YAML or binary; - reads standard input) under one strategy.

    Exit 3 when a --limit or --require fails (the report is still printed).
    Every figure of the report is defined in docs/figures.md.
    """
    from kvmcache.jit import use_python
    from kvmcache.sim.replay import resolve_params
    from kvmcache.trace import open_trace

    common.check_outputs(
        {"--timeline": timeline_path, "--save-baseline": save_path, "--junit": junit_path},
        [trace, config_path, baseline_path],
    )
    config, overrides = common.load_inputs(config_path, sets)
    gate = gating.build_gate(config, limits, require, baseline_path, save_path, junit_path)
    fmt = common.resolve_format(fmt)
    source = open_trace(trace, strict=strict)
    use_python(source.header.count or 0)  # a tiny trace: no numba start-up
    params = resolve_params(source.header, config.params, overrides)
    gate.check_before(source.header, [alloc], params)
    sample_every = 0
    if timeline_path:
        from kvmcache.report.timeline import default_every

        sample_every = every or default_every(source.header.count)
    (result,) = common.replay_with_progress(
        trace,
        source,
        [alloc],
        no_progress=no_progress,
        params=params,
        timeline_every=sample_every,
        digest=gating.wants_digest(gate, fmt),
    )
    if timeline_path:
        from kvmcache.report.timeline import write_timeline

        write_timeline(timeline_path, [result])
    from kvmcache.report.documents import replay_document

    if result.counters.get("faults", 0) == 0:
        _warn_no_faults(trace)
    doc = replay_document(result)
    checks = gating.check(gate, doc, [doc])
    common.emit(Report("replay", doc, [result]), fmt)
    gating.finish(gate, doc, checks, f"kvmcache replay {trace}")


def _warn_no_faults(trace: str) -> None:
    """A trace without faults says nothing about the caches: say so (an empty import)."""
    from kvmcache.trace.binary import stderr_warn

    name = "standard input" if trace == "-" else trace
    stderr_warn(f"{name} has no faults: every figure below is that of an idle VM")
