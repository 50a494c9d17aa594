"""`kvmcache info TRACE`: header fields and event statistics, streamed chunk by chunk."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from kvmcache import __version__
from kvmcache.errors import KvmcacheError
from kvmcache.report.documents import INFO_SCHEMA
from kvmcache.trace import import_sidecar_path, open_trace
from kvmcache.trace.stats import gather


def _load_import(path: str) -> dict[str, Any] | None:
    if path == "-":
        return None
    side = import_sidecar_path(path)
    if not os.path.exists(side):
        return None
    from kvmcache.yamlio import load_yaml_file

    # Capped in size and alias expansion; one line naming the sidecar for any problem.
    data = load_yaml_file(side, "an import sidecar", kind="import sidecar")
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
    doc = {"schema": INFO_SCHEMA, "version": __version__, **gather(source)}
    doc["import"] = _load_import(trace)
    from kvmcache.report.formats import resolve_format

    if resolve_format(fmt) == "json":
        click.echo(json.dumps(doc, indent=1, default=str))
    else:
        from kvmcache.report.info import render_table

        render_table(doc)
