"""`kvmcache import`: recorded ftrace / trace-cmd / perf text -> events, with exact expectations.

The fixtures in tests/data/import/ are synthetic lines in each producer's exact layout; the
expected events below were worked out by hand from docs/import.md.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import random
import sys

import numpy as np
import pytest
import yaml
from clirun import error_line, run
from conftest import IMPORT_DATA

from kvmcache.importers.mapping import (
    ImportOptions,
    import_text,
)
from kvmcache.importers.sources import import_paths
from kvmcache.importers.text import LineReader
from kvmcache.trace import open_trace
from kvmcache.trace.events import EVENT_DTYPE, OP_FAULT, OP_SPLIT, OP_UNMAP

DATA = IMPORT_DATA
F, U, S = OP_FAULT, OP_UNMAP, OP_SPLIT


def fixture(name: str) -> str:
    return os.path.join(DATA, name)


def lines_of(name: str) -> list[str]:
    with open(fixture(name), encoding="utf-8") as f:
        return f.readlines()


def rows(events: np.ndarray) -> list[tuple[int, ...]]:
    """(ts, op, vcpu, gfn, pfn, level, flags) per event, plain ints."""
    return [
        (
            int(e["ts"]),
            int(e["op"]),
            int(e["vcpu"]),
            int(e["gfn"]),
            int(e["pfn"]),
            int(e["level"]),
            int(e["flags"]),
        )
        for e in events
    ]


def accounted(stats) -> None:
    """Every line read falls in exactly one class of docs/import.md section 2."""
    assert stats.accounted == stats.lines


# --- fixtures, one per producer ----------------------------------------------------------------


def test_ftrace_fixture_exact():
    header, events, st = import_text(lines_of("ftrace_tdp_mmu.txt"))
    us = 1000
    base = 100_000_000_000
    assert rows(events) == [
        # the 1 GiB fault of CPU 2/KVM (thread 5002 learned vCPU 2 on the line before it in
        # the file, although its timestamp is later): pfn 1ffc0123 aligned to 1ffc0000
        (base + 150 * us, F, 2, 0x3FFFF, 0x1FFC0000, 3, 0),
        (base + 220 * us, F, 0, 0x123, 0x45123, 1, 0),
        # qemu-system-x86-5003 (comm with dashes) is vCPU 1; 2 MiB pfn 80555 -> 80400
        (base + 310 * us, F, 1, 0x400, 0x80400, 2, 0),
        (base + 400 * us, U, 0, 0x123, 0, 1, 0),  # wrapped line: new_spte 0 on the next line
        (base + 501 * us, U, 0, 0x400, 0, 2, 0),  # table zap child (5a0) of a present 2M leaf
        (base + 600 * us, S, 0, 0x600, 0, 2, 0),  # errno 0; the errno -12 split maps to nothing
        (base + 800 * us, F, 0, 0x1000, 0x70000, 1, 0),  # no FLAGS column
        (base + 900 * us, F, 0, 0x1001, 0x70001, 1, 0),  # <...>-5001 is CPU 0/KVM-5001
        (base + 1000 * us, F, 3, 0x2000, 0x2000, 1, 0),  # never showed a vCPU: next free index
    ]
    assert header.vm_type == "vmx" and header.root_level == 4
    assert header.gfn_limit == 0x40000  # the 1 GiB leaf at 0..0x3ffff
    assert header.host_pfn_limit == 0x20000000  # 0x1ffc0000 + 512*512
    assert st.producer == "ftrace"
    assert st.vcpu_map == {
        "CPU 0/KVM-5001": 0,
        "qemu-system-x86-5003": 1,
        "CPU 2/KVM-5002": 2,
        "vmm-worker-5020": 3,
    }
    assert st.lines == 40
    assert st.skipped == {
        "unknown event": 3,  # sched_wakeup, kvm_mmu_prepare_zap_page, kvm_mmu_set_spte
        "unparseable": 1,  # gfn zz
        "stack trace": 3,  # <stack trace> and two => lines
        "wrapped/continuation": 1,
        "header/comment": 13,  # 12 # lines and the ... elision
    }
    # 4 lines teach a vCPU, plus the new-format kvm_page_fault (faults come from kvmmmu)
    assert st.vcpu_lines == 5
    assert st.event_lines == 9
    # table pointer (level 3), old_spte 0, as id 1, leaf -> present leaf; failed split
    assert st.no_event == {"kvm_tdp_mmu_spte_changed": 4, "kvm_mmu_split_huge_page": 1}
    assert st.events == {"fault": 6, "unmap": 2, "split": 1}
    accounted(st)


def test_tracecmd_plugin_fixture_exact():
    header, events, st = import_text(lines_of("tracecmd_plugin.txt"))
    base = 200_000_000_000
    assert rows(events) == [
        # "CPU-7002" (trace-cmd cut the comm at the blank); 9-digit fractions
        (base + 250_500, F, 1, 0x84D, 0x100B4A00, 2, 0),
        (base + 500_000, F, 0, 0x2594, 0x8BE2594, 1, 0),
        (base + 700_000, U, 0, 0x2594, 0, 1, 0),  # new_spte 8000000000000000
        (base + 800_000, S, 0, 0x800, 0, 2, 0),
        (base + 900_000, U, 0, 0x800, 0, 2, 0),  # removed-table marker with bit 63
    ]
    assert st.producer == "trace-cmd"
    assert (header.gfn_limit, header.host_pfn_limit) == (0x2600, 0x100B4C00)
    assert st.vcpu_map == {"CPU 0/KVM-7001": 0, "CPU-7002": 1}
    # the plugin's kvm_exit (no vcpu), kvm_mmu_get_page, kvm_mmu_prepare_zap_page, set_spte
    assert st.skipped["unknown event"] == 5
    assert st.skipped["header/comment"] == 3  # cpus=4 and two "CPU N is empty"
    assert st.no_event == {"kvm_page_fault": 1}  # old format, faults come from kvmmmu
    assert st.vcpu_lines == 2
    accounted(st)


def test_perf_script_fixture_exact():
    header, events, st = import_text(lines_of("perf_script.txt"))
    base = 300_000_000_000
    assert rows(events) == [
        (base + 200_000, F, 0, 0x100, 0x5100, 1, 0),
        (base + 250_000, S, 0, 0x200, 0, 2, 0),
        (base + 300_000, U, 0, 0x100, 0, 1, 0),
    ]
    assert st.producer == "perf-script"
    assert st.vcpu_map == {"CPU 0/KVM-9001": 0, "qemu-system-x86-9002": 1}
    assert st.skipped["unknown event"] == 2  # kvm_userspace_exit, sched:sched_switch
    assert (header.gfn_limit, header.host_pfn_limit) == (0x400, 0x5200)
    accounted(st)


def test_perf_script_without_comm_and_tid():
    _, events, st = import_text(lines_of("perf_script_fields.txt"))
    assert rows(events) == [
        (770_850_290_456, F, 3, 0x10, 0x20, 1, 0),  # [001] learned vcpu 3 from kvm_entry
        (770_850_291_000, F, 0, 0x11, 0x21, 1, 0),  # [000] never showed one: lowest free
        (770_850_293_000, F, 4, 0x12, 0x22, 1, 0),  # PID/TID: the TID
    ]
    assert st.vcpu_map == {"<cpu 1>": 3, "<cpu 0>": 0, "<...>-9011": 4}
    accounted(st)


# --- kvm_page_fault fallback and --pfn-map ------------------------------------------------------

FALLBACK_TS = [86_581_930_000, 86_581_940_000, 86_582_600_000, 86_583_000_000, 86_583_200_000]
FALLBACK_VCPU = [5, 7, 5, 0, 0]
FALLBACK_GFN = [0x113600, 0x113674, 0xFEE00, 0x1137FF, 0x84D]


def splitmix64_ref(x: int) -> int:
    """Reference SplitMix64 finaliser in plain Python integers."""
    m = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


@pytest.mark.parametrize(
    "pfn_map, pfns",
    [
        ("identity", FALLBACK_GFN),
        # guest 2M regions 0x89b, 0x7f7, 0x4 get host regions 0, 1, 2 in order of first touch
        ("hugepage", [0x0, 0x74, 0x200, 0x1FF, 0x44D]),
        (
            "random",
            [splitmix64_ref(g ^ 0x6B766D6361636865) % (4 * 0x113800) for g in FALLBACK_GFN],
        ),
    ],
)
def test_page_fault_fallback(pfn_map, pfns):
    header, events, st = import_text(
        lines_of("ftrace_page_fault_only.txt"), ImportOptions(pfn_map=pfn_map)
    )
    assert st.faults_from == "kvm_page_fault"
    assert rows(events) == [
        (ts, F, v, g, p, 1, 0)
        for ts, v, g, p in zip(FALLBACK_TS, FALLBACK_VCPU, FALLBACK_GFN, pfns, strict=True)
    ]
    assert header.gfn_limit == 0x113800
    assert header.host_pfn_limit == (max(pfns) + 1 + 511) // 512 * 512
    # VCPU-0-61883 only has old-format records: it gets the lowest index no thread showed
    assert st.vcpu_map == {"CPU 5/KVM-4145": 5, "CPU 7/KVM-4150": 7, "VCPU-0-61883": 0}
    assert st.event_lines == 5 and st.vcpu_lines == 1
    assert st.skipped["unknown event"] == 1  # the plugin-style kvm_exit without vcpu
    accounted(st)


def test_hugepage_map_runs_out_of_host_memory():
    opts = ImportOptions(pfn_map="hugepage", host_pfn_limit=1024)  # two host 2M regions
    with pytest.raises(Exception, match=r"<text>:8: --pfn-map hugepage needs more than the 2"):
        import_text(lines_of("ftrace_page_fault_only.txt"), opts)


# --- e-mail wrapping ----------------------------------------------------------------------------


def test_email_wrapped_fixture():
    _, events, st = import_text(lines_of("ftrace_email_wrapped.txt"))
    base = 5_000_000_000_000
    assert rows(events) == [
        (base + 2000, F, 1, 0x84D, 0x100B4A00, 2, 0),  # header wrapped after its timestamp
        (base + 4000, U, 0, 0x801, 0, 1, 0),
        (base + 6000, S, 0, 0xA00, 0, 2, 0),
        (base + 7000, U, 0, 0xA00, 0, 2, 0),
    ]
    assert st.skipped["wrapped/continuation"] == 12
    assert st.vcpu_lines == 1  # the wrapped kvm_exit still teaches vCPU 1
    assert st.lines == 19
    accounted(st)


def test_wrapped_line_joins_with_one_blank_and_keeps_trailing_fields():
    text = [
        " qemu-9 [001] ..... 7.000001: kvm_mmu_spte_requested: gfn 10 pfn\n",
        "   20 level 1 extra 5\n",  # newer kernels may append fields
    ]
    _, events, st = import_text(text)
    assert rows(events) == [(7_000_001_000, F, 0, 0x10, 0x20, 1, 0)]
    assert st.skipped["wrapped/continuation"] == 1


# --- round trip -----------------------------------------------------------------------------------


def render_ftrace(events: list[dict], shared_bit: int | None = None) -> list[str]:
    """Render events as raw ftrace text: kvm_entry + kvm_mmu_spte_requested for a fault,
    kvm_tdp_mmu_spte_changed for an unmap, kvm_mmu_split_huge_page for a split."""
    out = ["# tracer: nop\n", "#\n"]
    bit = 0 if shared_bit is None else 1 << (shared_bit - 12)

    def head(ts: int, comm: str, pid: int, cpu: int) -> str:
        return f"{comm:>16}-{pid:<7} [{cpu:03d}] d.... {ts // 10**9:5d}.{ts % 10**9:09d}: "

    for e in events:
        gfn = e["gfn"] | (0 if e["private"] else bit)
        span = 512 ** (e["level"] - 1)
        if e["op"] == "fault":
            v = e["vcpu"]
            h = head(e["ts"], f"CPU {v}/KVM", 4000 + v, v)
            out.append(h + f"kvm_entry: vcpu {v}, rip 0xffffffff81000000\n")
            # the kernel prints the pfn of the faulting 4K page inside a huge leaf
            pfn = e["pfn"] + (e["gfn"] & (span - 1))
            out.append(h + f"kvm_mmu_spte_requested: gfn {gfn:x} pfn {pfn:x} level {e['level']}\n")
        elif e["op"] == "unmap":
            spte = (e["pfn"] << 12) | (0xB77 if e["level"] == 1 else 0xBF3)
            h = head(e["ts"], "qemu-system-x86", 3999, 7)
            out.append(
                h + f"kvm_tdp_mmu_spte_changed: as id 0 gfn {gfn:x} level {e['level']} "
                f"old_spte {spte:x} new_spte {'5a0' if e['ts'] % 2 else '0'}\n"
            )
        else:
            h = head(e["ts"], "kvm-nx-lpage-re", 3998, 6)
            out.append(
                h + f"kvm_mmu_split_huge_page: gfn {gfn:x} spte {(e['pfn'] << 12) | 0xBF3:x} "
                "level 2 errno 0\n"
            )
    return out


def synthetic_events(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    ts = 1_000_000_000_000
    events = []
    for _ in range(n):
        ts += rng.randrange(1, 5000)
        op = rng.choice(["fault", "fault", "fault", "unmap", "split"])
        level = rng.choice([1, 1, 2, 3]) if op != "split" else 2
        span = 512 ** (level - 1)
        gfn = rng.randrange(1 << 30)
        if op != "fault":
            gfn -= gfn % span
        pfn = rng.randrange(1 << 32) // span * span
        events.append(
            {
                "ts": ts,
                "op": op,
                "vcpu": rng.randrange(4) if op == "fault" else 0,
                "gfn": gfn,
                "pfn": pfn if op == "fault" else 0,
                "level": level,
                "private": rng.random() < 0.5,
            }
        )
    return events


def expected_array(events: list[dict], private: bool) -> list[tuple[int, ...]]:
    code = {"fault": F, "unmap": U, "split": S}
    return [
        (
            e["ts"],
            code[e["op"]],
            e["vcpu"],
            e["gfn"],
            e["pfn"],
            e["level"],
            int(private and e["private"]),
        )
        for e in events
    ]


def test_round_trip_vmx():
    events = synthetic_events(400, seed=7)
    header, got, st = import_text(render_ftrace(events))
    assert rows(got) == expected_array(events, private=False)
    assert header.vm_type == "vmx"
    assert st.events["fault"] == sum(e["op"] == "fault" for e in events)
    accounted(st)


@pytest.mark.parametrize("bit", [47, 51])
def test_round_trip_shared_bit(bit):
    events = synthetic_events(300, seed=bit)
    header, got, st = import_text(
        render_ftrace(events, shared_bit=bit), ImportOptions(shared_bit=bit)
    )
    assert rows(got) == expected_array(events, private=True)
    assert header.vm_type == "tdx"


# --- private / shared / VM type -------------------------------------------------------------------

TDX_LINES = [
    "  CPU 0/KVM-1 [000] .....  1.000001: kvm_mmu_spte_requested: gfn 8000000123 pfn 77 level 1\n",
    "  CPU 0/KVM-1 [000] .....  1.000002: kvm_mmu_spte_requested: gfn 124 pfn 78 level 1\n",
    "  CPU 0/KVM-1 [000] .....  1.000003: kvm_tdp_mmu_spte_changed: as id 0 gfn 8000000123 level 1 old_spte 77b77 new_spte 0\n",
    "  CPU 0/KVM-1 [000] .....  1.000004: kvm_mmu_split_huge_page: gfn 800000000 spte 1bf3 level 2 errno 0\n",
]


def test_shared_bit_51_strips_and_marks_private():
    header, events, _ = import_text(TDX_LINES, ImportOptions(shared_bit=51))
    assert header.vm_type == "tdx"
    assert [(int(e["gfn"]), int(e["flags"])) for e in events] == [
        (0x123, 0),  # gfn bit 39 set: shared, stripped
        (0x124, 1),
        (0x123, 0),
        (0x800000000, 1),  # bit 35 is not the shared bit here
    ]


def test_shared_bit_47():
    _, events, _ = import_text(TDX_LINES, ImportOptions(shared_bit=47))
    assert [(int(e["gfn"]), int(e["flags"])) for e in events] == [
        (0x8000000123, 1),
        (0x124, 1),
        (0x8000000123, 1),
        (0x0, 0),  # gfn bit 35 set: shared, stripped
    ]


def test_as_tdx_and_defaults_and_vm_override():
    h, ev, _ = import_text(TDX_LINES, ImportOptions(as_tdx=True))
    assert h.vm_type == "tdx" and ev["flags"].tolist() == [1, 1, 1, 1]
    assert int(ev["gfn"][0]) == 0x8000000123  # nothing stripped without --shared-bit
    h, ev, _ = import_text(TDX_LINES)
    assert h.vm_type == "vmx" and ev["flags"].tolist() == [0, 0, 0, 0]
    h, ev, _ = import_text(TDX_LINES, ImportOptions(vm="tdx"))
    assert h.vm_type == "tdx" and ev["flags"].tolist() == [0, 0, 0, 0]
    h, ev, _ = import_text(TDX_LINES, ImportOptions(shared_bit=51, vm="vmx"))
    assert h.vm_type == "vmx" and ev["flags"].tolist() == [0, 0, 0, 0]
    assert int(ev["gfn"][0]) == 0x123
    h, _, _ = import_text(TDX_LINES, ImportOptions(root_level=5))
    assert h.root_level == 5


def test_as_tdx_conflicts_are_usage_errors(capsys, tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("".join(TDX_LINES))
    out = str(tmp_path / "o.kvmt")
    code, _, err = run(capsys, "import", str(src), "-o", out, "--as-tdx", "--shared-bit", "51")
    assert code == 2 and "--as-tdx and --shared-bit exclude each other" in error_line(err)
    code, _, err = run(capsys, "import", str(src), "-o", out, "--as-tdx", "--vm", "vmx")
    assert code == 2 and "contradicts --vm vmx" in error_line(err)
    assert not os.path.exists(out)


# --- lines: skip reasons, timestamps, headers ---------------------------------------------------

REC = "  CPU 0/KVM-1 [000] .....  1.000001: kvm_mmu_spte_requested: gfn 10 pfn 20 level 1\n"


def stats_of(text: list[str], **kw):
    _, events, st = import_text(text, ImportOptions(**kw))
    accounted(st)
    return events, st


def test_skip_unknown_event():
    _, st = stats_of(
        [
            "  <idle>-0 [001] d.h.. 1.000000: sched_wakeup: comm=foo pid=3\n",
            "  CPU 0/KVM-1 [000] .....  1.000001: kvm_cr: cr_write 0 = 0x80050033\n",
            "  CPU 0/KVM-1 [000] .....  1.000002: kvm_exit: reason HLT rip 0x1 info 0 0\n",
            "  bash-7 [001] .... 1.000003: do_sys_open <-do_syscall_64\n",
            REC,
        ]
    )
    assert st.skipped["unknown event"] == 4 and st.event_lines == 1


def test_skip_unparseable():
    events, st = stats_of(
        [
            "garbage before any record\n",
            "  CPU 0/KVM-1 [000] .....  1.000001: kvm_mmu_spte_requested: gfn 10 pfn 20\n",
            "  CPU 0/KVM-1 [000] .....  1.000002: kvm_mmu_spte_requested: gfn 10 pfn 20 level 4\n",
            "  CPU 0/KVM-1 [000] .....  1.0000000001: kvm_mmu_spte_requested: gfn 10 pfn 20 level 1\n",
            "  CPU 0/KVM-1 [000] .....  1.000003: kvm_entry: vcpu 70000, rip 0x1\n",
            "  CPU 0/KVM-1 [000] .....  1.000004: kvm_tdp_mmu_spte_changed: as id 0 gfn 1 level 1\n",
            "  CPU 0/KVM-1 [000] .....  1.000005: kvm_mmu_spte_requested: gfn 1ffffffffffffffff pfn 20 level 1\n",
            REC,
        ]
    )
    assert st.skipped["unparseable"] == 7 and len(events) == 1


def test_skip_stack_trace():
    _, st = stats_of(
        [
            REC,
            "  CPU 0/KVM-1 [000] .....  1.000002: <stack trace>\n",
            " => kvm_tdp_mmu_map\n",
            " => kvm_mmu_page_fault\n",
            "  qemu-kvm-2 [001] .....  1.000003: <user stack trace>\n",
            "  CPU 0/KVM-1 [000]  1.000004: kernel_stack:         <stack trace >\n",
            "=> kvm_arch_vcpu_ioctl_run (ffffffffc0a1b2c3)\n",
            "\t    ffffffff810551b8 kvm_mmu_page_fault+0x18 ([kernel.kallsyms])\n",
        ]
    )
    assert st.skipped["stack trace"] == 7 and st.event_lines == 1


def test_skip_continuation():
    events, st = stats_of(
        [
            "  CPU 0/KVM-1 [000] .....  1.000001: kvm_mmu_spte_requested: gfn 10\n",
            "pfn 20\n",
            "level 1\n",
            "  <idle>-0 [001] d.h.. 1.000002: sched_wakeup: comm=foo pid=3\n",
            "target_cpu=001\n",  # continues a record of another event: skipped with it
        ]
    )
    assert st.skipped["wrapped/continuation"] == 3 and len(events) == 1
    assert st.skipped["unparseable"] == 0


def test_skip_header_comment():
    _, st = stats_of(
        [
            "cpus=4\n",
            "version = 6\n",
            "# tracer: nop\n",
            "\n",
            REC,
            "--\n",
            "...\n",
            "[...]\n",
            "CPU 3 is empty\n",
            "CPU:2 [LOST 120 EVENTS]\n",
        ]
    )
    assert st.skipped["header/comment"] == 9 and st.event_lines == 1
    assert st.lost_markers == 1 and any("lost events" in w for w in st.warnings)


def test_comment_ends_a_record_so_later_text_is_unparseable():
    _, st = stats_of([REC, "# note\n", "orphan text\n"])
    assert st.skipped["unparseable"] == 1 and st.skipped["wrapped/continuation"] == 0


@pytest.mark.parametrize(
    "stamp, ns",
    [("12.34567", 12_345_670_000), ("12.345678", 12_345_678_000), ("12.345678901", 12_345_678_901)],
)
def test_timestamps_exact(stamp, ns):
    line = f"  CPU 0/KVM-1 [000] .....  {stamp}: kvm_mmu_spte_requested: gfn 10 pfn 20 level 1\n"
    events, _ = stats_of([line])
    assert int(events["ts"][0]) == ns


def test_stable_sort_across_cpus():
    text = [
        "  CPU 1/KVM-2 [001] ..... 5.000002: kvm_entry: vcpu 1, rip 0x1\n",
        "  CPU 1/KVM-2 [001] ..... 5.000002: kvm_mmu_spte_requested: gfn 1 pfn 1 level 1\n",
        "  CPU 0/KVM-1 [000] ..... 5.000001: kvm_entry: vcpu 0, rip 0x1\n",
        "  CPU 0/KVM-1 [000] ..... 5.000001: kvm_mmu_spte_requested: gfn 2 pfn 2 level 1\n",
        "  CPU 0/KVM-1 [000] ..... 5.000002: kvm_mmu_spte_requested: gfn 3 pfn 3 level 1\n",
    ]
    events, _ = stats_of(text)
    assert [(int(e["gfn"]), int(e["vcpu"])) for e in events] == [(2, 0), (1, 1), (3, 0)]


def test_header_variants():
    text = [
        # (TGID) column, FLAGS absent, comm with digits after a dash
        "  foo-12-345 ( 340) [002] 9.000001: kvm_entry: vcpu 6, rip 0x1\n",
        "  foo-12-345 (-----) [002] 9.000002: kvm_mmu_spte_requested: gfn 5 pfn 6 level 1\n",
        # 4-character FLAGS (older kernels)
        "  bar-7 [003] d..1 9.000003: kvm_entry: vcpu 2, rip 0x1\n",
        "  bar-7 [003] ...1 9.000004: kvm_mmu_spte_requested: gfn 7 pfn 8 level 1\n",
    ]
    events, st = stats_of(text)
    assert [(int(e["vcpu"]), int(e["gfn"])) for e in events] == [(6, 5), (2, 7)]
    assert st.vcpu_map == {"foo-12-345": 6, "bar-7": 2}


def test_thread_vcpu_before_first_sight_and_change():
    text = [
        "  w-1 [000] ..... 1.000001: kvm_mmu_spte_requested: gfn 1 pfn 1 level 1\n",
        "  w-1 [000] ..... 1.000002: kvm_entry: vcpu 4, rip 0x1\n",
        "  w-1 [000] ..... 1.000003: kvm_mmu_spte_requested: gfn 2 pfn 2 level 1\n",
        "  w-1 [000] ..... 1.000004: kvm_exit: vcpu 9 reason HLT rip 0x1 info1 0x0\n",
        "  w-1 [000] ..... 1.000005: kvm_mmu_spte_requested: gfn 3 pfn 3 level 1\n",
    ]
    events, st = stats_of(text)
    assert events["vcpu"].tolist() == [4, 4, 9]
    assert st.vcpu_map == {"w-1": 4}
    assert any("more than one vCPU" in w for w in st.warnings)


def test_strict_reader_names_the_line():
    reader = LineReader(strict=True, source="x.txt")
    with pytest.raises(Exception, match=r"^x\.txt:2: unparseable line \(not a trace record\)"):
        list(reader.records(["# c\n", "bad\n"]))


# --- the command ------------------------------------------------------------------------------


def test_cli_writes_trace_sidecar_and_summary(capsys, tmp_path):
    out = str(tmp_path / "t.kvmt")
    code, stdout, err = run(capsys, "import", fixture("ftrace_tdp_mmu.txt"), "-o", out)
    assert code == 0 and stdout == ""
    assert "40 lines read" in err and "(ftrace)" in err
    assert "events: fault 6, unmap 2, split 1" in err
    assert (
        "lines skipped: unknown event 3, unparseable 1, stack trace 3, "
        "wrapped/continuation 1, header/comment 13" in err
    )
    assert "vCPUs found: 4" in err
    trace = open_trace(out)
    got = np.concatenate(list(trace.chunks()))
    _, expected, _ = import_text(lines_of("ftrace_tdp_mmu.txt"))
    assert got.dtype == EVENT_DTYPE and rows(got) == rows(expected)
    assert trace.header.gfn_limit == 0x40000 and trace.header.complete
    with open(out + ".import.yaml", encoding="utf-8") as f:
        side = yaml.safe_load(f)
    assert side == {
        "source": [fixture("ftrace_tdp_mmu.txt")],
        "producer": "ftrace",
        "vcpu_map": {
            "CPU 0/KVM-5001": 0,
            "qemu-system-x86-5003": 1,
            "CPU 2/KVM-5002": 2,
            "vmm-worker-5020": 3,
        },
    }
    # refuses to overwrite without --force
    code, _, err = run(capsys, "import", fixture("perf_script.txt"), "-o", out)
    assert code == 2 and "already exists; use --force" in error_line(err)
    code, _, err = run(capsys, "import", fixture("perf_script.txt"), "-o", out, "--force")
    assert code == 0
    assert len(np.concatenate(list(open_trace(out).chunks()))) == 3


def test_cli_several_inputs_merge_sorted(capsys, tmp_path):
    # one recording cut in two files, given in the wrong order: merged by time
    lines = lines_of("tracecmd_plugin.txt")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("".join(lines[:9]))
    b.write_text("".join(lines[9:]))
    out = str(tmp_path / "m.kvmt")
    code, _, err = run(capsys, "import", str(b), str(a), "-o", out)
    assert code == 0 and "VMs" not in err
    got = np.concatenate(list(open_trace(out).chunks()))
    assert len(got) == 5 and np.all(np.diff(got["ts"].astype(np.int64)) >= 0)
    assert int(got["ts"][0]) == 200_000_250_500  # from b.txt although given first


def test_cli_two_recordings_of_two_vms(capsys, tmp_path):
    """Two recordings whose threads both claim vCPU 0 are two VMs: one is imported."""
    out = str(tmp_path / "m.kvmt")
    both = [fixture("perf_script.txt"), fixture("tracecmd_plugin.txt")]
    code, _, err = run(capsys, "import", *both, "-o", out)
    assert code == 0 and "(perf-script, trace-cmd)" in err
    assert (
        "VMs (VMM processes): threads 7001..7002: 2 fault(s), imported; threads 9001..9002: "
        "1 fault(s)" in err
    )
    got = np.concatenate(list(open_trace(out).chunks()))
    assert len(got) == 5 and int(got["ts"][0]) == 200_000_250_500
    code, _, err = run(capsys, "import", *both, "-o", out, "--force", "--vm", "9002")
    assert code == 0 and "other VM 5" in err
    got = np.concatenate(list(open_trace(out).chunks()))
    assert len(got) == 3 and int(got["ts"][0]) == 300_000_200_000


def test_cli_strict(capsys, tmp_path):
    out = str(tmp_path / "s.kvmt")
    code, _, err = run(capsys, "import", fixture("ftrace_tdp_mmu.txt"), "-o", out, "--strict")
    assert code == 2
    msg = error_line(err)
    assert msg.startswith(fixture("ftrace_tdp_mmu.txt") + ":40: unparseable kvm_mmu_spte_requested")
    assert not os.path.exists(out)


def test_cli_limits(capsys, tmp_path):
    out = str(tmp_path / "l.kvmt")
    src = fixture("perf_script.txt")

    def imp(guest: str, host: str | None = None) -> tuple[int, str, str]:
        sizes = ["--guest-memory", guest] + (["--host-memory", host] if host else [])
        return run(capsys, "import", src, "-o", out, *sizes)

    code, _, err = imp("1MiB", "1GiB")
    assert code == 2
    assert error_line(err) == (
        f"{src}:2: fault gfn 0x100 is beyond --guest-memory (gfn_limit 0x100)"
    )
    code, _, err = imp("16MiB", "64K")
    assert code == 2
    assert error_line(err) == (
        f"{src}:2: fault pfn 0x5100 is beyond --host-memory (host_pfn_limit 0x10)"
    )
    code, _, err = imp("16MiB", "1GiB")
    assert code == 0
    h = open_trace(out).header
    assert (h.gfn_limit, h.host_pfn_limit) == (4096, 262144)
    code, _, err = imp("lots")
    assert code == 2 and "--guest-memory 'lots' is not a size" in error_line(err)


@pytest.mark.parametrize(
    "suffix, compress",
    [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)],
)
def test_cli_compressed_input(capsys, tmp_path, suffix, compress):
    raw = open(fixture("tracecmd_plugin.txt"), "rb").read()
    src = tmp_path / ("trace.txt" + suffix)
    src.write_bytes(compress(raw))
    out = str(tmp_path / "c.kvmt")
    code, _, _ = run(capsys, "import", str(src), "-o", out)
    assert code == 0
    _, expected, _ = import_text(lines_of("tracecmd_plugin.txt"))
    assert rows(np.concatenate(list(open_trace(out).chunks()))) == rows(expected)


def test_cli_zstd(capsys, tmp_path, monkeypatch):
    src = tmp_path / "trace.txt.zst"
    zstandard = pytest.importorskip("zstandard")
    src.write_bytes(
        zstandard.ZstdCompressor().compress(open(fixture("perf_script.txt"), "rb").read())
    )
    code, _, _ = run(capsys, "import", str(src), "-o", str(tmp_path / "z.kvmt"))
    assert code == 0


def test_cli_zstd_without_module(capsys, tmp_path, monkeypatch):
    src = tmp_path / "trace.txt.zst"
    src.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 16)
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard -> ImportError
    code, _, err = run(capsys, "import", str(src), "-o", str(tmp_path / "z.kvmt"))
    assert code == 2
    assert "zstd-compressed input needs the Python module 'zstandard'" in error_line(err)


def test_cli_stdin(capsys, tmp_path, monkeypatch):
    data = gzip.compress(open(fixture("perf_script.txt"), "rb").read())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    out = str(tmp_path / "i.kvmt")
    code, _, err = run(capsys, "import", "-", "-o", out)
    assert code == 0 and "7 lines read" in err
    with open(out + ".import.yaml", encoding="utf-8") as f:
        assert yaml.safe_load(f)["source"] == ["<stdin>"]


@pytest.mark.parametrize(
    "magic, program",
    [(b"\x17\x08\x44tracing6\0", "trace-cmd"), (b"PERFILE2" + b"\0" * 8, "perf")],
)
def test_cli_binary_recording_without_program(capsys, tmp_path, monkeypatch, magic, program):
    rec = tmp_path / "rec.dat"
    rec.write_bytes(magic + b"\0" * 64)
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    code, _, err = run(capsys, "import", str(rec), "-o", str(tmp_path / "b.kvmt"))
    assert code == 2
    msg = error_line(err)
    assert f"{program} is not on PATH: install {program}" in msg and str(rec) in msg


def fake_program(bindir, name: str, body: str) -> None:
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_cli_binary_recording_runs_program(capsys, tmp_path, monkeypatch):
    rec = tmp_path / "trace.dat"
    rec.write_bytes(b"\x17\x08\x44tracing6\0" + b"\0" * 64)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "args"
    fake_program(
        bindir,
        "trace-cmd",
        f'echo "$@" > {log}\n/bin/cat {fixture("tracecmd_plugin.txt")}\n',
    )
    monkeypatch.setenv("PATH", str(bindir))
    out = str(tmp_path / "r.kvmt")
    code, _, err = run(capsys, "import", str(rec), "-o", out)
    assert code == 0, err
    assert log.read_text().split() == ["report", "-i", str(rec)]
    assert "(trace-cmd)" in err
    _, expected, _ = import_text(lines_of("tracecmd_plugin.txt"))
    assert rows(np.concatenate(list(open_trace(out).chunks()))) == rows(expected)


def test_cli_binary_recording_program_fails(capsys, tmp_path, monkeypatch):
    rec = tmp_path / "perf.data"
    rec.write_bytes(b"PERFILE2" + b"\0" * 64)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_program(bindir, "perf", "echo 'incompatible file format' >&2\nexit 3\n")
    monkeypatch.setenv("PATH", str(bindir))
    code, _, err = run(capsys, "import", str(rec), "-o", str(tmp_path / "p.kvmt"))
    assert code == 2
    assert error_line(err) == (
        f"{rec}: `perf script -i {rec}` failed (exit 3): incompatible file format"
    )


def test_import_paths_missing_file(tmp_path):
    with pytest.raises(Exception, match="no such file"):
        import_paths([str(tmp_path / "nope.txt")])


def test_cli_binary_recording_on_stdin_is_spooled(capsys, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "args"
    fake_program(bindir, "perf", f'echo "$@" > {log}\n/bin/cat {fixture("perf_script.txt")}\n')
    monkeypatch.setenv("PATH", str(bindir))
    data = gzip.compress(b"PERFILE2" + b"\0" * 64)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, _, err = run(capsys, "import", "-", "-o", str(tmp_path / "s.kvmt"))
    assert code == 0, err
    args = log.read_text().split()
    assert args[:2] == ["script", "-i"] and args[2] != "-" and not os.path.exists(args[2])
    assert "events: fault 1, unmap 1, split 1" in err


def test_cli_stdin_only_once(capsys, tmp_path):
    code, _, err = run(capsys, "import", "-", "-", "-o", str(tmp_path / "x.kvmt"))
    assert code == 2 and "only once" in error_line(err)


def test_forced_format():
    _, events, st = import_text(lines_of("perf_script.txt"), ImportOptions(format="perf-script"))
    assert len(events) == 3 and st.producer == "perf-script"
    # perf text read as ftrace: no record has a COMM-PID column, none is mapped
    _, events, st = import_text(lines_of("perf_script.txt"), ImportOptions(format="ftrace"))
    assert len(events) == 0 and st.event_lines == 0
    assert st.skipped["unknown event"] == 7
    accounted(st)
    _, events, st = import_text(lines_of("tracecmd_plugin.txt"), ImportOptions(format="ftrace"))
    assert len(events) == 5 and st.producer == "ftrace"


@pytest.mark.parametrize(
    "content, match",
    [
        (b"\0" * 100_000, "binary data (NUL bytes)"),
        (b"x" * (17 << 20), "a line longer than 16 MiB"),
    ],
)
def test_binary_junk_and_endless_lines_are_refused(capsys, tmp_path, content, match):
    """Neither is held in memory while waiting for a line end (/dev/zero once grew to GBs)."""
    src = tmp_path / "junk.txt"
    src.write_bytes(content)
    code, _, err = run(capsys, "import", str(src), "-o", str(tmp_path / "o.kvmt"))
    assert code == 2 and match in error_line(err)
    assert os.listdir(tmp_path) == ["junk.txt"]
