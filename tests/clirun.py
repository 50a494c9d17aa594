"""Running the real `kvmcache` entry point in-process, for the command tests."""

from __future__ import annotations

import pytest

from kvmcache.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the real entry point; (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def error_line(err: str) -> str:
    """The message of a usage error: exactly one `kvmcache: error: ...` line, no traceback."""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("kvmcache: error: ") and "Traceback" not in err
    return err[len("kvmcache: error: ") : -1]
