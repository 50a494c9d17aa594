"""`kvmcache synth`: determinism, exact event counts, validity of every scenario, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from clirun import error_line as one_error_line
from clirun import run
from conftest import TRACES

from kvmcache.errors import KvmcacheError
from kvmcache.synth import generator as synth
from kvmcache.trace import InMemoryTrace, open_trace
from kvmcache.trace.events import (
    EVENT_DTYPE,
    FLAG_PRIVATE,
    MAX_VCPUS,
    OP_FAULT,
    OP_SPLIT,
    OP_UNMAP,
    OP_VCPU_CREATE,
    OP_VCPU_DESTROY,
    OP_VM_CREATE,
    OP_VM_DESTROY,
    TraceHeader,
)
from kvmcache.trace.validate import validate_all
from kvmcache.trace.yamlfmt import read_yaml

#: Small but busy: a 64 MiB guest, so that working sets are revisited, leaves unmapped and split.
SMALL = {"guest_memory": "64MiB", "host_memory": "256MiB"}

#: Every scenario with every backing it accepts, on both VM types.
CASES = [
    (scenario, vm, backing)
    for scenario in synth.SCENARIOS
    for vm in ("tdx", "vmx")
    for backing in synth.BACKINGS
    if not (scenario == "hugepage-split" and backing == "4k-random")
]

#: The bundled synthetic traces and the arguments that made them (docs/synth.md lists them too).
BUNDLE = {
    "steady-tdx.kvmt": ("steady", {"events": 200_000, "seed": 1}),
    "boot-tdx.kvmt": ("boot", {"events": 50_000, "seed": 1}),
    "churn-tdx.yaml": ("churn", {"events": 300, "seed": 1}),
    "scatter-tdx.kvmt": ("scatter", {"events": 50_000, "seed": 1}),
    "hugepage-split-tdx.yaml": ("hugepage-split", {"events": 200, "seed": 1}),
    "steady-vmx.kvmt": ("steady", {"events": 20_000, "seed": 1, "vm": "vmx"}),
}


def gen(scenario: str, **kwargs) -> tuple[TraceHeader, np.ndarray]:
    """A whole synthetic trace in memory."""
    header, blocks = synth.generate(scenario, **kwargs)
    parts = list(blocks)
    return header, np.concatenate(parts) if parts else np.zeros(0, EVENT_DTYPE)


# --- an independent checker of what MODEL.md allows -------------------------------------------


def check_structure(header: TraceHeader, events: np.ndarray) -> dict[str, int]:
    """Assert the synth guarantees event by event with a plain model of MODEL.md 5.4-5.6:
    one VM lifetime, vCPU events only while live, unmaps only of present leaves (same level
    and root), splits only of present 2 MiB leaves. Returns a few counts."""
    assert len(events) >= 2
    op = events["op"]
    assert op[0] == OP_VM_CREATE and op[-1] == OP_VM_DESTROY
    assert np.count_nonzero(op == OP_VM_CREATE) == 1
    assert np.count_nonzero(op == OP_VM_DESTROY) == 1
    ts = events["ts"]
    assert np.all(ts[1:] >= ts[:-1]), "timestamps must not decrease"
    assert np.all(events["flags"] & ~np.uint16(FLAG_PRIVATE) == 0)
    if not header.is_tdx:
        assert not np.any(events["flags"] & FLAG_PRIVATE)
    live: set[int] = set()
    leaf4k: set[tuple[int, int]] = set()  # (root, gfn)
    leaf2m: set[tuple[int, int]] = set()  # (root, region)
    table1: set[tuple[int, int]] = set()  # (root, region): a level-1 table exists
    counts = dict.fromkeys(("faults", "spurious", "unmaps", "splits", "creates", "destroys"), 0)
    for i, (_, gfn, pfn, vcpu, o, level, flags) in enumerate(events.tolist()):
        root = flags & FLAG_PRIVATE
        where = f"event {i}"
        if o in (OP_FAULT, OP_UNMAP, OP_SPLIT):
            assert gfn < header.gfn_limit, where
        if o == OP_VCPU_CREATE:
            assert vcpu < MAX_VCPUS and vcpu not in live, where
            live.add(vcpu)
            counts["creates"] += 1
        elif o == OP_VCPU_DESTROY:
            assert vcpu in live, where
            live.remove(vcpu)
            counts["destroys"] += 1
        elif o == OP_FAULT:
            assert vcpu in live, f"{where}: fault of a vCPU that is not live"
            assert level in (1, 2) and pfn < header.host_pfn_limit, where
            counts["faults"] += 1
            r = gfn >> 9
            if (root, r) in leaf2m or (root, gfn) in leaf4k:
                counts["spurious"] += 1
                continue
            if level == 2:
                assert gfn % 512 == 0 and pfn % 512 == 0, where
                if (root, r) in table1:
                    if root:  # mirror: level fit
                        level = 1
                    else:  # direct: collapse
                        leaf4k -= {(root, g) for g in range(r * 512, r * 512 + 512)}
                        table1.discard((root, r))
            if level == 2:
                leaf2m.add((root, r))
            else:
                leaf4k.add((root, gfn))
                table1.add((root, r))
        elif o == OP_UNMAP:
            counts["unmaps"] += 1
            if level == 1:
                assert (root, gfn) in leaf4k, f"{where}: unmap of an absent 4 KiB leaf"
                leaf4k.remove((root, gfn))
            else:
                assert level == 2 and (root, gfn >> 9) in leaf2m, f"{where}: absent 2 MiB leaf"
                leaf2m.remove((root, gfn >> 9))
        elif o == OP_SPLIT:
            counts["splits"] += 1
            r = gfn >> 9
            assert (root, r) in leaf2m, f"{where}: split of an absent 2 MiB leaf"
            leaf2m.remove((root, r))
            leaf4k |= {(root, g) for g in range(r * 512, r * 512 + 512)}
            table1.add((root, r))
        else:
            assert o in (OP_VM_CREATE, OP_VM_DESTROY), where
    return counts


def test_checker_catches_bad_events() -> None:
    header, events = gen("steady", events=3000)
    check_structure(header, events)
    touched = set((events["gfn"] >> 9).tolist())
    untouched = next(r for r in range(header.gfn_limit >> 9) if r not in touched)
    for op in (OP_UNMAP, OP_SPLIT):
        bad = events.copy()
        i = int(np.flatnonzero(bad["op"] == op)[0])
        bad["gfn"][i] = untouched * 512  # a region nothing was ever mapped in
        with pytest.raises(AssertionError, match="absent"):
            check_structure(header, bad)
    bad = events.copy()
    bad["op"][len(bad) // 2] = OP_VM_DESTROY
    with pytest.raises(AssertionError):
        check_structure(header, bad)


# --- sizes ------------------------------------------------------------------------------------


# --- the permutation behind the backings ------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 511, 512, 513, 1843, 4096])
def test_perm_is_a_bijection_and_matches_the_kernel(n: int) -> None:
    bits = synth._domain_bits(n)
    key = 0x1234_5678_9ABC_DEF
    image = synth._perm_np(np.arange(n), n, bits, key)
    assert sorted(image.tolist()) == list(range(n))
    assert [synth._perm(x, n, bits, key) for x in range(n)] == image.tolist()


# --- determinism and counts -------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(synth.SCENARIOS))
def test_same_seed_same_bytes_different_seed_differs(scenario: str, tmp_path) -> None:
    paths = []
    for i, seed in enumerate((7, 7, 8)):
        header, blocks = synth.generate(scenario, events=5000, seed=seed, **SMALL)
        path = str(tmp_path / f"{i}.kvmt")
        assert synth.write(path, header, blocks) == 5000
        paths.append(path)
    raw = [open(p, "rb").read() for p in paths]
    assert raw[0] == raw[1]
    assert raw[0] != raw[2]
    assert len(raw[0]) == 64 + 32 * 5000


@pytest.mark.parametrize("scenario", list(synth.SCENARIOS))
def test_block_size_does_not_change_the_trace(scenario: str) -> None:
    _, whole = gen(scenario, events=4000, seed=3, **SMALL)
    header, blocks = synth.generate(scenario, events=4000, seed=3, block_events=7, **SMALL)
    parts = list(blocks)
    assert all(len(p) <= 7 for p in parts)
    assert np.concatenate(parts).tobytes() == whole.tobytes()


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 10, 101, 4097])
@pytest.mark.parametrize("scenario", list(synth.SCENARIOS))
def test_event_count_is_exact(scenario: str, n: int) -> None:
    header, events = gen(scenario, events=n, vcpus=3, block_events=64, **SMALL)
    assert header.count == n and len(events) == n
    check_structure(header, events)


def test_generation_is_lazy_and_streams() -> None:
    """A trillion-event trace costs nothing until read; a block is bounded."""
    header, blocks = synth.generate("steady", events=10**12, block_events=1000)
    assert header.count == 10**12
    first = next(iter(blocks))
    assert 1000 - synth.MAXK < len(first) <= 1000 and first["op"][0] == OP_VM_CREATE


def test_defaults_and_header() -> None:
    header, blocks = synth.generate("boot", events=10)
    assert (header.vm_type, header.root_level) == ("tdx", 4)
    assert header.gfn_limit == (4 << 30) // 4096
    assert header.host_pfn_limit == (16 << 30) // 4096
    header, _ = synth.generate("boot", events=10, vm="vmx", root_level=5, guest_memory=1 << 30)
    assert (header.vm_type, header.root_level, header.gfn_limit) == ("vmx", 5, 1 << 18)


# --- validity of every scenario ---------------------------------------------------------------


@pytest.mark.parametrize("scenario, vm, backing", CASES)
def test_every_scenario_validates(scenario: str, vm: str, backing: str) -> None:
    header, events = gen(scenario, events=20_000, vm=vm, backing=backing, seed=5, **SMALL)
    validate_all(InMemoryTrace(header, events))
    counts = check_structure(header, events)
    assert counts["faults"] > 0
    if vm == "vmx":
        assert not np.any(events["flags"])
    if scenario == "churn":
        assert counts["destroys"] > 10 and counts["creates"] > counts["destroys"]
    else:
        assert counts["destroys"] == 0
    if scenario == "hugepage-split":
        assert counts["splits"] > 10
        assert np.count_nonzero((events["op"] == OP_UNMAP) & (events["level"] == 1)) > 100
    if scenario in ("steady", "scatter", "churn"):
        assert counts["unmaps"] > 100
    if scenario == "steady" and backing != "4k-random":
        faults = events[events["op"] == OP_FAULT]
        assert 0.1 < np.mean(faults["level"] == 2) < 0.6
    if scenario in ("boot", "scatter") or backing == "4k-random":
        assert not np.any(events["level"] == 2)


def test_private_fraction() -> None:
    for pf, lo, hi in ((0.9, 0.85, 0.95), (0.5, 0.45, 0.55), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)):
        _, events = gen("boot", events=20_000, private_fraction=pf)
        faults = events[events["op"] == OP_FAULT]
        share = np.mean(faults["flags"] & FLAG_PRIVATE)
        assert lo <= share <= hi, (pf, share)


def test_boot_is_mostly_sequential_per_vcpu() -> None:
    _, events = gen("boot", events=20_000, private_fraction=1.0)
    f = events[events["op"] == OP_FAULT]
    steps = [np.diff(f["gfn"][f["vcpu"] == v].astype(np.int64)) for v in range(4)]
    assert all(np.mean(s == 1) > 0.95 for s in steps)
    assert len(set(f["vcpu"].tolist())) == 4


def test_steady_converts_private_to_shared() -> None:
    """An unmap of a private 4 KiB leaf is followed by a shared fault at the same gfn."""
    _, events = gen("steady", events=20_000, **SMALL)
    idx = np.flatnonzero((events["op"] == OP_UNMAP) & (events["flags"] == 1))
    assert len(idx) > 50
    nxt = events[idx + 1]
    assert np.all(nxt["op"] == OP_FAULT) and np.all(nxt["flags"] == 0)
    assert np.all(nxt["gfn"] == events["gfn"][idx])


@pytest.mark.parametrize(
    "scenario, vm", [("hugepage-split", "tdx"), ("hugepage-split", "vmx"), ("churn", "tdx")]
)
def test_count_of_present_2m_leaves_is_exact(scenario: str, vm: str) -> None:
    """The generator's count of present 2 MiB leaves (which lets a split or an invalidation skip
    its draws when there is none) equals the 2 MiB leaves its model holds, after every block."""
    header, blocks = synth.generate(
        scenario, events=30_000, vm=vm, seed=5, block_events=97, **SMALL
    )
    M = blocks.state.M
    nreg = header.gfn_limit // 512
    seen = set()
    for _ in blocks:
        words = M[M[synth.P_REGS] :][: 2 * nreg]
        n2m = M[synth.S_N2M]
        assert n2m == np.count_nonzero(words & synth.REG_LEAF2M)
        seen.add(int(n2m))
    assert 0 in seen and len(seen) > 1  # the count rose and fell back to none


def test_hugepage_split_splits_every_region_then_churns_4k() -> None:
    """The first phase maps each main region at 2 MiB and splits it; once no 2 MiB leaf is left,
    the trace unmaps and refaults 4 KiB pages of the split regions."""
    _, events = gen("hugepage-split", events=40_000, seed=3, **SMALL)
    private = (events["flags"] & FLAG_PRIVATE) != 0
    huge = events[(events["op"] == OP_FAULT) & (events["level"] == 2) & private]
    splits = events[events["op"] == OP_SPLIT]
    assert len(splits) == len(set(splits["gfn"].tolist()))  # each region split once
    assert set(splits["gfn"].tolist()) == set(huge["gfn"].tolist())
    late = events[len(events) // 2 :]
    assert np.count_nonzero(late["op"] == OP_UNMAP) > 0.1 * len(late)


def test_backings() -> None:
    """hugepage: a guest 2 MiB region sits in one host 2 MiB region, distinct per guest region;
    4k-contiguous: pfn - gfn is constant; 4k-random: pages spread over many host ranges."""
    kw = {"events": 20_000, "private_fraction": 1.0, "host_memory": "1TiB"}
    _, ev = gen("scatter", backing="hugepage", **kw)
    f = ev[ev["op"] == OP_FAULT]
    pairs = set(zip((f["gfn"] >> 9).tolist(), (f["pfn"] >> 9).tolist(), strict=True))
    assert len({g for g, _ in pairs}) == len(pairs) == len({h for _, h in pairs})
    assert np.all(f["gfn"] % 512 == f["pfn"] % 512)
    _, ev = gen("scatter", backing="4k-contiguous", **kw)
    f = ev[ev["op"] == OP_FAULT]
    assert len(set((f["pfn"].astype(np.int64) - f["gfn"].astype(np.int64)).tolist())) == 1
    _, ev = gen("scatter", backing="4k-random", **kw)
    f = ev[ev["op"] == OP_FAULT]
    gfns, first = np.unique(f["gfn"], return_index=True)
    pfns = f["pfn"][first]
    assert len(np.unique(pfns)) == len(gfns)  # one host page per guest page
    assert len(np.unique(pfns >> 9)) > 0.8 * len(gfns)  # nearly a host range each


_PURE_PYTHON = """
import sys
import numpy as np
from kvmcache.synth import generator as synth
parts = []
for scenario in synth.SCENARIOS:
    for vm in ("tdx", "vmx"):
        _, blocks = synth.generate(scenario, events=300, vm=vm, seed=2, block_events=50,
                                   guest_memory="64MiB", host_memory="256MiB")
        parts.extend(blocks)
