"""YAML scenarios (INTERFACES.md section 2) <-> event arrays, with line-numbered errors."""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Mapping
from typing import Any

import numpy as np
import yaml

from kvmcache.atomic import atomic_open
from kvmcache.errors import KvmcacheError
from kvmcache.limits import MAX_ALIAS_NODES, excerpt, number_too_long
from kvmcache.params import parse_mapping
from kvmcache.trace import validate as v
from kvmcache.trace.events import (
    EVENT_DTYPE,
    FLAG_PRIVATE,
    LEVEL_CODES,
    LEVEL_NAMES,
    MAX_VCPUS,
    OP_CODES,
    OP_FAULT,
    OP_NAMES,
    OP_SPLIT,
    OP_UNMAP,
    OP_VCPU_CREATE,
    OP_VCPU_DESTROY,
    OP_VM_DESTROY,
    OPS_WITH_GFN,
    OPS_WITH_LEVEL,
    OPS_WITH_VCPU,
    U64_MAX,
    VM_TYPES,
    TraceHeader,
)
from kvmcache.trace.sizes import not_a_size, size_bytes
from kvmcache.yamlio import (
    BINARY_TEXT,
    DuplicateKey,
    UniqueKeyLoader,
    alias_bomb,
    expanded_nodes,
    read_text_file,
    yaml_error,
)

#: The C loader when PyYAML was built with libyaml (same YAML 1.1 rules, much faster),
#: refusing a key repeated in one mapping (an event, ``vm``, ``params``).
Loader: type = UniqueKeyLoader

FORMAT_VERSION = 1
PAGE_SIZE = 4096
TOP_KEYS = ("kvmcache-trace", "vm", "params", "events")
VM_KEYS = ("type", "root_level", "gfn_limit", "guest_memory", "host_pfn_limit", "host_memory")
EVENT_KEYS = ("ts", "op", "vcpu", "gfn", "pfn", "level", "private")
REQUIRED: dict[int, tuple[str, ...]] = {
    OP_FAULT: ("vcpu", "gfn", "pfn", "level"),
    OP_UNMAP: ("gfn", "level"),
    OP_SPLIT: ("gfn",),
    OP_VCPU_CREATE: ("vcpu",),
    OP_VCPU_DESTROY: ("vcpu",),
}


class _Problem(Exception):
    """A problem inside one event or header field; the caller adds file, index and line."""


def _show(value: Any) -> str:
    """A YAML-ish rendering of a scalar for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "a mapping"
    return excerpt(value)


def _int_field(value: Any, key: str) -> int:
    """A YAML integer, or a quoted string in Python ``int(s, 0)`` syntax, that fits u64."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Problem(f"{key} must be an integer, got {_show(value)}")
    if isinstance(value, str):
        if number_too_long(value):
            raise _Problem(f"{key}: a number of {len(value.strip()):,} characters is too long")
        try:
            value = int(value, 0)
        except ValueError:
            raise _Problem(f"{key} {excerpt(value)} is not an integer") from None
    if not 0 <= value <= U64_MAX:
        raise _Problem(f"{key} {value} does not fit an unsigned 64-bit integer")
    return value


def _plain_int(value: Any, key: str) -> int:
    """A plain YAML integer (no booleans, no strings)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Problem(f"{key} must be a plain integer, got {_show(value)}")
    return value


def parse_size(value: Any, key: str) -> int:
    """Bytes from a YAML integer or a string like ``4GiB``, ``0x100 M`` (all units powers of 1024)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Problem(f"{key} must be a size like 4GiB or a number of bytes, got {_show(value)}")
    if isinstance(value, int):
        if value < 0:
            raise _Problem(f"{key} {value} is negative")
        return value
    if number_too_long(value):
        raise _Problem(f"{key}: a size of {len(value.strip()):,} characters is too long")
    size = size_bytes(value, unit_required=True)
    if size is None:
        raise _Problem(not_a_size(key, value))
    return size


def _op(value: Any) -> int:
    if isinstance(value, str) and value in OP_CODES:
        return OP_CODES[value]
    if isinstance(value, int) and not isinstance(value, bool) and value in OP_NAMES:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        raise _Problem(v.bad_op(value))
    names = ", ".join(OP_CODES)
    raise _Problem(f"op {_show(value)} is not an event op ({names} or 1..7)")


