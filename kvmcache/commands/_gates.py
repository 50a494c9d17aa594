"""The CI-gate options shared by ``replay`` and ``compare`` and the end-of-command check."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import click

from kvmcache.config import Config
from kvmcache.errors import EXIT_GATE
from kvmcache.gates import REQUIREMENTS, Gate

F = TypeVar("F", bound=Callable[..., Any])


def gate_options(f: F) -> F:
    """--save-baseline, --baseline, --limit (repeatable), --require (repeatable)."""
    f = click.option(
        "--require",
        "require",
        multiple=True,
        type=click.Choice(tuple(REQUIREMENTS)),
        help="Fail (exit 3) unless every run has this verdict; repeatable.",
    )(f)
    f = click.option(
        "--limit",
        "limits",
        multiple=True,
        metavar="COUNTER=VALUE|COUNTER=+N%",
        help="Fail (exit 3) if a counter exceeds VALUE, or grows by more than N percent "
        "over --baseline; applies to every run; repeatable.",
    )(f)
    f = click.option(
        "--baseline",
        "baseline_path",
        type=click.Path(dir_okay=False),
        help="A saved replay or compare JSON report to match and to gate relative limits on.",
    )(f)
    f = click.option(
        "--save-baseline",
        "save_path",
        type=click.Path(dir_okay=False),
        help="After the run, write the JSON report to this file (atomically).",
    )(f)
    return f


def build_gate(
    config: Config,
    limits: Sequence[str],
    require: Sequence[str],
    baseline_path: str | None,
    save_path: str | None,
) -> Gate:
    """Command-line gates plus the config file's limits:/require: blocks."""
    return Gate.build(
        limits=limits,
        require=require,
        baseline_path=baseline_path,
        save_path=save_path,
        config_limits=config.limits,
        config_require=config.require,
        config_path=config.path,
    )


def finish(gate: Gate, doc: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> None:
    """After the report is printed: save the baseline, then print failures and exit 3."""
    gate.save(doc)
    failed = gate.failures(runs)
    if failed:
        sys.stdout.flush()
        for line in failed:
            print(line, file=sys.stderr)
        sys.stderr.flush()
        sys.exit(EXIT_GATE)
