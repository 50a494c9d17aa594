"""Imported by the multiprocessing fork server of ``kvmcache sweep --jobs N``.

It loads and warms the replay kernels once, in the fork server, so every worker process
forked from it starts with them in memory. The fork server runs no threads, so forking
it is safe for numba (which is why workers are never forked from the CLI process itself).
A failure here must not kill the fork server: workers then warm up themselves.
"""

from __future__ import annotations

try:
    from kvmcache.sim.sweep import warm_up

    warm_up()
except Exception:  # pragma: no cover - the worker initializer retries and reports
    pass
