"""One error class for everything a user can cause; the CLI prints it once and exits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_GATE = 3


class KvmcacheError(Exception):
    """A user-caused failure: one clear sentence, printed once by the CLI, with an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


@contextmanager
def reading(path: str, kind: str = "file", what: str | None = None) -> Iterator[None]:
    """Turn an OSError while reading ``path`` into one line: ``no such KIND``, ``is a
    directory[, not WHAT]`` or ``cannot read: REASON``."""
    try:
        yield
    except FileNotFoundError:
        raise KvmcacheError(f"{path}: no such {kind}") from None
    except IsADirectoryError:
        raise KvmcacheError(f"{path}: is a directory" + (f", not {what}" if what else "")) from None
    except OSError as e:
        raise KvmcacheError(f"{path}: cannot read: {e.strerror or e}") from None
