"""Recordings in the shapes people post them (issue #18): partial kvmmmu, quoted-printable
mail, addresses far above RAM, glued snippets and several VMs, MMIO in a TD, empty results.

Every text here is written for the test in the layout of a real producer; the expected values
are counted by hand from the text and docs/import.md.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from clirun import run

from kvmcache.importers.mapping import Importer, ImportOptions, import_text
from kvmcache.trace.events import FLAG_PRIVATE, OP_FAULT


def _rows(events: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """(ts, vcpu, gfn, level, flags) of each fault."""
    return [
        (int(e["ts"]), int(e["vcpu"]), int(e["gfn"]), int(e["level"]), int(e["flags"]))
        for e in events
        if e["op"] == OP_FAULT
    ]


def _both_lanes(text: str, opts: ImportOptions | None = None):
    """Import ``text`` through the Python lane and the fast lane; both must agree."""
    data = text.encode()
    results = []
    for fast in (False, True):
        imp = Importer(ImportOptions(**(opts or ImportOptions()).__dict__))
        imp.feed_stream(io.BytesIO(data), "t", fast=fast)
        header, events, st = imp.finish()
        stats = dict(st.__dict__)
        stats.pop("seconds")
        results.append((header, events.tobytes(), stats))
    assert results[0] == results[1]
    return import_text(io.StringIO(text), opts)


# --- 1. kvmmmu only partly enabled ---------------------------------------------------------------

PARTIAL_KVMMMU = """\
# tracer: nop
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
       CPU 0/KVM-7001    [003] d....   512.100001: kvm_exit: vcpu 0 reason EPT_VIOLATION rip 0xffffffff81234567 info1 0x0000000000000181 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000
       CPU 0/KVM-7001    [003] .....   512.100004: kvm_page_fault: vcpu 0 rip 0xffffffff81234567 address 0x0000000004a2c000 error_code 0x181
       CPU 0/KVM-7001    [003] .....   512.100009: fast_page_fault: vcpu 0 gva 4a2c000 error_code F|U sptep 00000000a1b2c3d4 old 0x0 new 0 spurious 0 fixed 0
       CPU 0/KVM-7001    [003] .....   512.100015: kvm_mmu_set_spte: gfn 4a2c spte 6000004a2c0b77 (rwxu) level 1 at 41a2b3c4
       CPU 1/KVM-7002    [005] d....   512.100101: kvm_exit: vcpu 1 reason EPT_VIOLATION rip 0xffffffff81000aaa info1 0x0000000000000182 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000
       CPU 1/KVM-7002    [005] .....   512.100103: kvm_page_fault: vcpu 1 rip 0xffffffff81000aaa address 0x0000000004a2c010 error_code 0x182
       CPU 1/KVM-7002    [005] .....   512.100105: fast_page_fault: vcpu 1 gva 4a2c010 error_code F|W sptep 00000000a1b2c3d4 old 0x6000004a2c0b75 new 6000004a2c0b77 spurious 0 fixed 1
       CPU 1/KVM-7002    [005] .....   512.100120: kvm_tdp_mmu_spte_changed: as id 0 gfn 4a2c level 1 old_spte 6000004a2c0b77 new_spte 6000004a2c0b75
       CPU 0/KVM-7001    [003] .....   512.100200: kvm_page_fault: vcpu 0 rip 0xffffffff81234600 address 0x0000000007f00000 error_code 0x183
       CPU 0/KVM-7001    [003] .....   512.100201: fast_page_fault: vcpu 0 gva 7f00000 error_code F|W sptep 00000000a1b2c3e0 old 0x6000007f000b77 new 6000007f000b77 spurious 1 fixed 0
