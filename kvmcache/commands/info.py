"""`kvmcache info TRACE`: header fields and event statistics, streamed chunk by chunk."""

from __future__ import annotations

import json
import os
from typing import Any

import click
import yaml

from kvmcache import __version__
from kvmcache.errors import KvmcacheError
from kvmcache.trace import import_sidecar_path, open_trace
from kvmcache.trace.stats import gather

SCHEMA = "kvmcache.info/1"


def _load_import(path: str) -> dict[str, Any] | None:
    if path == "-":
        return None
    side = import_sidecar_path(path)
    if not os.path.exists(side):
        return None
    try:
        with open(side, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        problem = " ".join(str(e).split())
        raise KvmcacheError(f"{side}: cannot read import sidecar: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KvmcacheError(f"{side}: import sidecar must be a YAML mapping")
    vmap = data.get("vcpu_map")
    if vmap is not None and not isinstance(vmap, dict):
        raise KvmcacheError(f"{side}: vcpu_map must be a mapping of thread label to vCPU index")
    return data


@click.command("info")
@click.argument("trace")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default=None,
    help="Output format (default: table on a terminal, json otherwise).",
)
@click.option(
    "--strict", is_flag=True, help="Treat a truncated binary trace as an error, not a warning."
)
def command(trace: str, fmt: str | None, strict: bool) -> None:
    """Print a trace's header and event statistics.

    Print TRACE's header and event statistics (`-` reads standard input).

    Every event is validated as replay would; the counts are streamed chunk by chunk.
    """
    source = open_trace(trace, strict=strict)
    doc = {"schema": SCHEMA, "version": __version__, **gather(source)}
    doc["import"] = _load_import(trace)
    from kvmcache.report.formats import resolve_format

    if resolve_format(fmt) == "json":
        click.echo(json.dumps(doc, indent=1, default=str))
    else:
        from kvmcache.report.info import render_table

        render_table(doc)
