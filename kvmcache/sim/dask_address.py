"""Checking a Dask scheduler address before any connection is tried (``sweep --scheduler``)."""

from __future__ import annotations

import re

from kvmcache.errors import KvmcacheError

#: Schemes whose location is HOST:PORT (Dask's tcp, tls, websocket and UCX backends).
HOST_PORT_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "ucxx")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.%A-Za-z]+\]|[A-Za-z0-9_.-]+)$")
FORMS = "tcp://HOST:PORT, tls://HOST:PORT, inproc://ADDRESS or HOST:PORT"


def check_address(address: str) -> None:
    """Refuse an obviously malformed scheduler address at once, with one line; Dask itself
    judges the rest (an unknown scheme, a host that does not resolve, a refused connection)."""

    def bad(problem: str) -> KvmcacheError:
        return KvmcacheError(
            f"Dask scheduler address {address!r} (--scheduler or DASK_SCHEDULER_ADDRESS): "
            f"{problem}; expected {FORMS}"
        )

    if not address or address != address.strip() or any(c.isspace() for c in address):
        raise bad("empty or contains spaces")
    scheme, sep, loc = address.partition("://")
    if not sep:
        scheme, loc = "tcp", address
    elif not _SCHEME.match(scheme):
        raise bad(f"{scheme!r} is not a URL scheme")
    scheme = scheme.lower()
    if scheme == "inproc":
        if not loc:
            raise bad("inproc:// needs an address")
        return
    if scheme not in HOST_PORT_SCHEMES:
        return  # a transport a Dask plugin may provide: Dask reports it if unknown
    host, colon, port = loc.rpartition(":")
    if not colon:
        raise bad("missing :PORT")
    if not host or not _HOST.match(host):
        raise bad(f"{host!r} is not a host name or address")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise bad(f"port {port!r} is not a number 1..65535")
