"""YAML traces (INTERFACES.md section 2): reading, every error class, writing, round trips."""

from __future__ import annotations

import os

import numpy as np
import pytest

from kvmcache.errors import KvmcacheError
from kvmcache.trace.binary import BinaryTrace, write_binary
from kvmcache.trace.events import empty
from kvmcache.trace.yamlfmt import parse_size, read_yaml, write_yaml

HEAD = """\
kvmcache-trace: 1
vm: {type: tdx, root_level: 4, gfn_limit: 0x100000, host_pfn_limit: 0x1000000}
events:
"""


def events_of(*lines: str, head: str = HEAD) -> str:
    return head + "".join(f"  - {line}\n" for line in lines)


def rows(arr: np.ndarray) -> list[tuple]:
    return [tuple(int(x) for x in r) for r in arr.tolist()]


def err(text: str, path: str = "t.yaml") -> str:
    with pytest.raises(KvmcacheError) as e:
        read_yaml(path, text=text)
    msg = str(e.value)
    assert "\n" not in msg
    assert e.value.exit_code == 2
    return msg


def test_reads_the_interfaces_example():
    text = """\
kvmcache-trace: 1            # required, the format version
vm:
  type: tdx                  # tdx | vmx
  root_level: 4              # 4 | 5
  gfn_limit: 0x100000        # or guest_memory: 4GiB (gfn_limit = bytes / 4096)
  host_pfn_limit: 0x1000000  # or host_memory: 64GiB
params:                      # optional
  tdcx_pages: 5
events:
  - {ts: 0, op: vm_create}
  - {ts: 10, op: vcpu_create, vcpu: 0}
  - {ts: 20, op: fault, vcpu: 0, gfn: 0x1000, pfn: 0x80000, level: 4k, private: true}
  - {ts: 30, op: unmap, gfn: 0x1000, level: 4k, private: true}
  - {ts: 40, op: vm_destroy}
"""
    h, ev = read_yaml("x.yaml", text=text)
    assert (h.vm_type, h.root_level, h.gfn_limit, h.host_pfn_limit) == ("tdx", 4, 1 << 20, 1 << 24)
    assert (h.format, h.path, h.count, h.complete, h.params) == (
        "yaml",
        "x.yaml",
        5,
        True,
        {"tdcx_pages": 5},
    )
    # (ts, gfn, pfn, vcpu, op, level, flags)
    assert rows(ev) == [
        (0, 0, 0, 0, 1, 0, 0),
        (10, 0, 0, 0, 3, 0, 0),
        (20, 0x1000, 0x80000, 0, 5, 1, 1),
        (30, 0x1000, 0, 0, 6, 1, 1),
        (40, 0, 0, 0, 2, 0, 0),
    ]


def test_scalar_forms_defaults_and_codes():
    text = events_of(
        "{op: 1}",  # no ts: 0 for the first
        "{ts: 1_000, op: 3, vcpu: '0x10'}",  # `_` separator; quoted int(s, 0)
        "{op: fault, vcpu: 017, gfn: '0b101', pfn: 0o17, level: 2M, private: yes}",
        "{ts: ' 2000 ', op: unmap, gfn: 5, level: 1G, private: off}",
        "{op: split, gfn: 0x2_00, private: On}",
        "{ts: 0xffffffffffffffff, op: vcpu_destroy, vcpu: 65535}",
        "{op: 6, gfn: 1, level: 3}",
    )
    _, ev = read_yaml("t.yaml", text=text)
    assert rows(ev) == [
        (0, 0, 0, 0, 1, 0, 0),
        (1000, 0, 0, 16, 3, 0, 0),
        (1000, 5, 15, 15, 5, 2, 1),  # 017 is YAML 1.1 octal; '0o17' via int(s, 0)
        (2000, 5, 0, 0, 6, 3, 0),
        (2000, 0x200, 0, 0, 7, 0, 1),
        ((1 << 64) - 1, 0, 0, 65535, 4, 0, 0),
        ((1 << 64) - 1, 1, 0, 0, 6, 3, 0),
    ]