"""


def test_partial_kvmmmu_takes_faults_from_kvm_page_fault():
    header, events, st = _both_lanes(PARTIAL_KVMMMU)
    assert st.faults_from == "kvm_page_fault"
    assert st.faults_why == "the recording has kvmmmu events but no kvm_mmu_spte_requested"
    assert _rows(events) == [
        (512_100_004_000, 0, 0x4A2C, 1, 0),
        (512_100_103_000, 1, 0x4A2C, 1, 0),
        (512_100_200_000, 0, 0x7F00, 1, 0),
    ]
    assert len(events) == 3  # the spte_changed is a permission change, not an unmap
    assert st.event_lines == 3
    assert st.vcpu_lines == 5  # two kvm_exit, three fast_page_fault
    assert st.no_event == {"kvm_tdp_mmu_spte_changed": 1}
    assert st.skipped_events == {"kvm_mmu_set_spte": 1}
    assert not st.warnings


def test_spte_requested_wins_when_present():
    text = PARTIAL_KVMMMU + (
        "       CPU 0/KVM-7001    [003] .....   512.100300: kvm_mmu_spte_requested: "
        "gfn 7f01 pfn 1237f01 level 1\n"
    )
    _, events, st = _both_lanes(text)
    assert st.faults_from == "kvm_mmu_spte_requested"
    assert st.faults_why == "the recording has kvm_mmu_spte_requested records"
    assert _rows(events) == [(512_100_300_000, 0, 0x7F01, 1, 0)]
    assert st.vcpu_lines == 8  # the three new-format kvm_page_fault only teach vCPUs


def test_summary_names_the_fault_source_and_why(tmp_path, capsys):
    src = tmp_path / "partial.txt"
    src.write_text(PARTIAL_KVMMMU)
    code, _, err = run(capsys, "import", str(src), "-o", str(tmp_path / "p.kvmt"))
    assert code == 0
    assert (
        "(faults from kvm_page_fault: the recording has kvmmmu events but no "
        "kvm_mmu_spte_requested)" in err
    )


# --- 6. empty results are loud --------------------------------------------------------------------

PERF_UNKNOWN = """\
# ========
# captured on    : Tue Mar  4 10:11:12 2025
# ========
#
     qemu-kvm  9120 [002]  3301.200100:       kvm:kvm_exit: reason EPT_VIOLATION rip 0xffffffff8105f2d4 info 181 0
     qemu-kvm  9120 [002]  3301.200105:      kvm:kvm_entry: vcpu 0, rip 0xffffffff8105f2d4
     qemu-kvm  9120 [002]  3301.200190:       kvm:kvm_exit: reason EPT_VIOLATION rip 0xffffffff8105f2e0 info 181 0
     qemu-kvm  9120 [002]  3301.200191:    kvm:kvm_msr: msr_write 6e0 = 0x2a1b
     qemu-kvm  9120 [002]  3301.200210:       kvm:kvm_exit: reason HLT rip 0xffffffff8105f2f0 info 0 0
      swapper     0 [001]  3301.200300: sched:sched_switch: prev_comm=swapper/1 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=qemu-kvm next_pid=9120 next_prio=120
