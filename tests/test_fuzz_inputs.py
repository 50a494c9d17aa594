"""Fuzzing the readers (issue #17): a seeded generator mutates binary headers and records,
YAML traces, config files and recorded import texts; every case must end with exit 0 or 2,
no traceback, at most one bounded error line, no temporary file left and no input changed.
A handful of hostile cases run in child processes under an address-space limit and a
time limit."""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import resource
import struct
import subprocess
import sys

import pytest
from clirun import run

from kvmcache import limits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACES = os.path.join(ROOT, "traces")
KVMT = os.path.join(TRACES, "two-vcpus-same-range.kvmt")
YAMLS = [os.path.join(TRACES, n) for n in ("two-vcpus-same-range.yaml", "unmap-teardown.yaml")]
IMPORT = os.path.join(ROOT, "tests", "data", "import", "ftrace_tdp_mmu.txt")
KVMCACHE = [sys.executable, "-c", "from kvmcache.cli import main; main()"]

#: Values a mutation plants: edges of every integer type, long numbers, YAML traps.
NUMBERS = [0, 1, 2, 31, 32, 64, 255, 4096, 65535, 2**31, 2**32 - 1, 2**63, 2**64 - 1]
TOKENS = [
    "0",
    "-1",
    "0x_",
    "1" * 120,
    "9" * 5000,
    "0x" + "f" * 4400,
    "*undefined",
    "&a [*a]",
    "[",
    "{",
    "'",
    "~",
    "!!binary AAAA",
    "!!python/object:os.system",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "x" * 100_000,
    "\u202e\u0000",
    "1e400",
    ".nan",
    "<<: *x",
    "? [a, b]",
]
#: Fields of the 64-byte binary header: (offset, struct format).
HEADER_FIELDS = [(8, "<H"), (10, "<H"), (12, "<I"), (16, "<I"), (20, "<B"), (21, "<B")]
HEADER_FIELDS += [(22, "<H"), (24, "<Q"), (32, "<Q"), (40, "<Q")]


def _mutate_binary(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        what = rng.random()
        if what < 0.5:
            off, fmt = rng.choice(HEADER_FIELDS)
            size = struct.calcsize(fmt)
            value = rng.choice(NUMBERS) & ((1 << (8 * size)) - 1)
            if off + size <= len(out):
                struct.pack_into(fmt, out, off, value)
        elif what < 0.8 and len(out) > 64:
            i = rng.randrange(64, len(out))
            out[i] = rng.randrange(256)
        elif what < 0.9:
            del out[rng.randrange(len(out)) :]
        else:
            out += bytes(rng.randrange(256) for _ in range(rng.randint(1, 100)))
    return bytes(out)


def _mutate_text(rng: random.Random, text: str) -> str:
    lines = text.splitlines(keepends=True) or ["\n"]
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(lines))
        what = rng.random()
        if what < 0.15:
            del lines[i]
            lines = lines or ["\n"]
        elif what < 0.3:
            lines.insert(i, lines[i])
        elif what < 0.85:
            words = lines[i].split(" ")
            j = rng.randrange(len(words))
            words[j] = rng.choice(TOKENS) + ("\n" if words[j].endswith("\n") else "")
            lines[i] = " ".join(words)
        else:
            cut = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:cut]
    return "".join(lines)


