"""Writing a trace: the one rule `kvmcache convert`, `synth` and `import` follow for OUT.

- OUT's extension decides the format: YAML for ``.yaml``/``.yml``, binary otherwise.
- A YAML trace holds at most :data:`YAML_EVENT_LIMIT` events (YAML is for small, reviewed
  scenarios; a binary trace is the tool beyond).
- OUT is a file path (not ``-``, not a directory), and neither OUT nor the sidecars beside
  it (``OUT.params.yaml``, ``OUT.import.yaml``) may be an input of the command or an
  input's sidecar (exit 2).
- An existing OUT, or an existing sidecar of OUT, is replaced only with ``--force``; after
  the trace is written, each sidecar is written if the command has something for it and
  removed otherwise (a stale one would describe the old trace). A device or FIFO OUT is
  written in place and has no sidecars.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from kvmcache.atomic import atomic_open, output_target, same_file
from kvmcache.errors import KvmcacheError
from kvmcache.trace import YAML_EXTS, import_sidecar_path, sidecar_path
from kvmcache.trace.binary import BinaryWriter, stderr_warn
from kvmcache.trace.events import TraceHeader, empty

#: Most events a YAML trace may hold.
YAML_EVENT_LIMIT = 100_000

#: The sidecars of a trace: kind -> its path beside the trace.
SIDECARS: dict[str, Callable[[str], str]] = {
    "params": sidecar_path,
    "import": import_sidecar_path,
}


def output_format(path: str) -> str:
    """'yaml' for a .yaml/.yml path, 'binary' for anything else."""
    return "yaml" if path.lower().endswith(YAML_EXTS) else "binary"


def _refuse_inputs(target: str, inputs: Sequence[str | None], what: str) -> None:
    """A usage error when ``target`` is one of the ``inputs`` or a sidecar of one."""
    for src in inputs:
        if not src or src == "-":
            continue
        named = [(src, f"the input {src}")]
        named += [
            (side(src), f"the {kind} sidecar of the input {src}") for kind, side in SIDECARS.items()
        ]
        for path, label in named:
            if same_file(target, path):
                raise KvmcacheError(f"{target}: is {label}; writing {what} there would destroy it")


class TraceOutput:
    """OUT of a command that writes a trace, checked before any work is done.

    ``inputs`` are the command's input paths; ``origin`` names what the events come from
    in the YAML-limit error (the input of a conversion; OUT by default); ``events``, when
    known up front, is checked against the YAML limit at once.
    """

    def __init__(
        self,
        path: str,
        *,
        command: str,
        force: bool = False,
        inputs: Sequence[str | None] = (),
        origin: str | None = None,
        events: int | None = None,
    ) -> None:
        if path == "-":
            raise KvmcacheError(f"{command}: OUT must be a file path, not standard output")
        self.path = path
        self.origin = origin or path
        self.format = output_format(path)
        _refuse_inputs(path, inputs, "the trace")
        if os.path.isdir(path):
            raise KvmcacheError(f"{path}: is a directory; OUT must be a file path")
        self.in_place = output_target(path)[1]  # a device or a FIFO: no sidecars
        self.sidecars = {} if self.in_place else {k: f(path) for k, f in SIDECARS.items()}
        for side in self.sidecars.values():
            _refuse_inputs(side, inputs, "a sidecar")
        if os.path.lexists(path) and not force:
            raise KvmcacheError(f"{path}: already exists; use --force to overwrite it")
        for side in self.sidecars.values():
            if os.path.lexists(side) and not force:
                raise KvmcacheError(
                    f"{side}: already exists; use --force to overwrite or remove it"
                )
        if events is not None:
            self.check_yaml_count(events)

    def check_yaml_count(self, n: int) -> None:
        """A usage error when a YAML OUT would hold ``n`` events, more than the limit."""
        if self.format == "yaml" and n > YAML_EVENT_LIMIT:
            raise KvmcacheError(
                f"{self.origin}: more than {YAML_EVENT_LIMIT:,} events is too many for a YAML "
                "trace; write a binary .kvmt trace instead"
            )

    def write(
        self,
        header: TraceHeader,
        chunks: Iterable[np.ndarray],
        *,
        params: Mapping | None = None,
        feed: Callable[[BinaryWriter], None] | None = None,
    ) -> int:
        """Write the events (``chunks``, or ``feed`` filling a binary writer itself) with
        the model ``params`` (inline in YAML, the params sidecar beside a binary trace);
        returns the number of events. Call :meth:`finish` after it for the sidecars."""
        self.params = dict(params or {})
        if self.format == "binary":
            with BinaryWriter(self.path, header) as w:
                if feed is not None:
                    feed(w)
                else:
                    for chunk in chunks:
                        w.write(chunk)
                return w.count
        from kvmcache.trace.yamlfmt import write_yaml

        parts: list[np.ndarray] = []
        n = 0
        for chunk in chunks:
            n += len(chunk)
            self.check_yaml_count(n)
            parts.append(np.array(chunk))  # a copy: the chunk may be a view of a reused buffer
        events = np.concatenate(parts) if parts else empty(0)
        write_yaml(self.path, header, events, self.params)
        self.params = {}  # inline, not in a sidecar
        return n

    def finish(self, texts: Mapping[str, str] | None = None) -> list[str]:
        """Write each sidecar the command has text for (``texts``: kind -> YAML text, the
        params sidecar from :meth:`write`'s ``params``), remove the others; returns the
        paths written."""
        texts = dict(texts or {})
        if self.params and "params" not in texts:
            import yaml

            texts["params"] = (
                f"# model parameters for {os.path.basename(self.path)} (kvmcache convert)\n"
                + yaml.safe_dump(dict(self.params), sort_keys=False, default_flow_style=False)
            )
        if self.in_place:
            if texts.get("params"):
                stderr_warn(
                    f"{self.path} is not a regular file: its model parameters are not written"
                )
            return []
        written = []
        for kind, side in self.sidecars.items():
            try:
                if texts.get(kind):
                    with atomic_open(side, "w") as f:
                        f.write(texts[kind])
                    written.append(side)
                elif os.path.lexists(side):
                    os.unlink(side)
            except OSError as e:
                raise KvmcacheError(f"{side}: cannot write: {e.strerror or e}") from None
        return written