sys.stdout.buffer.write(np.concatenate(parts).tobytes())
"""


def test_compiled_kernel_matches_the_same_code_as_plain_python() -> None:
    """NUMBA_DISABLE_JIT runs the kernel as Python (numpy scalars, wrapping like numba): the
    bytes must be the same, so nothing depends on how numba compiles the arithmetic."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    cmd = [sys.executable, "-W", "error", "-c", _PURE_PYTHON]
    pure = subprocess.run(cmd, env=env, capture_output=True, check=True, timeout=300).stdout
    parts = []
    for scenario in synth.SCENARIOS:
        for vm in ("tdx", "vmx"):
            parts.append(gen(scenario, events=300, vm=vm, seed=2, **SMALL)[1])
    assert pure == np.concatenate(parts).tobytes()


# --- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vcpus": 0}, "vcpu count"),
        ({"vcpus": MAX_VCPUS + 1}, "vcpu count"),
        ({"events": 1}, "event count"),
        ({"guest_memory": "3MiB"}, "multiple of 2MiB"),
        ({"guest_memory": "8TiB", "host_memory": "8TiB"}, "guest memory"),
        ({"host_memory": "1GiB"}, "at least the guest memory"),
        ({"vm": "sev"}, "vm type"),
        ({"root_level": 3}, "root level"),
        ({"backing": "1g"}, "backing"),
        ({"private_fraction": 1.5}, "private fraction"),
        ({"private_fraction": 0.5, "vm": "vmx"}, "no private memory"),
        ({"rate": 0}, "rate"),
        ({"jitter": 1.0}, "jitter"),
        ({"seed": -1}, "seed"),
        ({"rate": 0.001, "events": 10**12}, "overflow"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(KvmcacheError, match=match):
        synth.generate("steady", **kwargs)


def test_bad_scenario_and_backing_combination() -> None:
    with pytest.raises(KvmcacheError, match="unknown scenario 'bot'"):
        synth.generate("bot")
    with pytest.raises(KvmcacheError, match="hugepage-split needs 2 MiB leaves"):
        synth.generate("hugepage-split", backing="4k-random")


# --- the command ------------------------------------------------------------------------------


def test_cli_list(capsys) -> None:
    code, out, err = run(capsys, "synth", "--list")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == list(synth.SCENARIOS)


def test_cli_help_shows_the_library_defaults(capsys) -> None:
    code, out, _ = run(capsys, "synth", "--help")
    text = " ".join(out[out.index("Options:") :].split())
    assert code == 0
    for option, default in (
        ("--vcpus", synth.DEFAULT_VCPUS),
        ("--guest-memory", synth.DEFAULT_GUEST_MEMORY),
        ("--host-memory", synth.DEFAULT_HOST_MEMORY),
        ("--events", synth.DEFAULT_EVENTS),
        ("--rate", int(synth.DEFAULT_RATE)),
        ("--jitter", synth.DEFAULT_JITTER),
    ):
        after = text[text.index(option) :]
        assert f"[default: {default}]" in after[: after.index("--", 2)], option


def test_cli_writes_binary_and_refuses_to_overwrite(capsys, tmp_path) -> None:
    out = str(tmp_path / "t.kvmt")
    argv = ["synth", "churn", "-o", out, "--events", "1000", "--vcpus", "2", "--seed", "9"]
    code, stdout, err = run(capsys, *argv, "--guest-memory", "64MiB", "--host-memory", "1GiB")
    assert code == 0 and stdout == "" and "wrote 1,000 events" in err
    source = open_trace(out)
    assert source.header.count == 1000 and source.header.gfn_limit == 64 << 8
    events = np.concatenate(list(source.chunks()))
    assert set(events["vcpu"][events["op"] == OP_FAULT].tolist()) <= {0, 1}
    first = open(out, "rb").read()
    code, _, err = run(capsys, *argv)
    assert code == 2 and "already exists; use --force" in one_error_line(err)
    assert open(out, "rb").read() == first
    open(out + ".params.yaml", "w").write("tdcx_pages: 3\n")  # a stale sidecar
    code, _, err = run(capsys, *argv, "--force")
    assert code == 0 and open(out, "rb").read() != first  # 4 GiB guest now
    assert not os.path.exists(out + ".params.yaml")


def test_cli_yaml_and_its_size_guard(capsys, tmp_path) -> None:
    out = str(tmp_path / "t.yaml")
    code, _, err = run(capsys, "synth", "hugepage-split", "-o", out, "--events", "150")
    assert code == 0, err
    header, events = read_yaml(out)
    _, expected = gen("hugepage-split", events=150)
    assert header.gfn_limit == 1 << 20 and events.tobytes() == expected.tobytes()
    big = str(tmp_path / "big.yml")
    code, _, err = run(capsys, "synth", "steady", "-o", big, "--events", "100001")
    assert code == 2 and "too many for a YAML trace" in one_error_line(err)
    assert not os.path.exists(big)
    code, _, err = run(capsys, "synth", "steady", "-o", big, "--events", "100000")
    assert code == 0, err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["synth", "nope", "-o", "x.kvmt"], "unknown scenario 'nope'"),
        (["synth", "steady"], "missing -o OUT"),
        (["synth", "-o", "x.kvmt"], "missing SCENARIO"),
        (
            ["synth", "steady", "-o", "x.kvmt", "--guest-memory", "4GiBs"],
            "guest memory '4GiBs' is not a size",
        ),
        (
            ["synth", "steady", "-o", "x.kvmt", "--host-memory", "lots"],
            "host memory 'lots' is not a size",
        ),
        (["synth", "steady", "-o", "x.kvmt", "--vm", "vmx", "--private-fraction", "0.2"], "vmx"),
        (["synth", "steady", "-o", "-"], "not standard output"),
    ],
)
def test_cli_usage_errors(capsys, tmp_path, monkeypatch, argv, match) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and match in one_error_line(err)
    assert not os.path.exists(tmp_path / "x.kvmt")


