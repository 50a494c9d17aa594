"""Writing a report file atomically (see :mod:`kvmcache.atomic`)."""

from __future__ import annotations

from kvmcache.atomic import atomic_open, write_atomic

__all__ = ["atomic_open", "write_atomic"]