def _level(value: Any) -> int:
    if isinstance(value, str) and value.lower() in LEVEL_CODES:
        return LEVEL_CODES[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and value in LEVEL_NAMES:
        return value
    raise _Problem(v.bad_level(value))


class _Composer:
    """PyYAML's composer, one node at a time from the parser's events, so that the long
    ``events`` list is built and converted item by item instead of as one node tree."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.anchors: dict[str, yaml.Node] = {}
        # Alias budget (docs/limits.md): nodes composed, nodes reached through aliases, the
        # expanded size of each anchored node (by id; the anchor keeps the node alive) and
        # the nodes still open (an alias to one of them is a structure containing itself).
        self.nodes = 0
        self.alias_nodes = 0
        self.sizes: dict[int, int] = {}
        self.open: set[int] = set()

    def _alias(self, node: yaml.Node, mark: Any) -> None:
        """Count the nodes an alias adds; refuse a bomb or a self-reference."""
        if id(node) in self.open:
            raise alias_bomb(mark, recursive=True)
        budget = self.nodes + MAX_ALIAS_NODES - self.alias_nodes
        self.alias_nodes += expanded_nodes(node, budget, self.sizes)
        if self.alias_nodes > self.nodes + MAX_ALIAS_NODES:
            raise alias_bomb(mark)

    def _resolve(self, kind: type, value: Any, implicit: Any, tag: str | None) -> str:
        if tag is None or tag == "!":
            return self.loader.resolve(kind, value, implicit)
        return tag

    def _anchor(self, event: Any, node: yaml.Node) -> None:
        self.nodes += 1
        if event.anchor is not None:
            old = self.anchors.get(event.anchor)
            if old is not None:
                self.sizes.clear()  # ids of a dropped node's subtree may be reused
            self.anchors[event.anchor] = node

    def compose(self) -> yaml.Node:
        """The next complete node (scalar, sequence or mapping)."""
        get, check = self.loader.get_event, self.loader.check_event
        event = get()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in self.anchors:
                raise yaml.composer.ComposerError(
                    None, None, f"found undefined alias {event.anchor!r}", event.start_mark
                )
            node = self.anchors[event.anchor]
            self._alias(node, event.start_mark)
            return node
        if isinstance(event, yaml.ScalarEvent):
            tag = self._resolve(yaml.ScalarNode, event.value, event.implicit, event.tag)
            node: yaml.Node = yaml.ScalarNode(
                tag, event.value, event.start_mark, event.end_mark, style=event.style
            )
            self._anchor(event, node)
            return node
        if isinstance(event, yaml.SequenceStartEvent):
            tag = self._resolve(yaml.SequenceNode, None, event.implicit, event.tag)
            node = yaml.SequenceNode(tag, [], event.start_mark, None, flow_style=event.flow_style)
            self._anchor(event, node)
            self.open.add(id(node))
            while not check(yaml.SequenceEndEvent):
                node.value.append(self.compose())
            self.open.discard(id(node))
            node.end_mark = get().end_mark
            return node
        if isinstance(event, yaml.MappingStartEvent):
            tag = self._resolve(yaml.MappingNode, None, event.implicit, event.tag)
            node = yaml.MappingNode(tag, [], event.start_mark, None, flow_style=event.flow_style)
            self._anchor(event, node)
            self.open.add(id(node))
            while not check(yaml.MappingEndEvent):
                key = self.compose()
                node.value.append((key, self.compose()))
            self.open.discard(id(node))
            node.end_mark = get().end_mark
            return node
        raise yaml.composer.ComposerError(
            None, None, f"unexpected {type(event).__name__}", event.start_mark
        )

    def construct(self, node: yaml.Node) -> Any:
        """The Python value of ``node`` (safe_load rules)."""
        return self.loader.construct_document(node)


def _node_lines(node: Any) -> dict[str, int]:
    """Key -> 1-based line of each key in a mapping node (empty for anything else)."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {
        str(k.value): k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)
    }


_yaml_error = yaml_error


def _read_text(path: str) -> str:
    """The file as text, refused at its first block when it is binary data, not YAML."""
    return read_text_file(path, "a YAML trace", binary=BINARY_TEXT)


