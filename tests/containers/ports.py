"""The ports the manifests' pods listen on, kept free on this machine for the container tier.

The pods run with the host's network (tests/containers/podman.py), so every port they listen
on must be free here. 50051-50053 and 51051-51053 lie in Linux's ephemeral port range: any
outbound connection the suite opened earlier (a pool, a channel) may have been given one as
its local port, and holds it for as long as it lives, which made the tier fail at random.

So the tier reserves them: `reserve()` binds each port that the kernel could hand out, from
the moment the tier's conftest is loaded (before any test runs). A bound port is one that
neither `connect()` nor a bind to port 0 picks. The test releases them just before its
pods start and reserves them again once they are removed. Ports below the range are never
handed out and are only checked.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

# gRPC, health-only, metrics, the edge's (TLS, cleartext, admin, web).
POD_PORTS = (50051, 50052, 50053, 9051, 9052, 9053, 51051, 51052, 51053, 8080, 8443, 9901, 9902)

_held: dict[int, socket.socket] = {}


def ephemeral_range() -> range:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return range(int(low), int(high) + 1)


def reserve() -> None:
    """Bind the pod ports the kernel could give out as local ports, without listening. A
    bound port is skipped by `connect()` and by binds to port 0 alike; SO_REUSEADDR lets a
    port be taken back over the TIME_WAIT connections of pods just removed. A port still
    in use is left alone (the test reports it)."""
    ephemeral = ephemeral_range()
    for port in POD_PORTS:
        if port not in ephemeral or port in _held:
            continue
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("0.0.0.0", port))
        except OSError:
            holder.close()
            continue
        _held[port] = holder


def release() -> None:
    """Give the reserved ports back so the pods can bind them (a socket that never listened
    or connected leaves no TIME_WAIT behind)."""
    while _held:
        _, holder = _held.popitem()
        holder.close()


def port_is_free(port: int) -> bool:
    """Whether a server could listen on `port`. With SO_REUSEADDR, as servers bind: the
    connections a stopped pod closed linger in TIME_WAIT for a minute and do not count,
    a live listener or a live connection does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def busy_ports(wait: float = 10.0) -> list[int]:
    """The pod ports still taken after up to `wait` seconds (a removed container's
    sockets close a moment after `podman rm` returns)."""
    deadline = time.monotonic() + wait
    while True:
        busy = [port for port in POD_PORTS if not port_is_free(port)]
        if not busy or time.monotonic() >= deadline:
            return busy
        time.sleep(0.5)
