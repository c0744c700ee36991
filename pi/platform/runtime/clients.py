"""Outbound gRPC channels from one service to another.

    channel = service_channel(settings.transactions_target, service_token=settings.service_token)
    stub = transactions_pb2_grpc.TransactionLedgerServiceStub(channel)
    await stub.LookupTransaction(request)            # deadline 5 s unless `timeout=` given

Every call on the channel carries `authorization: Bearer <service token>` (when given)
and a deadline. A target listing several addresses, one per replica
(`ipv4:127.0.0.1:50052,127.0.0.1:50152`), is balanced call by call (`round_robin`)
instead of gRPC's default `pick_first`, which would send everything to one replica.
Build channels in the composition root; `await channel.close()` at exit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc

from pi.platform.observability.switch import client_interceptors
from pi.platform.security.mesh import MeshTls

DEFAULT_DEADLINE_SECONDS = 5.0
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
)


def _lists_addresses(target: str) -> bool:
    """Whether the target names several addresses (`ipv4:a,b`, `ipv6:[a],[b]`)."""
    return "," in target


class _CallDefaults(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the service credential and a default deadline to every unary call."""

    def __init__(self, authorization: str | None, deadline: float) -> None:
        self._authorization = authorization
        self._deadline = deadline

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        metadata = list(client_call_details.metadata or ())
        if self._authorization is not None and not any(
            key == "authorization" for key, _ in metadata
        ):
            metadata.append(("authorization", self._authorization))
        timeout = client_call_details.timeout
        details = grpc.aio.ClientCallDetails(
            method=client_call_details.method,
            timeout=self._deadline if timeout is None else timeout,
            metadata=grpc.aio.Metadata(*metadata),
            credentials=client_call_details.credentials,
            wait_for_ready=client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


def service_channel(
    target: str,
    *,
    service_token: str | None = None,
    deadline: float = DEFAULT_DEADLINE_SECONDS,
    options: Sequence[tuple[str, Any]] = (),
    tls: MeshTls | None = None,
    server_name: str | None = None,
) -> grpc.aio.Channel:
    """A grpc.aio channel to another Pi service.

    With `tls` (this process's mesh identity), mutual TLS: the channel presents this
    process's certificate and accepts only a server whose certificate, issued by the mesh
    CA, names `server_name` (the service meant, e.g. "auth"), whatever address `target`
    gives. Without, plaintext (a single service's tests on loopback).
    Call inside a running event loop (the composition root's async main).
    """
    authorization = f"Bearer {service_token}" if service_token else None
    balancing: list[tuple[str, Any]] = []
    if _lists_addresses(target) and not any(name == "grpc.lb_policy_name" for name, _ in options):
        balancing.append(("grpc.lb_policy_name", "round_robin"))
    all_options = [*CHANNEL_OPTIONS, *balancing, *options]
    interceptors = [_CallDefaults(authorization, deadline), *client_interceptors()]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=all_options, interceptors=interceptors)
    if server_name:
        all_options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(
        target, tls.channel_credentials(), options=all_options, interceptors=interceptors
    )
