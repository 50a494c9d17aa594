"""How much kvmcache says on standard error: ``--quiet``/``-q`` and ``--verbose``/``-v``.

Every command takes both (the CLI sets the level before the command runs). Quiet keeps
errors and gate failures only: no progress bar, warning, note or gate summary. Verbose adds
details (timings, the trace digest, every gate that passed). Reports on standard output
never change with the level.
"""

from __future__ import annotations

import sys

QUIET = -1
NORMAL = 0
VERBOSE = 1

_level = NORMAL


def set_level(level: int) -> None:
    """Set the level (clamped to QUIET..VERBOSE)."""
    global _level
    _level = max(QUIET, min(VERBOSE, int(level)))


def level() -> int:
    return _level


def is_quiet() -> bool:
    return _level <= QUIET


def is_verbose() -> bool:
    return _level >= VERBOSE


def note(message: str) -> None:
    """A diagnostic line on stderr (``kvmcache: MESSAGE``), unless quiet."""
    if not is_quiet():
        print(f"kvmcache: {message}", file=sys.stderr)


def detail(message: str) -> None:
    """A line on stderr only with --verbose."""
    if is_verbose():
        print(f"kvmcache: {message}", file=sys.stderr)
