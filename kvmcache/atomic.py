"""Writing files so readers see the old file or the whole new one, never a part.

Every output kvmcache writes goes to a temporary file in the destination's directory and
is renamed over the destination only once complete; a failure leaves the destination as
it was and removes the temporary file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from kvmcache.errors import KvmcacheError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_beside(path: str, what: str = "write") -> tuple[int, str]:
    """A new temporary file (descriptor, name) in ``path``'s directory, with the mode a plain
    ``open`` would give (mkstemp alone makes 0600 files). ``what`` names the action in errors."""
    if os.path.isdir(path):
        raise KvmcacheError(f"{path}: is a directory")
    directory = os.path.dirname(os.path.abspath(path)) or "."
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
        )
        os.chmod(tmp, 0o666 & ~_umask())
    except OSError as e:
        raise KvmcacheError(f"{path}: cannot {what}: {e.strerror or e}") from None
    return fd, tmp


def unlink_quietly(path: str) -> None:
    """Remove ``path`` if it is there."""
    try:
        os.unlink(path)
    except OSError:
        pass


@contextmanager
def atomic_open(path: str, mode: str = "w", what: str = "write") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` (``"w"`` text/utf-8 or ``"wb"``); rename on success."""
    fd, tmp = temp_beside(path, what)
    try:
        kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except OSError as e:
        unlink_quietly(tmp)
        raise KvmcacheError(f"{path}: cannot {what}: {e.strerror or e}") from None
    except BaseException:
        unlink_quietly(tmp)
        raise


def write_atomic(path: str, data: str | bytes, what: str = "write") -> None:
    """Write ``data`` (text as utf-8, or bytes) to ``path`` atomically."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", what) as f:
        f.write(data)
