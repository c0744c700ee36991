"""Whether this process's servers and channels get the observability interceptors.

On unless `telemetry.start` was given PI_OBSERVABILITY=off (the bench's "off" run), so
tests and tools that build servers directly are observed like the services are.
"""

from __future__ import annotations

import grpc

from pi.platform.observability.interceptors import ClientObservability, ServerObservability

_enabled = True


def set_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """To install first on a server (before the error interceptor)."""
    return [ServerObservability()] if _enabled else []


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """To install on a channel to another service."""
    return [ClientObservability()] if _enabled else []