def test_ignored_keys_are_kept_and_checked():
    _, ev = read_yaml(
        "t.yaml",
        text=events_of(
            "{op: vm_create, vcpu: 7, gfn: 9, pfn: 0x7fffffffffffffff, level: 4k, private: true}"
        ),
    )
    assert rows(ev) == [(0, 9, 0x7FFFFFFFFFFFFFFF, 7, 1, 1, 1)]
    assert "vcpu 65536 is out of range" in err(events_of("{op: vm_create, vcpu: 65536}"))
    assert "gfn 0x100000 is out of range" in err(events_of("{op: vm_create, gfn: 0x100000}"))
    assert "level 'huge' is invalid" in err(events_of("{op: split, gfn: 1, level: huge}"))
    assert "private must be a boolean" in err(events_of("{op: vm_create, private: 1}"))


def test_empty_events_and_sizes():
    head = """\
kvmcache-trace: 1
vm: {type: vmx, root_level: 5, guest_memory: 4GiB, host_memory: '0x10 tb'}
params: {teardown: no, capacity: '0x30'}
events: []
"""
    h, ev = read_yaml("t.yaml", text=head)
    assert len(ev) == 0 and h.count == 0
    assert (h.vm_type, h.root_level, h.gfn_limit, h.host_pfn_limit) == ("vmx", 5, 1 << 20, 1 << 32)
    assert h.params == {"teardown": False, "capacity": "0x30"}  # raw, as written


@pytest.mark.parametrize(
    "value,size",
    [
        (4096, 4096),
        ("4GiB", 4 << 30),
        ("4 gib", 4 << 30),
        ("4G", 4 << 30),
        ("4gb", 4 << 30),
        ("  2 T ", 2 << 40),
        ("0x10 MiB", 16 << 20),
        ("0X1000B", 0x1000),
        ("512k", 512 << 10),
        ("10KB", 10 << 10),
        ("7 b", 7),
        ("007M", 7 << 20),
    ],
)
def test_size_grammar(value, size):
    assert parse_size(value, "guest_memory") == size


@pytest.mark.parametrize(
    "value",
    [
        "1.5GiB",
        "1_024MiB",
        "0o10G",
        "0b1G",
        "-4GiB",
        "+4GiB",
        "4",
        "4 GiBs",
        "4 PiB",
        "GiB",
        -1,
        1.5,
        True,
        None,
    ],
)
def test_bad_sizes(value):
    text = f"kvmcache-trace: 1\nvm: {{type: tdx, root_level: 4, guest_memory: {value!r}, host_pfn_limit: 1}}\nevents: []\n"
    if value is None:
        text = text.replace("None", "null")
    elif isinstance(value, bool):
        text = text.replace("True", "true")
    msg = err(text)
    assert msg.startswith("t.yaml: line 2: vm.guest_memory: ")


def test_size_below_one_page_is_an_error():
    text = "kvmcache-trace: 1\nvm: {type: tdx, root_level: 4, guest_memory: 4095B, host_pfn_limit: 1}\nevents: []\n"
    assert err(text) == "t.yaml: line 2: vm.guest_memory: must cover at least one 4 KiB page"


