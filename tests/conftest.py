"""Test-session settings, and the paths and builders the test files share."""

from __future__ import annotations

import os
import shutil

import pytest

# The commands replay a tiny trace in Python (kvmcache/jit.py) when the kernel is not
# loaded yet; in this long-lived process that would turn every later kernel test into Python.
# tests/test_golden.py checks the Python mode in a child process of its own.
os.environ["KVMCACHE_JIT"] = "1"

#: The project root, its bundled traces, the golden scenarios and the importer's test inputs
#: (module constants as well as fixtures: parametrize lists need them at collection).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACES = os.path.join(ROOT, "traces")
GOLDEN_DIR = os.path.join(ROOT, "tests", "golden")
IMPORT_DATA = os.path.join(ROOT, "tests", "data", "import")


@pytest.fixture
def traces_dir() -> str:
    """The bundled traces (traces/)."""
    return TRACES


@pytest.fixture
def golden_dir() -> str:
    """The golden scenarios and their expected counters (tests/golden/)."""
    return GOLDEN_DIR


@pytest.fixture
def trace_copy(tmp_path):
    """A builder: ``trace_copy(name, as_name)`` copies a bundled trace (and its params
    sidecar, if any) into the test's directory, as ``as_name`` or its own name, and returns
    the copy's path."""

    def copy(name: str, as_name: str | None = None) -> str:
        dst = tmp_path / (as_name or name)
        shutil.copy(os.path.join(TRACES, name), dst)
        side = os.path.join(TRACES, name + ".params.yaml")
        if os.path.exists(side):
            shutil.copy(side, str(dst) + ".params.yaml")
        return str(dst)

    return copy