"""


def test_empty_import_warns_with_skipped_names(tmp_path, capsys):
    _, events, st = _both_lanes(PERF_UNKNOWN)
    assert len(events) == 0
    # sched_switch is counted by name too: its line names qemu-kvm
    assert st.skipped_events == {"kvm_exit": 3, "kvm_msr": 1, "sched_switch": 1}
    assert st.warnings == [
        "no faults imported (most frequent skipped records: kvm_exit 3, kvm_msr 1, "
        "sched_switch 1); faults "
        "come from kvm_mmu_spte_requested (record -e kvmmmu:kvm_mmu_spte_requested) or "
        "kvm_page_fault (record -e kvm:kvm_page_fault; a kernel before 6.1 also needs "
        "-e kvm:kvm_entry for the vCPU numbers)"
    ]
    src = tmp_path / "perf.txt"
    src.write_text(PERF_UNKNOWN)
    out = tmp_path / "e.kvmt"
    code, _, err = run(capsys, "import", str(src), "-o", str(out))
    assert code == 0
    assert "warning: no faults imported" in err
    code, text, err = run(capsys, "info", str(out), "--format", "table")
    assert code == 0 and "no faults" in (text + err)
    code, text, err = run(capsys, "replay", str(out))
    assert code == 0 and "has no faults" in err


def test_empty_import_of_only_other_events():
    text = "  bash-1 [000] d.... 1.000001: sched_switch: prev_comm=bash prev_pid=1\n" * 3
    _, events, st = _both_lanes(text)
    assert len(events) == 0 and st.skipped_events == {}
    assert st.warnings[0].startswith(
        "no faults imported (3 record(s) of other events, none of them a KVM event)"
    )


# --- 7. info shows the import source as text and timestamps with units --------------------------


def test_info_source_text_and_time_units(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text(PARTIAL_KVMMMU)
    code, _, _ = run(capsys, "import", "a.txt", "-o", "a.kvmt")
    assert code == 0
    code, text, _ = run(capsys, "info", "a.kvmt", "--format", "table")
    assert code == 0
    lines = {
        ln.split("│")[1].strip(): ln.split("│")[2].strip()
        for ln in text.splitlines()
        if ln.count("│") == 3
    }
    assert lines["import source"] == "a.txt"
    # timestamps read through report/units.py (docs/formats.md): ns with separators, and
    # the duration in the unit that reads best
    assert lines["ts first"] == "512,100,004,000 ns (512 s)"
    assert lines["ts span (max - min)"] == "196,000 ns (196 us)"


# --- 3. guest physical addresses far above RAM --------------------------------------------------

FAR_GPA = """\
 vmm-vcpu0-30211 [001] .....  77.000100: kvm_page_fault: vcpu 0 rip 0x401000 address 0x00007f3a1c000000 error_code 0x184
 vmm-vcpu0-30211 [001] .....  77.000200: kvm_page_fault: vcpu 0 rip 0x401008 address 0x00007f3a1c001008 error_code 0x186
 vmm-vcpu1-30212 [002] .....  77.000300: kvm_page_fault: vcpu 1 rip 0x401010 address 0x0000000000100000 error_code 0x184
 vmm-vcpu1-30212 [002] .....  77.000400: kvm_page_fault: vcpu 1 rip 0x401018 address 0x0001000000002000 error_code 0x184
