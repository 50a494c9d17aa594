"""`kvmcache convert IN OUT`: YAML <-> binary in either direction, validating every event."""

from __future__ import annotations

import os

import click
import numpy as np
import yaml

from kvmcache.atomic import atomic_open, output_target, same_file
from kvmcache.errors import KvmcacheError
from kvmcache.params import parse_mapping
from kvmcache.trace import YAML_EXTS, open_trace, sidecar_path
from kvmcache.trace.binary import BinaryWriter, stderr_warn
from kvmcache.trace.events import empty
from kvmcache.trace.validate import Validator
from kvmcache.trace.yamlfmt import write_yaml

#: YAML traces are for small, reviewed scenarios; beyond this, a binary trace is the right tool.
YAML_EVENT_LIMIT = 1_000_000


def output_format(path: str) -> str:
    """'yaml' for a .yaml/.yml OUT, 'binary' for anything else."""
    return "yaml" if path.lower().endswith(YAML_EXTS) else "binary"


def _check_paths(src: str, dst: str, force: bool) -> None:
    if dst == "-":
        raise KvmcacheError("convert: OUT must be a file path, not standard output")
    if src != "-" and (os.path.abspath(src) == os.path.abspath(dst) or same_file(src, dst)):
        raise KvmcacheError(f"{dst}: IN and OUT are the same file; convert to a new file")
    if os.path.isdir(dst):
        raise KvmcacheError(f"{dst}: is a directory; OUT must be a file path")
    if os.path.lexists(dst) and not force:
        raise KvmcacheError(f"{dst}: already exists; use --force to overwrite it")
    side = sidecar_path(dst)
    if output_format(dst) == "binary" and os.path.lexists(side) and not force:
        raise KvmcacheError(f"{side}: already exists; use --force to overwrite or remove it")


def _write_sidecar(dst: str, params: dict) -> str | None:
    """Write ``OUT.params.yaml`` atomically, or remove a stale one; returns its path if written."""
    side = sidecar_path(dst)
    if output_target(dst)[1]:  # a device or a FIFO: no file beside it
        if params:
            stderr_warn(f"{dst} is not a regular file: its model parameters are not written")
        return None
    if not params:
        if os.path.lexists(side):
            os.unlink(side)
        return None
    with atomic_open(side, "w") as f:
        f.write(f"# model parameters for {os.path.basename(dst)} (kvmcache convert)\n")
        yaml.safe_dump(dict(params), f, sort_keys=False, default_flow_style=False)
    return side


def convert(src: str, dst: str, *, force: bool = False, strict: bool = False) -> str:
    """Convert trace ``src`` to ``dst`` (format by OUT's extension); returns a summary line."""
    _check_paths(src, dst, force)
    source = open_trace(src, strict=strict)
    header = source.header
    params = dict(header.params)
    if params:
        origin = sidecar_path(src) if header.format == "binary" else src
        parse_mapping(params, origin)
    out_fmt = output_format(dst)
    validator = Validator(header)
    n = 0
    if out_fmt == "binary":
        with BinaryWriter(dst, header) as writer:
            for chunk in source.chunks():
                validator.check(chunk, n)
                writer.write(chunk)
                n += len(chunk)
        try:
            side = _write_sidecar(dst, params)
        except OSError as e:
            side_path = sidecar_path(dst)
            raise KvmcacheError(f"{side_path}: cannot write: {e.strerror or e}") from None
    else:
        too_many = (
            f"{src}: more than {YAML_EVENT_LIMIT:,} events is too many for a YAML trace; "
            "convert to a binary .kvmt file instead"
        )
        if header.count is not None and header.count > YAML_EVENT_LIMIT:
            raise KvmcacheError(too_many)
        parts: list[np.ndarray] = []
        for chunk in source.chunks():
            validator.check(chunk, n)
            n += len(chunk)
            if n > YAML_EVENT_LIMIT:
                raise KvmcacheError(too_many)
            parts.append(np.array(chunk))  # a copy: the chunk may be a view of a memmap
        events = np.concatenate(parts) if parts else empty(0)
        write_yaml(dst, header, events, params)
        side = None
    line = f"converted {n} events: {src} ({header.format}) -> {dst} ({out_fmt})"
    if side:
        line += f", parameters in {side}"
    return line


@click.command("convert")
@click.argument("src", metavar="IN")
@click.argument("dst", metavar="OUT")
@click.option("--force", is_flag=True, help="Overwrite OUT if it already exists.")
@click.option(
    "--strict", is_flag=True, help="Treat a truncated binary trace as an error, not a warning."
)
def command(src: str, dst: str, force: bool, strict: bool) -> None:
    """Convert trace IN to OUT, YAML <-> binary.

    The input format is detected from its magic or extension (`-` reads standard input);
    OUT is YAML when it ends in .yaml or .yml, binary otherwise. A YAML `params` block
    goes to the sidecar OUT.params.yaml next to a binary OUT, and back again.
    """
    click.echo(f"kvmcache: {convert(src, dst, force=force, strict=strict)}", err=True)
