"""Converting a trace between YAML and binary, validating every event (`kvmcache convert`)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from kvmcache.atomic import same_file
from kvmcache.errors import KvmcacheError
from kvmcache.params import parse_mapping
from kvmcache.trace import open_trace, sidecar_path
from kvmcache.trace.output import TraceOutput
from kvmcache.trace.validate import Validator


def convert(src: str, dst: str, *, force: bool = False, strict: bool = False) -> str:
    """Convert trace ``src`` to ``dst`` (format by OUT's extension); returns a summary line."""
    if (
        src != "-"
        and dst != "-"
        and (os.path.abspath(src) == os.path.abspath(dst) or same_file(src, dst))
    ):
        raise KvmcacheError(f"{dst}: IN and OUT are the same file; convert to a new file")
    out = TraceOutput(dst, command="convert", force=force, inputs=[src], origin=src)
    source = open_trace(src, strict=strict)
    header = source.header
    params = dict(header.params)
    if params:
        origin = sidecar_path(src) if header.format == "binary" else src
        parse_mapping(params, origin)
    if header.count is not None:
        out.check_yaml_count(header.count)
    validator = Validator(header)
    done = [0]

    def checked() -> Iterator[np.ndarray]:
        for chunk in source.chunks():
            validator.check(chunk, done[0])
            done[0] += len(chunk)
            yield chunk

    n = out.write(header, checked(), params=params)
    written = out.finish()
    line = f"converted {n} events: {src} ({header.format}) -> {dst} ({out.format})"
    if written:
        line += f", parameters in {written[0]}"
    return line
