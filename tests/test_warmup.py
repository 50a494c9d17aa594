"""`kvmcache warmup` compiles (or loads) every jitted function and says so."""

from __future__ import annotations

from click.testing import CliRunner

from kvmcache.cli import cli


def test_warmup_runs_every_jitted_path():
    result = CliRunner().invoke(cli, ["warmup"])
    assert result.exit_code == 0, result.output
    assert "jitted code compiled in" in result.output