HEADER_ERRORS = [
    ("", "t.yaml: empty file, not a kvmcache YAML trace"),
    (
        "- 1\n- 2\n",
        "t.yaml: not a kvmcache YAML trace (expected a mapping with kvmcache-trace, vm, events)",
    ),
    ("vm: {}\nevents: []\n", "t.yaml: missing kvmcache-trace: 1 (not a kvmcache YAML trace?)"),
    (
        "kvmcache-trace: 2\nvm: {}\nevents: []\n",
        "t.yaml: line 1: trace format version 2 is newer than this kvmcache reads (1); upgrade kvmcache",
    ),
    ("kvmcache-trace: '1'\n", "t.yaml: line 1: kvmcache-trace must be a plain integer, got '1'"),
    (
        "kvmcache-trace: 1\nvm: {type: tdx}\nevents: []\nextra: 1\n",
        "t.yaml: line 4: unknown top-level key 'extra' (allowed: kvmcache-trace, vm, params, events)",
    ),
    ("kvmcache-trace: 1\nevents: []\n", "t.yaml: missing required key vm"),
    (
        "kvmcache-trace: 1\nvm:\n  type: tdx\n  gfn_limit: 1\n  host_pfn_limit: 1\nevents: []\n",
        "t.yaml: line 2: vm: missing required key root_level",
    ),
    (
        "kvmcache-trace: 1\nvm:\n  type: sev\n  root_level: 4\n",
        "t.yaml: line 3: vm.type: 'sev' is not a vm type (tdx or vmx)",
    ),
    (
        "kvmcache-trace: 1\nvm:\n  type: tdx\n  root_level: 3\n",
        "t.yaml: line 4: vm.root_level: 3 is not a root level (4 or 5)",
    ),
    (
        "kvmcache-trace: 1\nvm:\n  type: tdx\n  root_level: '4'\n",
        "t.yaml: line 4: vm.root_level: root_level must be a plain integer, got '4'",
    ),
    (
        "kvmcache-trace: 1\nvm: {type: tdx, root_level: 4, gfn_limit: 1, guest_memory: 4GiB}\n",
        "t.yaml: line 2: vm: give exactly one of gfn_limit and guest_memory",
    ),
    (
        "kvmcache-trace: 1\nvm: {type: tdx, root_level: 4, gfn_limit: 1}\n",
        "t.yaml: line 2: vm: give exactly one of host_pfn_limit and host_memory",
    ),
    (
        "kvmcache-trace: 1\nvm: {type: tdx, root_level: 4, gfn_limit: 0, host_pfn_limit: 1}\n",
        "t.yaml: line 2: vm.gfn_limit: must cover at least one 4 KiB page",
    ),
    (
        "kvmcache-trace: 1\nvm: {type: tdx, root_level: 4, gfn_limit: 0x1_0000_0000_0000_0000, host_pfn_limit: 1}\n",
        "t.yaml: line 2: vm.gfn_limit: gfn_limit 18446744073709551616 does not fit an unsigned 64-bit integer",
    ),
    (
        "kvmcache-trace: 1\nvm: {type: tdx, root_level: 4, gfn_limit: 1, host_pfn_limit: 1, cpus: 2}\n",
        "t.yaml: line 2: vm: unknown key 'cpus' (allowed: type, root_level, gfn_limit, guest_memory, host_pfn_limit, host_memory)",
    ),
    (
        "kvmcache-trace: 1\nvm: {type: tdx, root_level: 4, gfn_limit: 1, host_pfn_limit: 1}\n",
        "t.yaml: missing required key events (use events: [] for none)",
    ),
    (
        "kvmcache-trace: 1\nvm: {type: tdx, root_level: 4, gfn_limit: 1, host_pfn_limit: 1}\nevents:\n",
        "t.yaml: line 3: events is null; use events: [] for none",
    ),
    (
        "kvmcache-trace: 1\nvm: {type: tdx, root_level: 4, gfn_limit: 1, host_pfn_limit: 1}\nevents: {op: fault}\n",
        "t.yaml: line 3: events is not a list (a mapping); use events: [] for none",
    ),
    (
        "kvmcache-trace: 1\nvm: {type: tdx, root_level: 4, gfn_limit: 1, host_pfn_limit: 1}\nparams: {capacity: 1.5}\nevents: []\n",
        "t.yaml: line 3: parameter capacity: 1.5 is not an integer",
    ),
    (
        "kvmcache-trace: 1\nvm: {type: tdx, root_level: 4, gfn_limit: 1, host_pfn_limit: 1}\nparams: {nope: 1}\nevents: []\n",
        "t.yaml: line 3: unknown parameter 'nope' (known: ",
    ),
]


@pytest.mark.parametrize("text,message", HEADER_ERRORS)
def test_header_errors(text, message):
    assert err(text).startswith(message)


def test_yaml_syntax_error_names_line_and_column():
    text = HEAD + "  - {ts: 0, op: vm_create\n  - {ts: 1}\n"
    msg = err(text)
    assert msg.startswith("t.yaml: line 5, column ")
    assert "invalid YAML: " in msg
    assert err("a: b: c\n").startswith(
        "t.yaml: line 1, column 5: invalid YAML: mapping values are not allowed"
    )
    assert err("a: 1\n---\nb: 2\n").startswith("t.yaml: line 2, column 1: invalid YAML: ")
    assert "could not determine a constructor" in err("x: !!python/object:os.system {}\n")