"""


def test_far_addresses_are_imported_and_reported():
    header, events, st = _both_lanes(FAR_GPA)
    assert _rows(events) == [
        (77_000_100_000, 0, 0x7F3A1C000, 1, 0),
        (77_000_200_000, 0, 0x7F3A1C001, 1, 0),
        (77_000_300_000, 1, 0x100, 1, 0),
        (77_000_400_000, 1, 0x1000000002, 1, 0),
    ]
    assert header.gfn_limit == 0x1000000200  # covers the highest gfn, rounded up to 512
    assert st.warnings == [
        "3 event(s) at guest physical addresses of 1 TiB or more (up to 0x1000000002000, "
        "the others below 0x101000): imported, and gfn_limit covers them; --pfn-map hugepage "
        "keeps the host memory of the model small",
        "1 event(s) at guest physical addresses of 2**48 or more, beyond what 4-level TDP "
        "maps; use --root-level 5",
    ]
    header, events, st = import_text(
        io.StringIO(FAR_GPA), ImportOptions(pfn_map="hugepage", root_level=5)
    )
    assert len(events) == 4 and header.host_pfn_limit == 3 * 512
    assert st.warnings == [
        "3 event(s) at guest physical addresses of 1 TiB or more (up to 0x1000000002000, "
        "the others below 0x101000): imported, and gfn_limit covers them"
    ]


# --- 5. MMIO under --as-tdx ---------------------------------------------------------------------

TD_MMIO = """\
 CPU 0/KVM-5120 [004] ..... 2001.000010: kvm_page_fault: vcpu 0 rip 0xffffffff81060000 address 0x00000000fee000b0 error_code 0x182
 CPU 0/KVM-5120 [004] ..... 2001.000011: kvm_mmio: mmio write len 4 gpa 0xfee000b0 val 0x0
 CPU 0/KVM-5120 [004] ..... 2001.000020: kvm_page_fault: vcpu 0 rip 0xffffffff81060010 address 0x00000000fec00010 error_code 0x182
 CPU 1/KVM-5121 [006] ..... 2001.000030: kvm_page_fault: vcpu 1 rip 0xffffffff81070000 address 0x00000000c0001004 error_code 0x184
 CPU 1/KVM-5121 [006] ..... 2001.000031: kvm_mmio: mmio read len 4 gpa 0xc0001004 val 0x1af4
 CPU 1/KVM-5121 [006] ..... 2001.000040: kvm_page_fault: vcpu 1 rip 0xffffffff81070008 address 0x00000000c0002000 error_code 0x18e
 CPU 1/KVM-5121 [006] ..... 2001.000050: kvm_page_fault: vcpu 1 rip 0xffffffff81070010 address 0x0000000080000000 error_code 0x184
 CPU 1/KVM-5121 [006] ..... 2001.000060: kvm_page_fault: vcpu 1 rip 0xffffffff81070018 address 0x0000000000200000 error_code 0x186
 CPU 0/KVM-5120 [004] ..... 2001.000070: kvm_page_fault: vcpu 0 rip 0xffffffff81070020 address 0x00000000e0000040 error_code 0x184
"""


def test_mmio_is_shared_under_as_tdx(tmp_path, capsys):
    P = FLAG_PRIVATE
    _, events, st = _both_lanes(TD_MMIO, ImportOptions(as_tdx=True))
    assert _rows(events) == [
        (2001_000_010_000, 0, 0xFEE00, 1, 0),  # local APIC
        (2001_000_020_000, 0, 0xFEC00, 1, 0),  # IOAPIC
        (2001_000_030_000, 1, 0xC0001, 1, 0),  # a kvm_mmio record names it
        (2001_000_040_000, 1, 0xC0002, 1, 0),  # error_code 0x18e has the reserved bit
        (2001_000_050_000, 1, 0x80000, 1, P),
        (2001_000_060_000, 1, 0x200, 1, P),
        (2001_000_070_000, 0, 0xE0000, 1, P),
    ]
    assert st.mmio_shared == 4
    assert st.no_event == {"kvm_mmio": 2}
    _, events, st = import_text(
        io.StringIO(TD_MMIO), ImportOptions(as_tdx=True, mmio=[(0xE0000, 0xEFFFF)])
    )
    assert st.mmio_shared == 5 and int(events["flags"][-1]) == 0
    # without --as-tdx everything is shared anyway: nothing to count
    _, events, st = import_text(io.StringIO(TD_MMIO))
    assert st.mmio_shared == 0 and not events["flags"].any()
    src = tmp_path / "td.txt"
    src.write_text(TD_MMIO)
    out = str(tmp_path / "td.kvmt")
    code, _, err = run(
        capsys, "import", str(src), "-o", out, "--as-tdx", "--mmio", "e0000000-efffffff"
    )
    assert code == 0
    assert "MMIO: 5 fault(s) at MMIO addresses imported as shared" in err
    code, _, err = run(capsys, "import", str(src), "-o", out, "--force", "--mmio", "e0000000")
    assert code == 2 and "--mmio 'e0000000': expected START-END" in err
    code, _, err = run(capsys, "import", str(src), "-o", out, "--force", "--mmio", "0-fff")
    assert code == 2 and "--mmio needs --as-tdx" in err


# --- 2. quoted-printable mail -------------------------------------------------------------------

# The same records as PARTIAL_KVMMMU's first five, as an archive stores a quoted-printable mail:
# lines cut at 76 characters with a soft break `=`, `=` itself written `=3D`, a trailing blank
# `=20`.
QP_MAIL = """\
Here is what I see on the host (trace_pipe, kvm + kvmmmu:fast_page_fault):

       CPU 0/KVM-7001    [003] d....   512.100001: kvm_exit: vcpu 0 reaso=