# --- the bundled traces -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BUNDLE))
def test_bundled_trace_is_what_synth_makes(name: str) -> None:
    path = os.path.join(TRACES, name)
    assert os.path.getsize(path) < 8 << 20
    source = open_trace(path)
    events = np.concatenate(list(source.chunks()))
    scenario, kwargs = BUNDLE[name]
    header, expected = gen(scenario, **kwargs)
    assert (source.header.vm_type, source.header.gfn_limit) == (header.vm_type, header.gfn_limit)
    assert events.tobytes() == expected.tobytes()
    check_structure(source.header, events)


# --- replay: every scenario under every strategy stays balanced -------------------------------


@pytest.mark.parametrize("scenario", list(synth.SCENARIOS))
@pytest.mark.parametrize("vm", ["tdx", "vmx"])
def test_every_scenario_replays_balanced(scenario: str, vm: str) -> None:
    replay = pytest.importorskip("kvmcache.sim.replay")
    from kvmcache.sim.counters import STRATEGIES

    header, events = gen(scenario, events=20_000, vm=vm, seed=11, **SMALL)
    for alloc in STRATEGIES:
        result = replay.replay(InMemoryTrace(header, events), alloc, {})
        c = result.counters
        assert c["leaked_ranges"] == 0, alloc
        assert c["refcount_underflow"] == 0, alloc
        assert c["unmaps_missing"] == 0, alloc  # every unmap and split found its leaf
        assert c["events"] == 20_000