EVENT_ERRORS = [
    (
        "{ts: 0, op: vm_create, flags: 1}",
        "unknown key 'flags' (event keys are ts op vcpu gfn pfn level private)",
    ),
    ("{ts: 0}", "missing required key op"),
    ("{op: fault, vcpu: 0, gfn: 1, level: 4k}", "fault: missing required key pfn"),
    ("{op: unmap, level: 4k}", "unmap: missing required key gfn"),
    ("{op: unmap, gfn: 1}", "unmap: missing required key level"),
    ("{op: split}", "split: missing required key gfn"),
    ("{op: vcpu_create}", "vcpu_create: missing required key vcpu"),
    ("{op: vcpu_destroy}", "vcpu_destroy: missing required key vcpu"),
    (
        "{op: Fault}",
        "op 'Fault' is not an event op (vm_create, vm_destroy, vcpu_create, vcpu_destroy, fault, unmap, split or 1..7)",
    ),
    ("{op: 8}", "op 8 is not a known event op (1..7)"),
    ("{op: '5'}", "op '5' is not an event op"),
    ("{op: true}", "op true is not an event op"),
    ("{op: unmap, gfn: 1, level: 4}", "level 4 is invalid (4k, 2m, 1g or 1..3)"),
    ("{op: unmap, gfn: 1, level: '1'}", "level '1' is invalid (4k, 2m, 1g or 1..3)"),
    ("{op: unmap, gfn: 1, level: 4K2}", "level '4K2' is invalid"),
    ("{ts: -1, op: vm_create}", "ts -1 does not fit an unsigned 64-bit integer"),
    (
        "{ts: 0x1_0000_0000_0000_0000, op: vm_create}",
        "ts 18446744073709551616 does not fit an unsigned 64-bit integer",
    ),
    ("{ts: 1.5, op: vm_create}", "ts must be an integer, got 1.5"),
    ("{ts: true, op: vm_create}", "ts must be an integer, got true"),
    ("{ts: null, op: vm_create}", "ts must be an integer, got null"),
    ("{ts: '12abc', op: vm_create}", "ts '12abc' is not an integer"),
    ("{ts: '010', op: vm_create}", "ts '010' is not an integer"),
    ("{op: vcpu_create, vcpu: 65536}", "vcpu 65536 is out of range (must be < 65536)"),
    (
        "{op: fault, vcpu: 0, gfn: 0x100000, pfn: 0, level: 4k}",
        "gfn 0x100000 is out of range (gfn_limit is 0x100000)",
    ),
    (
        "{op: fault, vcpu: 0, gfn: 0, pfn: 0x1000000, level: 4k}",
        "pfn 0x1000000 is out of range (host_pfn_limit is 0x1000000)",
    ),
    (
        "{op: fault, vcpu: 0, gfn: 0, pfn: 0, level: 4k, private: 'true'}",
        "private must be a boolean (true or false), got 'true'",
    ),
    ("[ts, 0]", "an event must be a mapping like {ts: 0, op: vm_create}, got a list"),
]


@pytest.mark.parametrize("event,problem", EVENT_ERRORS)
def test_event_errors_name_index_and_line(event, problem):
    text = events_of("{ts: 0, op: vm_create}", "{ts: 1, op: vcpu_create, vcpu: 0}", event)
    msg = err(text)
    assert msg.startswith(f"t.yaml: event 2 (line 6): {problem}")


def test_pfn_is_range_checked_only_on_faults():
    _, ev = read_yaml("t.yaml", text=events_of("{op: unmap, gfn: 1, level: 4k, pfn: 0x1000000}"))
    assert int(ev["pfn"][0]) == 0x1000000


def test_private_fault_on_vmx_and_event_after_vm_destroy():
    vmx = HEAD.replace("tdx", "vmx")
    ok = events_of(
        "{op: unmap, gfn: 1, level: 4k, private: true}",
        "{op: split, gfn: 1, private: true}",
        head=vmx,
    )
    assert len(read_yaml("t.yaml", text=ok)[1]) == 2
    bad = events_of("{op: fault, vcpu: 0, gfn: 1, pfn: 1, level: 4k, private: true}", head=vmx)
    assert err(bad) == (
        "t.yaml: event 0 (line 4): private fault on a vmx trace (only a tdx VM has private memory)"
    )
    after = events_of("{op: vm_create}", "{op: vm_destroy}", "{op: vm_create}")
    assert err(after) == (
        "t.yaml: event 2 (line 6): event after vm_destroy (event 1); a trace describes one VM"
    )