def _header(
    path: str, data: dict, lines: dict[str, int], vm_node: Any, partial: bool = False
) -> TraceHeader:
    """Check the top level and ``vm`` block; returns the header (params raw, count unset).
    ``partial``: only what events need (version, vm), before the rest has been parsed."""

    def fail(problem: str, key: str | None = None) -> KvmcacheError:
        line = lines.get(key) if key else None
        return KvmcacheError(f"{path}: line {line}: {problem}" if line else f"{path}: {problem}")

    if "kvmcache-trace" not in data:
        raise fail("missing kvmcache-trace: 1 (not a kvmcache YAML trace?)")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown and not partial:
        known = ", ".join(TOP_KEYS)
        raise fail(
            f"unknown top-level key {excerpt(unknown[0])} (allowed: {known})", str(unknown[0])
        )
    try:
        version = _plain_int(data["kvmcache-trace"], "kvmcache-trace")
    except _Problem as e:
        raise fail(str(e), "kvmcache-trace") from None
    if version > FORMAT_VERSION:
        raise fail(
            f"trace format version {version} is newer than this kvmcache reads "
            f"({FORMAT_VERSION}); upgrade kvmcache",
            "kvmcache-trace",
        )
    if version != FORMAT_VERSION:
        raise fail(f"unknown trace format version {version}", "kvmcache-trace")

    if "vm" not in data:
        raise fail("missing required key vm")
    vm = data["vm"]
    if not isinstance(vm, dict):
        raise fail(f"vm must be a mapping, got {_show(vm)}", "vm")
    vlines = _node_lines(vm_node)
    vm_line = lines.get("vm")

    def vfail(problem: str, key: str | None = None) -> KvmcacheError:
        line = vlines.get(key) if key else None
        line = line or vm_line
        msg = f"vm.{key}: {problem}" if key else f"vm: {problem}"
        return KvmcacheError(f"{path}: line {line}: {msg}" if line else f"{path}: {msg}")

    unknown = [k for k in vm if k not in VM_KEYS]
    if unknown:
        raise vfail(f"unknown key {excerpt(unknown[0])} (allowed: {', '.join(VM_KEYS)})")
    for key in ("type", "root_level"):
        if key not in vm:
            raise vfail(f"missing required key {key}")
    vm_type = vm["type"]
    if not isinstance(vm_type, str) or vm_type not in VM_TYPES:
        raise vfail(f"{_show(vm_type)} is not a vm type (tdx or vmx)", "type")
    try:
        root_level = _plain_int(vm["root_level"], "root_level")
    except _Problem as e:
        raise vfail(str(e), "root_level") from None
    if root_level not in (4, 5):
        raise vfail(f"{root_level} is not a root level (4 or 5)", "root_level")
    limits = []
    for limit_key, size_key in (("gfn_limit", "guest_memory"), ("host_pfn_limit", "host_memory")):
        if (limit_key in vm) == (size_key in vm):
            raise vfail(f"give exactly one of {limit_key} and {size_key}")
        try:
            if limit_key in vm:
                key = limit_key
                limit = _int_field(vm[limit_key], limit_key)
            else:
                key = size_key
                limit = parse_size(vm[size_key], size_key) // PAGE_SIZE
        except _Problem as e:
            raise vfail(str(e), key) from None
        if limit == 0:
            raise vfail("must cover at least one 4 KiB page", key)
        if limit > U64_MAX:
            raise vfail(f"{limit_key} {limit} does not fit an unsigned 64-bit integer", key)
        limits.append(limit)

    params = data.get("params")
    if params is None or partial:
        params = {}
    src = f"{path}: line {lines['params']}" if "params" in lines else path
    parse_mapping(params, src)  # raises a KvmcacheError naming the file for a bad name or value
    return TraceHeader(
        vm_type=vm_type,
        root_level=root_level,
        gfn_limit=limits[0],
        host_pfn_limit=limits[1],
        complete=True,
        version=(FORMAT_VERSION, 0),
        params=dict(params),
        path=path,
        format="yaml",
    )


def _event(ev: Any, prev_ts: int, header: TraceHeader) -> tuple[int, int, int, int, int, int, int]:
    """One event mapping -> a record tuple in EVENT_DTYPE field order."""
    if not isinstance(ev, dict):
        raise _Problem(f"an event must be a mapping like {{ts: 0, op: vm_create}}, got {_show(ev)}")
    for key in ev:
        if key not in EVENT_KEYS:
            raise _Problem(f"unknown key {excerpt(key)} (event keys are {' '.join(EVENT_KEYS)})")
    if "op" not in ev:
        raise _Problem("missing required key op")
    op = _op(ev["op"])
    for key in REQUIRED.get(op, ()):
        if key not in ev:
            raise _Problem(f"{OP_NAMES[op]}: missing required key {key}")
    ts = _int_field(ev["ts"], "ts") if "ts" in ev else prev_ts
    vcpu = gfn = pfn = level = flags = 0
    if "vcpu" in ev:
        vcpu = _int_field(ev["vcpu"], "vcpu")
        if vcpu >= MAX_VCPUS:
            raise _Problem(v.bad_vcpu(vcpu))
    if "gfn" in ev:
        gfn = _int_field(ev["gfn"], "gfn")
        if gfn >= header.gfn_limit:
            raise _Problem(v.bad_gfn(gfn, header.gfn_limit))
    if "pfn" in ev:
        pfn = _int_field(ev["pfn"], "pfn")
        if op == OP_FAULT and pfn >= header.host_pfn_limit:
            raise _Problem(v.bad_pfn(pfn, header.host_pfn_limit))
    if "level" in ev:
        level = _level(ev["level"])
    if "private" in ev:
        private = ev["private"]
        if not isinstance(private, bool):
            raise _Problem(f"private must be a boolean (true or false), got {_show(private)}")
        flags = FLAG_PRIVATE if private else 0
    if op == OP_FAULT and flags and not header.is_tdx:
        raise _Problem(v.private_on_vmx())
    return ts, gfn, pfn, vcpu, op, level, flags