n EPT_VIOLATION rip 0xffffffff81234567 info1 0x0000000000000181 info2 0x0000=
000000000000 intr_info 0x00000000 error_code 0x00000000
       CPU 0/KVM-7001    [003] .....   512.100004: kvm_page_fault: vcpu 0 =
rip 0xffffffff81234567 address 0x0000000004a2c000 error_code 0x181
       CPU 0/KVM-7001    [003] .....   512.100005: kvm_cr: cr_write 4 =3D 0=
x3506f0=20
       CPU 0/KVM-7001    [003] .....   512.100009: fast_page_fault: vcpu 0 =
gva 4a2c000 error_code F|U sptep 00000000a1b2c3d4 old 0x0 new 0 spurious 0 f=
ixed 0
       CPU 1/KVM-7002    [005] .....   512.100103: kvm_page_fault: vcpu 1 =
rip 0xffffffff81000aaa address 0x0000000004a2c010 error_code 0x182

Thanks,
Someone
"""


def test_quoted_printable_mail_is_decoded(tmp_path, capsys):
    _, events, st = _both_lanes(QP_MAIL)
    assert st.quoted_printable == ["<text>"]
    assert _rows(events) == [
        (512_100_004_000, 0, 0x4A2C, 1, 0),
        (512_100_103_000, 1, 0x4A2C, 1, 0),
    ]
    assert st.vcpu_lines == 2 and st.event_lines == 2
    assert st.skipped_events == {"kvm_cr": 1}  # `cr_write 4 = 0x3506f0` decoded, no vcpu
    assert st.skipped["wrapped/continuation"] == 0  # soft breaks joined before reading
    assert st.lines == 10  # decoded lines: prose 2, blank 3, records 5
    # the same text without soft breaks is not decoded: `=3D` stays as written
    plain = "  CPU 0/KVM-7001 [003] .....  512.100005: kvm_cr: cr_write 4 =3D 0x3506f0=\n"
    _, _, st = import_text(io.StringIO(plain))
    assert st.quoted_printable == []
    # compressed mail through the command line
    src = tmp_path / "mail.txt"
    src.write_text(QP_MAIL)
    code, _, err = run(capsys, "import", str(src), "-o", str(tmp_path / "m.kvmt"))
    assert (
        code == 0
        and f"quoted-printable mail decoded (soft line breaks joined, =XX escapes): {src}" in err
    )


def test_quoted_printable_across_blocks(monkeypatch):
    from kvmcache.importers import mapping

    expected = _both_lanes(QP_MAIL * 3)
    monkeypatch.setattr(mapping, "READ_BYTES", 57)
    got = _both_lanes(QP_MAIL * 3)
    assert got[0] == expected[0] and got[1].tobytes() == expected[1].tobytes()


# --- 4. glued snippets and several VMs -----------------------------------------------------------

# Two snippets of one guest pasted one after the other: the second starts 5 hours later.
GLUED = """\
 CPU 0/KVM-6100 [001] ..... 8000.000100: kvm_page_fault: vcpu 0 rip 0x1 address 0x0000000000101000 error_code 0x184
 CPU 0/KVM-6100 [001] ..... 8000.000200: kvm_page_fault: vcpu 0 rip 0x1 address 0x0000000000102000 error_code 0x184
 CPU 0/KVM-6100 [001] ..... 8000.000350: kvm_page_fault: vcpu 0 rip 0x1 address 0x0000000000103000 error_code 0x184
