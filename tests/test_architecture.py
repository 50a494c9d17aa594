"""The layout of docs/architecture.md, kept: who may import what, and every command's help."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import click
import pytest

from kvmcache.cli import COMMANDS

PACKAGE = Path(__file__).resolve().parent.parent / "kvmcache"


def _modules() -> dict[str, set[str]]:
    """Every module of kvmcache (path relative to the package) -> the modules it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
        found[path.relative_to(PACKAGE).as_posix()] = names
    return found


MODULES = _modules()


def _importers_of(prefix: str) -> list[str]:
    return sorted(
        m for m, names in MODULES.items() if any(n.split(".")[0] == prefix for n in names)
    )


def test_numba_is_imported_only_by_jit():
    assert _importers_of("numba") == ["jit.py"]


def test_rich_only_in_report_and_commands():
    assert [m for m in _importers_of("rich") if not m.startswith(("report/", "commands/"))] == []


def test_matplotlib_only_in_report():
    assert [m for m in _importers_of("matplotlib") if not m.startswith("report/")] == []


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("trace/", ("kvmcache.sim", "kvmcache.synth", "kvmcache.importers", "kvmcache.report")),
        ("sim/", ("kvmcache.report", "kvmcache.commands", "kvmcache.synth", "kvmcache.importers")),
        ("synth/", ("kvmcache.sim", "kvmcache.report", "kvmcache.commands", "kvmcache.importers")),
        ("importers/", ("kvmcache.sim", "kvmcache.report", "kvmcache.commands", "kvmcache.synth")),
        ("report/", ("kvmcache.commands", "kvmcache.sim.replay", "kvmcache.sim.kernel")),
    ],
)
def test_each_package_knows_only_the_stages_before_it(package, forbidden):
    bad = {
        m: sorted(n for n in names if n.startswith(forbidden))
        for m, names in MODULES.items()
        if m.startswith(package)
    }
    assert {m: n for m, n in bad.items() if n} == {}


def test_importer_rules_import_nothing_and_the_lanes_no_cycle():
    assert {n for n in MODULES["importers/rules.py"] if not n.startswith("__future__")} == set()
    assert not any(n.startswith("kvmcache.importers.mapping") for n in MODULES["importers/scan.py"])


def test_one_file_of_jitted_code_per_package():
    users = sorted(m for m, names in MODULES.items() if "kvmcache.jit" in names)
    assert [m for m in users if not m.startswith("commands/")] == [
        "importers/scan.py",
        "sim/kernel.py",
        "synth/generator.py",
    ]


def test_reporters_and_gates_load_without_the_replay_driver_or_numba():
    code = (
        "import sys\n"
        "import kvmcache.gates, kvmcache.report.documents, kvmcache.report.formats\n"
        "import kvmcache.report.table, kvmcache.report.compare, kvmcache.report.csvfmt\n"
        "import kvmcache.report.sweepfmt, kvmcache.report.plots, kvmcache.report.timeline\n"
        "print(sorted(m for m in sys.modules if m in ('numba', 'kvmcache.sim.replay',"
        " 'kvmcache.sim.kernel', 'matplotlib')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"


def test_help_lists_commands_without_importing_them():
    code = (
        "import sys\n"
        "from kvmcache.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('kvmcache.commands.', 'numpy',"
        " 'numba', 'rich'))), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr == "[]\n"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_imports_and_its_help_is_its_docstring_first_line(name):
    module_name, help_line = COMMANDS[name]
    command = importlib.import_module(f"kvmcache.commands.{module_name}").command
    assert isinstance(command, click.Command) and command.name == name
    assert command.help.splitlines()[0] == help_line


def test_synth_list_and_help_load_no_generator():
    code = (
        "import sys\n"
        "from kvmcache.cli import main\n"
        "for argv in (['synth', '--list'], ['synth', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in sys.modules if m in ('numba', 'kvmcache.synth.generator')),"
        " file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr == "[]\n" and "steady" in out.stdout


def test_schema_names_are_written_once():
    """Every `kvmcache.NAME/1` schema string appears in report/documents.py only."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            value = getattr(node, "value", None)
            if isinstance(node, ast.Constant) and isinstance(value, str):
                if value.startswith("kvmcache.") and value.endswith("/1"):
                    found.setdefault(value, set()).add(path.relative_to(PACKAGE).as_posix())
    assert found == {
        s: {"report/documents.py"}
        for s in ("kvmcache.replay/1", "kvmcache.compare/1", "kvmcache.sweep/1", "kvmcache.info/1")
    }


def test_benchmark_scripts_import():
    """`make bench` and the profiling scripts still import after a move (they are not run
    by the suite: benchmarks measure, tests do not time)."""
    import importlib.util

    for name in (
        "run.py",
        "ab_kernel.py",
        "profile_kernel.py",
        "bench_sweep.py",
        "instructions.py",
    ):
        path = PACKAGE.parent / "benchmarks" / name
        spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