class _Builder:
    """Event mappings -> records, in order, flushing to numpy every 64Ki events."""

    STEP = 1 << 16

    def __init__(self, path: str, header: TraceHeader) -> None:
        self.path = path
        self.header = header
        self.records: list[tuple[int, int, int, int, int, int, int]] = []
        self.parts: list[np.ndarray] = []
        self.lines = array("L")
        self.count = 0
        self.prev_ts = 0
        self.destroyed: int | None = None

    def where(self, i: int) -> str:
        line = self.lines[i] if i < len(self.lines) else 0
        return f"{self.path}: event {i} (line {line})" if line else f"{self.path}: event {i}"

    def add(self, item: Any, line: int) -> None:
        i = self.count
        self.lines.append(line)
        try:
            if self.destroyed is not None:
                raise _Problem(v.after_destroy(self.destroyed))
            rec = _event(item, self.prev_ts, self.header)
        except _Problem as e:
            raise KvmcacheError(f"{self.where(i)}: {e}") from None
        if rec[4] == OP_VM_DESTROY:
            self.destroyed = i
        self.prev_ts = rec[0]
        self.records.append(rec)
        self.count += 1
        if len(self.records) >= self.STEP:
            self._flush()

    def _flush(self) -> None:
        if self.records:
            self.parts.append(np.array(self.records, dtype=EVENT_DTYPE))
            self.records = []

    def finish(self, header: TraceHeader) -> np.ndarray:
        """All records, re-checked with the shared vectorised rules."""
        self._flush()
        arr = np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=EVENT_DTYPE)
        err = v.Validator(header).first_error(arr, 0)
        if err is not None:
            raise KvmcacheError(f"{self.where(err[0])}: {err[1]}")
        return arr


_STREAMED: list = []  # stands for the `events` list, converted as it was parsed


def _read(path: str, loader: Any) -> tuple[TraceHeader, np.ndarray]:
    comp = _Composer(loader)
    loader.get_event()  # stream start
    if loader.check_event(yaml.StreamEndEvent):
        raise KvmcacheError(f"{path}: empty file, not a kvmcache YAML trace")
    loader.get_event()  # document start
    if not loader.check_event(yaml.MappingStartEvent):
        data = comp.construct(comp.compose())
        if data is None:
            raise KvmcacheError(f"{path}: empty file, not a kvmcache YAML trace")
        raise KvmcacheError(
            f"{path}: not a kvmcache YAML trace (expected a mapping with kvmcache-trace, vm, events)"
        )
    loader.get_event()
    data: dict[Any, Any] = {}
    lines: dict[str, int] = {}
    vm_node = None
    builder: _Builder | None = None
    pending: list[tuple[Any, int]] = []
    while not loader.check_event(yaml.MappingEndEvent):
        key_node = comp.compose()
        key = comp.construct(key_node)
        line = key_node.start_mark.line + 1
        try:
            duplicate = key in data
        except TypeError:
            raise KvmcacheError(
                f"{path}: line {line}: a top-level key must be a plain name"
            ) from None
        if duplicate:
            raise KvmcacheError(f"{path}: line {line}: duplicate top-level key {excerpt(key)}")
        lines[str(key)] = line
        if key == "events" and loader.check_event(yaml.SequenceStartEvent):
            data[key] = _STREAMED
            if "kvmcache-trace" in data and "vm" in data:
                try:
                    builder = _Builder(path, _header(path, data, lines, vm_node, partial=True))
                except KvmcacheError:
                    pass  # keep the items; the full check below reports the header's problem
            loader.get_event()
            while not loader.check_event(yaml.SequenceEndEvent):
                item_line = loader.peek_event().start_mark.line + 1
                try:
                    item = comp.construct(comp.compose())
                except DuplicateKey as e:
                    i = builder.count if builder is not None else len(pending)
                    raise KvmcacheError(
                        f"{path}: event {i} (line {e.line}): duplicate key {excerpt(e.key)}"
                    ) from None
                if builder is not None:
                    builder.add(item, item_line)
                else:
                    pending.append((item, item_line))
            loader.get_event()
            continue
        node = comp.compose()
        if key == "vm":
            vm_node = node
        try:
            data[key] = comp.construct(node)
        except DuplicateKey as e:
            raise KvmcacheError(
                f"{path}: line {e.line}: duplicate key {excerpt(e.key)} in {key}"
            ) from None
    loader.get_event()  # mapping end
    loader.get_event()  # document end
    if not loader.check_event(yaml.StreamEndEvent):
        mark = loader.peek_event().start_mark
        raise KvmcacheError(
            f"{path}: line {mark.line + 1}, column {mark.column + 1}: invalid YAML: "
            "expected a single document, found another"
        )
    header = _header(path, data, lines, vm_node)
    if "events" not in data:
        raise KvmcacheError(f"{path}: missing required key events (use events: [] for none)")
    events = data["events"]
    if events is not _STREAMED:
        what = "null" if events is None else f"not a list ({_show(events)})"
        raise KvmcacheError(
            f"{path}: line {lines['events']}: events is {what}; use events: [] for none"
        )
    if builder is None:
        builder = _Builder(path, header)
        for item, item_line in pending:
            builder.add(item, item_line)
    arr = builder.finish(header)
    header.count = len(arr)
    return header, arr