--
 CPU 0/KVM-6100 [001] ..... 26000.000100: kvm_page_fault: vcpu 0 rip 0x1 address 0x0000000000201000 error_code 0x184
 CPU 0/KVM-6100 [001] ..... 26000.000250: kvm_page_fault: vcpu 0 rip 0x1 address 0x0000000000202000 error_code 0x184
"""


def test_glued_snippets_warn_and_max_gap_cuts(tmp_path, capsys):
    _, events, st = _both_lanes(GLUED)
    assert st.warnings == [
        # gaps 100, 150, 5 h, 150 us: the median 150 us is in [2**17, 2**18) ns
        "1 gap(s) between events of over 1024 times the typical gap of the recording (about "
        "0.000131 s; the longest 5.0 h after ts 8000000350000 ns): glued recordings? "
        "--max-gap cuts them for the idle accounting"
    ]
    assert [int(t) for t in events["ts"]][-1] == 26000_000_250_000
    _, events, st = import_text(io.StringIO(GLUED), ImportOptions(max_gap=10**9))
    assert [int(t) for t in events["ts"]] == [
        8000_000_100_000,
        8000_000_200_000,
        8000_000_350_000,
        8001_000_350_000,  # the 5 h gap cut to 1 s
        8001_000_500_000,
    ]
    assert st.gaps_cut == (1, 17_998_999_750_000)  # 17999.99975 s - 1 s
    assert not st.warnings
    src = tmp_path / "glued.txt"
    src.write_text(GLUED)
    code, _, err = run(
        capsys, "import", str(src), "-o", str(tmp_path / "g.kvmt"), "--max-gap", "1s"
    )
    assert code == 0 and "--max-gap: 1 gap(s) cut, 17998999750000 ns of idle time removed" in err
    code, _, err = run(
        capsys, "import", str(src), "-o", str(tmp_path / "h.kvmt"), "--max-gap", "1 parsec"
    )
    assert code == 2 and "--max-gap '1 parsec' is not a duration" in err


# Two QEMU processes traced together (ftrace with the record-tgid option): vCPU threads of pid
# 3300 and of pid 4400 interleave; 4400 has more faults.
TWO_VMS = """\
       CPU 0/KVM-3301    (   3300) [000] ..... 60.000100: kvm_page_fault: vcpu 0 rip 0x1 address 0x0000000000010000 error_code 0x184
       CPU 0/KVM-4401    (   4400) [002] ..... 60.000150: kvm_page_fault: vcpu 0 rip 0x1 address 0x0000000000020000 error_code 0x184
       CPU 1/KVM-4402    (   4400) [003] ..... 60.000160: kvm_page_fault: vcpu 1 rip 0x1 address 0x0000000000021000 error_code 0x184
       CPU 1/KVM-3302    (   3300) [001] ..... 60.000200: kvm_page_fault: vcpu 1 rip 0x1 address 0x0000000000011000 error_code 0x184
       CPU 0/KVM-4401    (   4400) [002] ..... 60.000250: kvm_page_fault: vcpu 0 rip 0x1 address 0x0000000000022000 error_code 0x184
