"""`kvmcache convert IN OUT`: YAML <-> binary in either direction, validating every event."""

from __future__ import annotations

import click

from kvmcache import verbosity
from kvmcache.trace.convert import convert


@click.command("convert")
@click.argument("src", metavar="IN")
@click.argument("dst", metavar="OUT")
@click.option("--force", is_flag=True, help="Overwrite OUT if it already exists.")
@click.option(
    "--strict", is_flag=True, help="Treat a truncated binary trace as an error, not a warning."
)
def command(src: str, dst: str, force: bool, strict: bool) -> None:
    """Convert a trace between YAML and binary.

    Convert trace IN to OUT, YAML <-> binary.

    The input format is detected from its magic or extension (`-` reads standard input);
    OUT is YAML when it ends in .yaml or .yml, binary otherwise. A YAML `params` block
    goes to the sidecar OUT.params.yaml next to a binary OUT, and back again.
    """
    verbosity.note(convert(src, dst, force=force, strict=strict))