def test_block_style_events_report_their_first_line():
    text = HEAD + "  - op: vm_create\n    ts: 0\n  - op: vcpu_create\n    vcpu: 0\n    color: red\n"
    assert err(text) == (
        "t.yaml: event 1 (line 6): unknown key 'color' (event keys are ts op vcpu gfn pfn level private)"
    )


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(KvmcacheError, match=r"nope.yaml: no such file"):
        read_yaml(str(tmp_path / "nope.yaml"))
    with pytest.raises(KvmcacheError, match=r"is a directory"):
        read_yaml(str(tmp_path))
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(KvmcacheError, match=r"bin.yaml: not a YAML trace \(not UTF-8"):
        read_yaml(str(bad))


# --- writing and round trips -------------------------------------------------------------------


def test_write_yaml_layout_and_round_trip(tmp_path):
    h, ev = read_yaml(
        "t.yaml",
        text=events_of(
            "{ts: 5, op: vm_create}",
            "{ts: 6, op: fault, vcpu: 3, gfn: 0x10, pfn: 0x20, level: 2m}",
            "{ts: 7, op: unmap, gfn: 0x10, level: 2m, private: true, vcpu: 9}",
            "{ts: 8, op: split, gfn: 0x11, level: 1g}",
        ),
    )
    h.params = {"tdcx_pages": 5, "teardown": False}
    p = str(tmp_path / "o.yaml")
    write_yaml(p, h, ev)
    assert open(p).read() == (
        "# kvmcache trace: 4 events\n"
        "kvmcache-trace: 1\n"
        "vm: {type: tdx, root_level: 4, gfn_limit: 0x100000, host_pfn_limit: 0x1000000}\n"
        "params: {tdcx_pages: 5, teardown: false}\n"
        "events:\n"
        "  - {ts: 5, op: vm_create}\n"
        "  - {ts: 6, op: fault, vcpu: 3, gfn: 0x10, pfn: 0x20, level: 2m}\n"
        "  - {ts: 7, op: unmap, vcpu: 9, gfn: 0x10, level: 2m, private: true}\n"
        "  - {ts: 8, op: split, gfn: 0x11, level: 1g}\n"
    )
    h2, ev2 = read_yaml(p)
    assert ev2.tobytes() == ev.tobytes()
    assert h2.params == {"tdcx_pages": 5, "teardown": False}
    assert [f for f in os.listdir(tmp_path)] == ["o.yaml"]  # no temp file left


def test_write_yaml_drops_ignored_fields_yaml_could_not_hold(tmp_path):
    h, _ = read_yaml("t.yaml", text=HEAD.replace("events:\n", "events: []\n"))
    ev = empty(2)
    ev["op"] = [1, 7]
    ev["vcpu"][0] = 1 << 20  # ignored by vm_create, too large for YAML: dropped
    ev["level"][1] = 9  # ignored by split, not a level: dropped
    ev["gfn"][1] = 3
    p = str(tmp_path / "d.yaml")
    write_yaml(p, h, ev, params={})
    _, back = read_yaml(p)
    assert rows(back) == [(0, 0, 0, 0, 1, 0, 0), (0, 3, 0, 0, 7, 0, 0)]


def test_write_yaml_empty_trace(tmp_path):
    h, ev = read_yaml("t.yaml", text=HEAD.replace("events:\n", "events: []\n"))
    p = str(tmp_path / "e.yaml")
    write_yaml(p, h, ev)
    assert open(p).read().endswith("events: []\n")
    assert len(read_yaml(p)[1]) == 0


