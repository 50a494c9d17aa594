"""kvmcache/trace/output.py: the one rule for a trace OUT of convert, synth and import."""

from __future__ import annotations

import os
import shutil

import pytest
from clirun import error_line, run
from conftest import IMPORT_DATA, TRACES

from kvmcache.errors import KvmcacheError
from kvmcache.trace import open_trace
from kvmcache.trace.output import YAML_EVENT_LIMIT, TraceOutput, output_format

VMX_BASIC = os.path.join(TRACES, "vmx-basic.yaml")
FTRACE = os.path.join(IMPORT_DATA, "ftrace_tdp_mmu.txt")


def test_extension_decides_the_format():
    assert [output_format(p) for p in ("a.yaml", "a.YML", "a.kvmt", "a", "a.yaml.kvmt")] == [
        "yaml",
        "yaml",
        "binary",
        "binary",
        "binary",
    ]


def test_an_input_sidecar_is_never_an_output(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "convert", VMX_BASIC, "v.kvmt")
    assert code == 0, err
    side = tmp_path / "v.kvmt.params.yaml"
    before = side.read_bytes()
    assert open_trace("v.kvmt").header.params  # the sidecar carries the trace's parameters
    code, _, err = run(capsys, "convert", "v.kvmt", "v.kvmt.params.yaml", "--force")
    assert code == 2
    assert error_line(err) == (
        "v.kvmt.params.yaml: is the params sidecar of the input v.kvmt; "
        "writing the trace there would destroy it"
    )
    assert side.read_bytes() == before


def test_an_output_sidecar_is_never_an_input(capsys, tmp_path, monkeypatch):
    """`convert x.kvmt.params.yaml x.kvmt` would replace its own input by x.kvmt's sidecar."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(VMX_BASIC, "x.kvmt.params.yaml")
    before = (tmp_path / "x.kvmt.params.yaml").read_bytes()
    code, _, err = run(capsys, "convert", "x.kvmt.params.yaml", "x.kvmt", "--force")
    assert code == 2
    assert error_line(err) == (
        "x.kvmt.params.yaml: is the input x.kvmt.params.yaml; writing a sidecar there "
        "would destroy it"
    )
    assert (tmp_path / "x.kvmt.params.yaml").read_bytes() == before
    assert not (tmp_path / "x.kvmt").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["convert", VMX_BASIC, "t.kvmt"],
        ["synth", "steady", "-o", "t.kvmt", "--events", "100"],
        ["import", FTRACE, "-o", "t.kvmt"],
    ],
)
@pytest.mark.parametrize("kind", ["params", "import"])
def test_every_trace_writer_keeps_a_sidecar_without_force(
    capsys, tmp_path, monkeypatch, argv, kind
):
    monkeypatch.chdir(tmp_path)
    side = tmp_path / f"t.kvmt.{kind}.yaml"
    side.write_text("keep: me\n")
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert error_line(err) == (
        f"t.kvmt.{kind}.yaml: already exists; use --force to overwrite or remove it"
    )
    assert side.read_text() == "keep: me\n" and not (tmp_path / "t.kvmt").exists()
    code, _, err = run(capsys, *argv, "--force")
    assert code == 0, err
    written = {"convert": "params", "import": "import"}.get(argv[0])
    if kind == written:
        assert side.read_text() != "keep: me\n"  # this command's own sidecar, rewritten
    else:
        assert not side.exists()  # a stale sidecar of the old trace is removed


def test_one_yaml_limit(tmp_path):
    out = str(tmp_path / "t.yaml")
    TraceOutput(out, command="synth", events=YAML_EVENT_LIMIT)
    with pytest.raises(KvmcacheError) as e:
        TraceOutput(out, command="synth", events=YAML_EVENT_LIMIT + 1)
    assert e.value.message == (
        f"{out}: more than {YAML_EVENT_LIMIT:,} events is too many for a YAML trace; "
        "write a binary .kvmt trace instead"
    )
    TraceOutput(str(tmp_path / "t.kvmt"), command="synth", events=YAML_EVENT_LIMIT + 1)
