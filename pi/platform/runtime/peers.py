"""Who is on the other end of a call, by network address: the subject of per-client limits.

Behind the edge the peer is Envoy, so the client is the *last* entry of
`x-forwarded-for`: Envoy runs with `use_remote_address` and zero trusted hops, so it
appends the address of the connection it accepted and whatever a client wrote before it
is never read here. Without that header (a direct gRPC call inside the mesh) the gRPC
peer address is the client.
"""

from __future__ import annotations

import ipaddress
from typing import Any

FORWARDED_FOR = "x-forwarded-for"


def client_address(metadata: Any, peer: str | None) -> str:
    """The caller's IP address as text ("unknown" if there is none to be found)."""
    forwarded = None
    for key, value in metadata or ():
        if key == FORWARDED_FOR and isinstance(value, str):
            forwarded = value  # several headers: the last one is Envoy's
    if forwarded:
        last = forwarded.rsplit(",", 1)[-1].strip()
        normalised = _ip(last)
        if normalised is not None:
            return normalised
    return _peer_ip(peer or "")


def _peer_ip(peer: str) -> str:
    """ "ipv4:10.0.0.1:5000" / "ipv6:[::1]:5000" / "unix:/path" → the address."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return _ip(rest.rpartition(":")[0]) or "unknown"
    if kind == "ipv6":
        return _ip(rest.rpartition(":")[0].strip("[]")) or "unknown"
    return "local" if kind == "unix" else "unknown"


def _ip(text: str) -> str | None:
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        # One subscriber usually holds a whole /64: count it as one client.
        return str(ipaddress.ip_network(f"{address}/64", strict=False).network_address) + "/64"
    return str(address)
