"""`kvmcache synth SCENARIO -o OUT`: write a synthetic guest-fault trace (binary or small YAML)."""

from __future__ import annotations

import os
import time

import click

from kvmcache import verbosity
from kvmcache.errors import KvmcacheError

# The library (and numba with it) is imported only when the command runs, so that
# `kvmcache synth --help` stays fast; the defaults shown here are those of
# kvmcache.synth.generator.generate().

_BACKINGS = ("hugepage", "4k-contiguous", "4k-random")


@click.command(
    "synth",
    short_help="Write a synthetic guest-fault trace.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.argument("scenario", required=False)
@click.option(
    "-o",
    "--output",
    "out",
    metavar="OUT",
    help="Trace to write: binary (.kvmt or any name) or YAML (.yaml/.yml, at most 100,000 events).",
)
@click.option("--list", "list_scenarios", is_flag=True, help="List the scenarios and exit.")
@click.option("--vcpus", type=int, default=None, help="vCPUs  [default: 4]")
@click.option("--guest-memory", metavar="SIZE", default=None, help="Guest memory  [default: 4GiB]")
@click.option("--host-memory", metavar="SIZE", default=None, help="Host memory  [default: 16GiB]")
@click.option(
    "--events",
    type=int,
    default=None,
    help="Events in the trace, vm_create and vm_destroy included  [default: 1000000]",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Random seed: the same arguments give the same trace.",
)
@click.option(
    "--root-level",
    type=click.Choice(["4", "5"]),
    default="4",
    show_default=True,
    help="Page-table root level in the trace header.",
)
@click.option(
    "--vm",
    type=click.Choice(["tdx", "vmx"]),
    default="tdx",
    show_default=True,
    help="VM type: tdx has private memory, vmx none.",
)
@click.option(
    "--backing",
    type=click.Choice(_BACKINGS),
    default=None,
    help="Host pages behind guest pages  [default: per scenario, see --list]",
)
@click.option(
    "--private-fraction",
    type=float,
    default=None,
    metavar="F",
    help="Fraction of private faults  [default: 0.9 on tdx, 0 on vmx]",
)
@click.option(
    "--rate",
    type=float,
    default=None,
    metavar="EVENTS_PER_SEC_PER_VCPU",
    help="Event rate of each vCPU  [default: 50000]",
)
@click.option(
    "--jitter",
    type=float,
    default=None,
    metavar="F",
    help="Relative jitter of the gaps between a vCPU's events, in [0, 1)  [default: 0.5]",
)
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def command(
    scenario: str | None,
    out: str | None,
    list_scenarios: bool,
    vcpus: int | None,
    guest_memory: str | None,
    host_memory: str | None,
    events: int | None,
    seed: int,
    root_level: str,
    vm: str,
    backing: str | None,
    private_fraction: float | None,
    rate: float | None,
    jitter: float | None,
    force: bool,
) -> None:
    """Write a synthetic guest-fault trace.

    Write a synthetic trace of SCENARIO to OUT; the same arguments give the same file.

    \b
    Examples:
      kvmcache synth --list
      kvmcache synth steady -o steady.kvmt --events 10000000 --seed 1
      kvmcache synth scatter -o best.kvmt --backing hugepage
      kvmcache synth churn -o churn.yaml --events 300
    """
    from kvmcache.synth import generator as synth
    from kvmcache.trace.output import TraceOutput

    if list_scenarios:
        width = max(len(name) for name in synth.SCENARIOS)
        for name, text in synth.SCENARIOS.items():
            click.echo(f"{name:<{width}}  {text} [backing: {synth.DEFAULT_BACKING[name]}]")
        return
    if scenario is None:
        raise KvmcacheError("synth: missing SCENARIO (see kvmcache synth --list)")
    if out is None:
        raise KvmcacheError("synth: missing -o OUT, the trace file to write")
    kwargs: dict[str, object] = {
        "seed": seed,
        "root_level": int(root_level),
        "vm": vm,
        "backing": backing,
        "private_fraction": private_fraction,
    }
    for name, value in (
        ("vcpus", vcpus),
        ("guest_memory", guest_memory),
        ("host_memory", host_memory),
        ("events", events),
        ("rate", rate),
        ("jitter", jitter),
    ):
        if value is not None:
            kwargs[name] = value
    header, blocks = synth.generate(scenario, **kwargs)  # type: ignore[arg-type]
    target = TraceOutput(out, command="synth", force=force, events=header.count)

    start = time.perf_counter()
    n = synth.write(out, header, blocks, target)
    target.finish()
    elapsed = time.perf_counter() - start
    size = os.path.getsize(out)
    size_text = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"
    speed = f", {n / elapsed / 1e6:.1f} M events/s" if elapsed > 0.1 else ""
    verbosity.note(
        f"wrote {n:,} events ({scenario}, {vm}) to {out}: {size_text} in {elapsed:.2f} s{speed}"
    )