def _case(seed: int, tmp_path) -> tuple[list[str], list[str]]:
    """(argv, inputs) of fuzz case ``seed``: a mutated input and a command reading it."""
    rng = random.Random(seed)
    kind = seed % 4
    if kind == 0:  # binary trace
        path = tmp_path / "t.kvmt"
        path.write_bytes(_mutate_binary(rng, open(KVMT, "rb").read()))
        cmd = rng.choice([["info"], ["replay", "--format", "json"], ["convert"]])
    elif kind == 1:  # YAML trace
        path = tmp_path / "t.yaml"
        path.write_text(_mutate_text(rng, open(rng.choice(YAMLS), encoding="utf-8").read()))
        cmd = rng.choice([["info"], ["replay", "--format", "json"], ["convert"]])
    elif kind == 2:  # config file of a replay
        path = tmp_path / "c.yaml"
        base = "capacity: 40\nspread: 2\nlimits: {faults: 100, alloc_under_lock: 1000}\n"
        base += "require: [balanced]\n"
        path.write_text(_mutate_text(rng, base))
        argv = ["replay", KVMT, "--config", str(path), "--format", "json"]
        return argv, [str(path), KVMT]
    else:  # recorded text, maybe compressed
        text = _mutate_text(rng, open(IMPORT, encoding="utf-8").read()).encode()
        if rng.random() < 0.3:
            text = gzip.compress(text)
            text = text[: rng.randrange(len(text) // 2, len(text) + 1)]
        path = tmp_path / "rec.txt"
        path.write_bytes(text)
        return ["import", str(path), "-o", str(tmp_path / "out.kvmt")], [str(path)]
    argv = [cmd[0], str(path), *cmd[1:]]
    if cmd[0] == "convert":
        argv.append(str(tmp_path / ("out.yaml" if kind == 0 else "out.kvmt")))
    return argv, [str(path)]


def _digest(paths: list[str]) -> dict[str, str]:
    return {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}


def _check(code: int, err: str) -> None:
    assert code in (0, 2), err[:500]
    assert "Traceback" not in err and "internal error" not in err, err[:500]
    lines = err.splitlines()
    assert all(len(line) <= limits.MAX_MESSAGE_CHARS + 40 for line in lines)
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("kvmcache: error: "), err[:500]


@pytest.mark.parametrize("seed", range(48))
def test_mutated_inputs_end_cleanly(capsys, tmp_path, seed):
    argv, inputs = _case(seed, tmp_path)
    before = _digest(inputs)
    listed = set(os.listdir(tmp_path))
    code, _, err = run(capsys, *argv)
    _check(code, err)
    assert _digest(inputs) == before
    after = set(os.listdir(tmp_path))
    assert not [n for n in after if n.endswith(".tmp")], after
    new = after - listed
    if code == 2:
        assert not new, new  # a refused input leaves nothing behind
    else:
        assert new <= {"out.yaml", "out.kvmt", "out.kvmt.import.yaml"}, new


# --------------------------------------------------------------------------- bounded children

#: Address space of a child (a run needs about 400 MiB of it, numba included).
ADDRESS_SPACE = 1 << 30
#: Seconds a child may take (each case here takes well under one).
CHILD_SECONDS = 60


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _laughs() -> str:
    doc = 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, 12):
        doc += f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n"
    return doc


def _hostile(tmp_path) -> list[tuple[str, list[str], bytes | None]]:
    """(name, argv, standard input) of the hostile inputs of issue #17, made small."""
    raw = open(KVMT, "rb").read()
    head = raw[:64]
    pipe_4k = bytearray(head)
    struct.pack_into("<I", pipe_4k, 16, 4096)  # record size 4096
    records = [raw[i : i + 32] + b"\0" * 4064 for i in range(64, len(raw), 32)]
    pipe_4g = bytearray(head)
    struct.pack_into("<I", pipe_4g, 16, 0xFFFFFFFF)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_laughs() + "capacity: *l11\n")
    quadratic = tmp_path / "quadratic.yaml"
    big = "[" + ", ".join(map(str, range(5000))) + "]"
    quadratic.write_text(
        "kvmcache-trace: 1\nevents:\n"
        + f"  - &big {{op: vm_create, ts: {big}}}\n"
        + "  - {op: vm_create, ts: *big}\n" * 20000
        + "vm: {type: tdx, root_level: 4, guest_memory: 4GiB, host_memory: 64GiB}\n"
    )
    return [
        ("pipe record size 4096", ["info", "-"], bytes(pipe_4k) + b"".join(records)),
        ("pipe record size 4 GiB", ["info", "-"], bytes(pipe_4g)),
        ("baseline /dev/zero", ["replay", KVMT, "--baseline", "/dev/zero"], None),
        ("config alias bomb", ["replay", KVMT, "--config", str(bomb)], None),
        ("quadratic aliases", ["info", str(quadratic)], None),
        ("long parameter", ["replay", KVMT, "--set", "spread=" + "9" * 5000], None),
    ]


def test_hostile_inputs_in_bounded_children(tmp_path):
    for name, argv, stdin in _hostile(tmp_path):
        p = subprocess.run(
            [*KVMCACHE, *argv],
            input=stdin if stdin is not None else b"",
            capture_output=True,
            preexec_fn=_limited,
            timeout=CHILD_SECONDS,
            env={**os.environ, "KVMCACHE_JIT": "0"},
        )
        err = p.stderr.decode("utf-8", "replace")
        _check(p.returncode, err)
        if name == "pipe record size 4096":
            assert p.returncode == 0, err  # three records of 4 KiB read in bounded chunks
        else:
            assert p.returncode == 2, (name, err)


@pytest.mark.parametrize("seed", [3, 6, 9, 12])
def test_mutated_inputs_in_bounded_children(tmp_path, seed):
    argv, inputs = _case(seed, tmp_path)
    before = _digest(inputs)
    p = subprocess.run(
        [*KVMCACHE, *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        preexec_fn=_limited,
        timeout=CHILD_SECONDS,
        env={**os.environ, "KVMCACHE_JIT": "0"},
    )
    _check(p.returncode, p.stderr.decode("utf-8", "replace"))
    assert _digest(inputs) == before
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
