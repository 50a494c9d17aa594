"""`kvmcache synth SCENARIO -o OUT`: write a synthetic guest-fault trace (binary or small YAML)."""

from __future__ import annotations

import os
import time

import click

from kvmcache import verbosity
from kvmcache.errors import KvmcacheError
from kvmcache.synth import scenarios as sc

# The generator (and numba with it) is imported only when the command runs, so that
# `kvmcache synth --help` stays fast; the scenarios and defaults are plain data.
_PF = sc.DEFAULT_PRIVATE_FRACTION


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
@click.option("--vcpus", type=int, default=None, help=f"vCPUs  [default: {sc.DEFAULT_VCPUS}]")
@click.option(
    "--guest-memory",
    metavar="SIZE",
    default=None,
    help=f"Guest memory  [default: {sc.DEFAULT_GUEST_MEMORY}]",
)
@click.option(
    "--host-memory",
    metavar="SIZE",
    default=None,
    help=f"Host memory  [default: {sc.DEFAULT_HOST_MEMORY}]",
)
@click.option(
    "--events",
    type=int,
    default=None,
    help=f"Events in the trace, vm_create and vm_destroy included  [default: {sc.DEFAULT_EVENTS}]",
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
    type=click.Choice(sc.BACKINGS),
    default=None,
    help="Host pages behind guest pages  [default: per scenario, see --list]",
)
@click.option(
    "--private-fraction",
    type=float,
    default=None,
    metavar="F",
    help=f"Fraction of private faults  [default: {_PF['tdx']:g} on tdx, {_PF['vmx']:g} on vmx]",
)
@click.option(
    "--rate",
    type=float,
    default=None,
    metavar="EVENTS_PER_SEC_PER_VCPU",
    help=f"Event rate of each vCPU  [default: {sc.DEFAULT_RATE:g}]",
)
@click.option(
    "--jitter",
    type=float,
    default=None,
    metavar="F",
    help=f"Relative jitter of the gaps between a vCPU's events, in [0, 1)  [default: {sc.DEFAULT_JITTER:g}]",
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
    if list_scenarios:
        width = max(len(name) for name in sc.SCENARIOS)
        for name, text in sc.SCENARIOS.items():
            click.echo(f"{name:<{width}}  {text} [backing: {sc.DEFAULT_BACKING[name]}]")
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
    from kvmcache.synth import generator as synth
    from kvmcache.trace.output import TraceOutput

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
