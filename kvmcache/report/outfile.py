"""Writing a report file atomically: a temporary file in the same directory, then a rename."""

from __future__ import annotations

import os
import tempfile

from kvmcache.errors import KvmcacheError


def write_atomic(path: str, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise KvmcacheError(f"{path}: is a directory")
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
        )
    except OSError as e:
        raise KvmcacheError(f"{path}: cannot write: {e.strerror or e}") from None
    try:
        mode = "wb" if isinstance(data, bytes) else "w"
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        _unlink(tmp)
        raise KvmcacheError(f"{path}: cannot write: {e.strerror or e}") from None
    except BaseException:
        _unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