"""


def test_two_vms_by_tgid():
    _, events, st = _both_lanes(TWO_VMS)
    assert _rows(events) == [
        (60_000_150_000, 0, 0x20, 1, 0),
        (60_000_160_000, 1, 0x21, 1, 0),
        (60_000_250_000, 0, 0x22, 1, 0),
    ]
    assert st.vms == ["pid 3300: 2 fault(s)", "pid 4400: 3 fault(s), imported"]
    assert st.vcpu_map == {"CPU 0/KVM-4401": 0, "CPU 1/KVM-4402": 1}
    assert st.skipped["other VM"] == 2 and st.event_lines == 3
    assert st.warnings == [
        "the recording holds 2 VMs (distinct VMM processes); imported pid 4400 (most faults); "
        "--vm PID imports another"
    ]
    _, events, st = import_text(io.StringIO(TWO_VMS), ImportOptions(vm_process="3302"))
    assert [int(g) for g in events["gfn"]] == [0x10, 0x11]
    with pytest.raises(Exception, match=r"--vm 77: no VMM process or thread 77 in the recording"):
        import_text(io.StringIO(TWO_VMS), ImportOptions(vm_process="77"))


def test_two_vms_without_tgid_split_where_a_vcpu_repeats():
    text = TWO_VMS.replace("(   3300) ", "").replace("(   4400) ", "")
    _, events, st = _both_lanes(text)
    assert st.vms == ["threads 3301..3302: 2 fault(s)", "threads 4401..4402: 3 fault(s), imported"]
    assert len(events) == 3
    # perf script with PID/TID
    perf = "".join(
        f"  CPU {v}/KVM {pid}/{tid} [00{v}] 60.{us:06d}: kvm:kvm_page_fault: vcpu {v} rip 0x1 "
        f"address 0x{gpa:016x} error_code 0x184\n"
        for v, pid, tid, us, gpa in [
            (0, 3300, 3301, 100, 0x10000),
            (0, 4400, 4401, 150, 0x20000),
            (1, 3300, 3302, 200, 0x11000),
        ]
    )
    _, events, st = _both_lanes(perf)
    assert st.vms == ["pid 3300: 2 fault(s), imported", "pid 4400: 1 fault(s)"]
    assert [int(g) for g in events["gfn"]] == [0x10, 0x11]


def test_quoted_printable_without_soft_breaks():
    text = (
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n\n"
        "  CPU 0/KVM-7001 [003] .....  512.100005: kvm_cr: cr_write 4 =3D 0x3506f0\n"
        "  CPU 0/KVM-7001 [003] .....  512.100006: kvm_page_fault: vcpu 0 rip 0x1 "
        "address 0x0000000004a2c000 error_code 0x181\n"
    )
    _, events, st = _both_lanes(text)
    assert st.quoted_printable == ["<text>"] and len(events) == 1
    assert st.skipped["unparseable"] == 2  # the two mail header lines
    # without the mail header, one escaped record line is not enough
    _, events, st = _both_lanes(text.split("\n\n", 1)[1])
    assert st.quoted_printable == []


def test_two_qemu_runs_glued_without_vcpu_numbers():
    """trace-cmd with the kvm plugin prints no `vcpu N`: two `CPU 0/KVM` threads are two VMs."""
    text = "".join(
        f"       CPU 0/KVM-{tid} [016] {sec}.{us:06d}: kvm_mmu_spte_requested: "
        f"gfn {gfn:x} pfn {0x8BE2000 + gfn:x} level 1\n"
        for tid, sec, us, gfn in [
            (995300, 5509, 100, 0xFFFFF),
            (995300, 5509, 200, 0xFFFFE),
            (995300, 5510, 300, 0xFFFFD),
            (1018500, 7120, 400, 0xFFFFF),
        ]
    )
    _, events, st = _both_lanes(text)
    assert st.vms == ["threads 995300: 3 fault(s), imported", "threads 1018500: 1 fault(s)"]
    assert [int(g) for g in events["gfn"]] == [0xFFFFF, 0xFFFFE, 0xFFFFD]
    assert st.vcpu_map == {"CPU 0/KVM-995300": 0}


def test_quoted_printable_endless_soft_breaks_are_refused(monkeypatch):
    from kvmcache.importers import mapping

    monkeypatch.setattr(mapping, "MAX_LINE", 4096)
    text = " a-1 [000] 1.000001: kvm_cr: x=\n" * 400
    with pytest.raises(Exception, match=r"<text>: a line longer than 0 MiB"):
        import_text(io.StringIO(text))
    with pytest.raises(Exception, match=r"t: a line longer than 0 MiB"):
        Importer().feed_stream(io.BytesIO(text.encode()), "t", fast=False)