def test_yaml_binary_yaml_preserves_every_field(tmp_path):
    rng = np.random.default_rng(3)
    lines = ["{ts: 0, op: vm_create}"]
    for i in range(300):
        op = ["fault", "unmap", "split", "vcpu_create", "vcpu_destroy"][int(rng.integers(0, 5))]
        priv = ", private: true" if rng.integers(0, 2) else ""
        lvl = ["4k", "2m", "1g"][int(rng.integers(0, 3))]
        g, pf, vc = (int(x) for x in rng.integers(0, 0x100000, 3))
        lines.append(
            {
                "fault": f"{{ts: {10 * i}, op: fault, vcpu: {vc % 65536}, gfn: {g}, pfn: {pf}, level: {lvl}{priv}}}",
                "unmap": f"{{op: unmap, gfn: {g}, level: {lvl}{priv}}}",
                "split": f"{{ts: {10 * i + 3}, op: split, gfn: {g}{priv}}}",
                "vcpu_create": f"{{op: vcpu_create, vcpu: {vc % 65536}}}",
                "vcpu_destroy": f"{{op: vcpu_destroy, vcpu: {vc % 65536}, pfn: {pf}}}",
            }[op]
        )
    lines.append("{op: vm_destroy}")
    h, ev = read_yaml("r.yaml", text=events_of(*lines))
    b = str(tmp_path / "r.kvmt")
    write_binary(b, h, ev)
    bt = BinaryTrace(b, chunk_events=64)
    back = np.concatenate(list(bt.chunks()))
    y = str(tmp_path / "r2.yaml")
    write_yaml(y, bt.header, back)
    h3, ev3 = read_yaml(y)
    assert ev3.tobytes() == ev.tobytes()
    assert (h3.vm_type, h3.root_level, h3.gfn_limit, h3.host_pfn_limit) == (
        h.vm_type,
        h.root_level,
        h.gfn_limit,
        h.host_pfn_limit,
    )


def test_pure_python_loader_gives_the_same_result(monkeypatch):
    import yaml

    from kvmcache.trace import yamlfmt

    text = events_of("{op: vm_create}", "{ts: 0x10, op: fault, vcpu: 1, gfn: 2, pfn: 3, level: 1g}")
    h1, ev1 = read_yaml("t.yaml", text=text)
    monkeypatch.setattr(yamlfmt, "Loader", yaml.SafeLoader)
    h2, ev2 = read_yaml("t.yaml", text=text)
    assert ev1.tobytes() == ev2.tobytes() and h1 == h2
    assert err(events_of("{op: vm_create}", "{op: nap}")).startswith(
        "t.yaml: event 1 (line 5): op 'nap' is not an event op"
    )


def test_events_before_vm_anchors_aliases_and_merge_keys():
    text = """\
events:
  - &create {ts: 5, op: vm_create}
  - {<<: *create, op: vcpu_create, vcpu: &v 3}
  - {op: fault, vcpu: *v, gfn: 1, pfn: 2, level: 4k}
  - op: unmap
    gfn: 1
    level: 4k
params: {spread: 2}
vm: {type: vmx, root_level: 4, gfn_limit: 16, host_pfn_limit: 16}
kvmcache-trace: 1
"""
    h, ev = read_yaml("t.yaml", text=text)
    assert rows(ev) == [
        (5, 0, 0, 0, 1, 0, 0),
        (5, 0, 0, 3, 3, 0, 0),
        (5, 1, 2, 3, 5, 1, 0),
        (5, 1, 0, 0, 6, 1, 0),
    ]
    assert h.params == {"spread": 2} and h.vm_type == "vmx"
    late = text.replace("gfn: 1, pfn", "gfn: 16, pfn")
    assert err(late) == "t.yaml: event 2 (line 4): gfn 0x10 is out of range (gfn_limit is 0x10)"


def test_structural_yaml_errors():
    dup = HEAD.replace("events:\n", "vm: {}\nevents: []\n")
    assert err(dup) == "t.yaml: line 3: duplicate top-level key 'vm'"
    assert err(HEAD + "  - {op: *nope}\n").startswith(
        "t.yaml: line 4, column 10: invalid YAML: found undefined alias 'nope'"
    )
    two = HEAD.replace("events:\n", "events: []\n") + "---\nx: 1\n"
    assert err(two) == (
        "t.yaml: line 4, column 1: invalid YAML: expected a single document, found another"
    )
    assert err("# only a comment\n") == "t.yaml: empty file, not a kvmcache YAML trace"
    assert err("just text\n").startswith("t.yaml: not a kvmcache YAML trace")