def read_yaml(path: str, text: str | None = None) -> tuple[TraceHeader, np.ndarray]:
    """Read a YAML trace (from ``text`` when given, else the file); every problem is a
    one-line KvmcacheError naming the file, the event index and the YAML line."""
    if text is None:
        text = _read_text(path)
    loader = Loader(text)
    try:
        return _read(path, loader)
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None
    except RecursionError:
        raise KvmcacheError(f"{path}: invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


# --- writing ----------------------------------------------------------------------------------


def _flow(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(
        dict(data), default_flow_style=True, sort_keys=False, width=1 << 30
    ).strip()


def _event_lines(header: TraceHeader, events: np.ndarray) -> list[str]:
    """One flow mapping per event; fields an op ignores appear only when non-zero and valid."""
    ts = events["ts"].tolist()
    op = events["op"].tolist()
    vcpu = events["vcpu"].tolist()
    gfn = events["gfn"].tolist()
    pfn = events["pfn"].tolist()
    level = events["level"].tolist()
    flags = events["flags"].tolist()
    glimit = header.gfn_limit
    out = []
    for i in range(len(op)):
        o = op[i]
        parts = [f"ts: {ts[i]}", f"op: {OP_NAMES[o]}"]
        if o in OPS_WITH_VCPU or 0 < vcpu[i] < MAX_VCPUS:
            parts.append(f"vcpu: {vcpu[i]}")
        if o in OPS_WITH_GFN or 0 < gfn[i] < glimit:
            parts.append(f"gfn: 0x{gfn[i]:x}")
        if o == OP_FAULT or pfn[i]:
            parts.append(f"pfn: 0x{pfn[i]:x}")
        if o in OPS_WITH_LEVEL or level[i] in LEVEL_NAMES:
            parts.append(f"level: {LEVEL_NAMES[level[i]]}")
        if flags[i] & FLAG_PRIVATE:
            parts.append("private: true")
        out.append("  - {" + ", ".join(parts) + "}\n")
    return out


def write_yaml(
    path: str, header: TraceHeader, events: np.ndarray, params: dict | None = None
) -> None:
    """Write a readable YAML trace atomically (temp file + rename); ``params`` defaults to
    ``header.params`` (pass ``{}`` for none). Fields an op ignores are kept when non-zero
    and valid in YAML, dropped otherwise."""
    checked = dataclasses.replace(header, path=header.path or path)
    v.Validator(checked).check(events, 0)
    if params is None:
        params = header.params
    vm = (
        f"vm: {{type: {header.vm_type}, root_level: {header.root_level}, "
        f"gfn_limit: 0x{header.gfn_limit:x}, host_pfn_limit: 0x{header.host_pfn_limit:x}}}\n"
    )
    head = [f"# kvmcache trace: {len(events)} events\n", f"kvmcache-trace: {FORMAT_VERSION}\n", vm]
    if params:
        head.append(f"params: {_flow(params)}\n")
    head.append("events:\n" if len(events) else "events: []\n")
    with atomic_open(path, "w") as f:
        f.writelines(head)
        step = 1 << 16
        for start in range(0, len(events), step):
            f.writelines(_event_lines(header, events[start : start + step]))
