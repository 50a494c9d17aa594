"""The time model (MODEL.md section 8) and PAMT bytes (section 9), worked out by hand.

The random comparison with tests/naive.py (test_kernel_vs_naive.py) covers every strategy;
these cases pin exact figures that can be checked with a pencil, the saturation of the
model clock at 2^64 - 1, sums beyond 2^64, and the validation of the ``ns_*`` costs.
"""

from __future__ import annotations

import json

import pytest
from clirun import error_line, run

U64_MAX = 2**64 - 1

VMX = """\
kvmcache-trace: 1
vm: {type: vmx, root_level: 4, gfn_limit: 0x100000, host_pfn_limit: 0x1000000}
"""


def _replay(capsys, tmp_path, text: str, *args: str) -> dict:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    code, out, err = run(capsys, "replay", str(path), "--format", "json", *args)
    assert code == 0, err
    return json.loads(out)


def test_one_shared_fault_by_hand(capsys, tmp_path):
    """vCPU 0's load top-up: desc 100 + 40 x 40, spt 100 + 40 x 400, header 100 + 40 x 40 =
    19,500 ns; the fault at ts 1000 waits for it (delay 18,500), then its locked section is
    ns_fault 1000 + three links of 500 = 2,500 ns, which is also its latency (bucket 5:
    2^11 <= 2500 < 2^12)."""
    doc = _replay(
        capsys,
        tmp_path,
        VMX
        + """events:
  - {ts: 0, op: vcpu_create, vcpu: 0}
  - {ts: 1000, op: fault, vcpu: 0, gfn: 0, pfn: 0x1000, level: 4k}
""",
    )
    c = doc["counters"]
    assert c["time_topup_ns"] == 19_500
    assert c["vcpu_delay_ns"] == 18_500
    assert c["time_locked_ns"] == c["time_locked_max_ns"] == 2_500
    assert c["fault_latency_ns"] == c["fault_latency_max_ns"] == 2_500
    assert doc["histograms"]["fault_latency"] == [0] * 5 + [1] + [0] * 26
    for name in ("pamt_lock_wait_ns", "pamt_lock_held_ns", "pamt_lock_contended"):
        assert c[name] == 0
    assert c["pamt_bytes_peak"] == 0  # vmx: no PAMT at all


def test_costs_follow_the_ns_parameters(capsys, tmp_path):
    """With every cost 0 but ns_fault and ns_link, only the locked section takes time; a
    spurious fault still waits for its vCPU (vcpu_delay_ns) but records no latency."""
    doc = _replay(
        capsys,
        tmp_path,
        VMX
        + """params: {ns_alloc: 0, ns_slab: 0, ns_topup: 0, ns_free: 0, ns_fault: 7, ns_link: 1}
events:
  - {ts: 5, op: fault, vcpu: 3, gfn: 0, pfn: 0x1000, level: 4k}
  - {ts: 5, op: fault, vcpu: 3, gfn: 0, pfn: 0x1000, level: 4k}
""",
    )
    c = doc["counters"]
    assert c["time_topup_ns"] == 0
    assert c["time_locked_ns"] == c["fault_latency_ns"] == 10  # 7 + 3 links; the 2nd is spurious
    assert c["vcpu_delay_ns"] == 10  # the spurious fault at ts 5 waits for the first (ends at 15)
    assert (
        doc["histograms"]["fault_latency"][0] == 1 and sum(doc["histograms"]["fault_latency"]) == 1
    )


def test_clock_saturates_and_sums_pass_2_64(capsys, tmp_path):
    """A vCPU created 10 ns before the end of time: its top-up saturates the clock (9 ns of
    top-up), so busy is 2^64 - 1 and each later fault of that vCPU waits 2^64 - 1 - ts; two
    such delays sum beyond 2^64 and are reported exactly."""
    doc = _replay(
        capsys,
        tmp_path,
        VMX
        + f"""events:
  - {{ts: {U64_MAX - 9}, op: vcpu_create, vcpu: 0}}
  - {{ts: 0, op: fault, vcpu: 0, gfn: 0, pfn: 0x1000, level: 4k}}
  - {{ts: 0, op: fault, vcpu: 0, gfn: 0x200, pfn: 0x1000, level: 4k}}
""",
    )
    c = doc["counters"]
    assert c["time_topup_ns"] == 9
    assert c["vcpu_delay_ns"] == 2 * U64_MAX  # beyond 2^64: exact, not wrapped
    assert c["fault_latency_ns"] == 0 and c["time_locked_ns"] == 0  # the clock stays at the top
    assert doc["histograms"]["fault_latency"][0] == 2


def test_pamt_bytes_static_for_none_and_dynamic_for_dpamt(capsys, tmp_path):
    """Section 9 on a 64 GiB host with the default 4 GiB kernel region: 34,816 2 MiB ranges.
    none reserves 8 KiB for each; a DPAMT design pays 8 KiB per live pair at the peak plus a
    4-byte refcount per range."""
    text = """\
kvmcache-trace: 1
vm: {type: tdx, root_level: 4, gfn_limit: 0x100000, host_pfn_limit: 0x1000000}
events:
  - {ts: 0, op: fault, vcpu: 0, gfn: 0x1000, pfn: 0x80000, level: 4k, private: true}
"""
    ranges = (0x1000000 + 1048576) // 512
    none = _replay(capsys, tmp_path, text, "--alloc", "none")["counters"]
    assert none["pamt_bytes_peak"] == 8192 * ranges == 285_212_672
    dyn = _replay(capsys, tmp_path, text, "--alloc", "dpamt-install")["counters"]
    assert dyn["pamt_bytes_peak"] == 8192 * dyn["pamt_pairs_peak"] + 4 * ranges
    assert dyn["pamt_lock_held_ns"] == 4000 * dyn["pamt_add"] + 2000 * dyn["pamt_remove"]


@pytest.mark.parametrize(
    "value,problem",
    [
        ("4294967296", "too large"),
        ("-1", "must be >= 0"),
        ("1.5", "is not an integer"),
        ("true", "is not an integer"),
    ],
)
def test_ns_parameter_out_of_range_is_one_line(capsys, value, problem):
    from test_bad_input_more import YAML

    code, _, err = run(capsys, "replay", YAML, "--set", f"ns_pamt_add={value}")
    assert code == 2
    msg = error_line(err)
    assert "ns_pamt_add" in msg and problem in msg, msg


def test_ns_parameter_at_its_limit_is_accepted(capsys, tmp_path):
    doc = _replay(
        capsys,
        tmp_path,
        VMX + "events:\n  - {ts: 0, op: fault, vcpu: 0, gfn: 0, pfn: 1, level: 4k}\n",
        "--set",
        f"ns_fault={2**32 - 1}",
    )
    assert doc["params"]["ns_fault"] == 2**32 - 1
    assert doc["counters"]["fault_latency_ns"] == 2**32 - 1 + 3 * 500 + 19_500
