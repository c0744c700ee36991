"""Server bootstrap: health, reflection, background tasks, graceful drain, SIGTERM."""

import asyncio
import base64
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.platform.config import ServiceSettings
from pi.platform.runtime.clients import service_channel
from pi.platform.runtime.interceptors import AuthInterceptor
from pi.platform.runtime.server import serve
from pi.platform.security.tokens import RevocationList, StaticKeySource, TokenVerifier

AUTH_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
REPO = Path(__file__).resolve().parents[3]


class _Slow(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self) -> None:
        self.seen: list[tuple[str | None, float | None]] = []

    async def GetJwks(self, request: Any, context: Any) -> Any:
        await asyncio.sleep(0.5)
        return auth_pb2.GetJwksResponse(keys=[auth_pb2.JsonWebKey(kid="done")])

    async def ListApiKeys(self, request: Any, context: Any) -> Any:
        metadata = dict(context.invocation_metadata())
        self.seen.append((metadata.get("authorization"), context.time_remaining()))
        return auth_pb2.ListApiKeysResponse()


async def test_serve_health_reflection_background_and_graceful_drain(
    settings_factory: Callable[..., ServiceSettings],
) -> None:
    settings = settings_factory("auth", database_url="postgresql://unused@127.0.0.1:1/unused")
    servicer = _Slow()  # type: ignore[abstract]  # implements only what the test calls
    stop = asyncio.Event()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    background_runs: list[str] = []

    async def crashes_once() -> None:
        background_runs.append("crash")
        if len(background_runs) == 1:
            raise RuntimeError("boom")
        await asyncio.Event().wait()

    verifier = TokenVerifier(StaticKeySource(), RevocationList(), "i", "a")
    server_task = asyncio.create_task(
        serve(
            settings,
            register=lambda s: auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, s),
            service_names=[AUTH_SERVICE],
            interceptors=[
                AuthInterceptor(
                    verifier,
                    settings.admin_token,
                    settings.service_token,
                    ["/pi.auth.v1.AuthService/GetJwks"],
                )
            ],
            background=[crashes_once],
            grace=5,
            stop=stop,
            on_started=started.set_result,
        )
    )
    port = await asyncio.wait_for(started, 5)
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(target)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", AUTH_SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        listed: list[str] = []
        async for response in reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        ):
            listed = [s.name for s in response.list_services_response.service]
        assert AUTH_SERVICE in listed and "grpc.health.v1.Health" in listed

        # The service channel adds the service token and a default deadline.
        client = service_channel(target, service_token=settings.service_token)
        await auth_pb2_grpc.AuthServiceStub(client).ListApiKeys(auth_pb2.ListApiKeysRequest())
        await auth_pb2_grpc.AuthServiceStub(client).ListApiKeys(
            auth_pb2.ListApiKeysRequest(), timeout=1.0
        )
        await client.close()
        (auth1, remaining1), (_, remaining2) = servicer.seen
        assert auth1 == f"Bearer {settings.service_token}"
        assert remaining1 is not None and 4 < remaining1 <= 5.1
        assert remaining2 is not None and remaining2 <= 1.1

        for _ in range(50):
            if len(background_runs) >= 2:
                break
            await asyncio.sleep(0.1)
        assert background_runs == ["crash", "crash"]  # restarted after crashing

        watch = health.Watch(health_pb2.HealthCheckRequest(service=AUTH_SERVICE))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        in_flight = asyncio.ensure_future(
            auth_pb2_grpc.AuthServiceStub(channel).GetJwks(auth_pb2.GetJwksRequest())
        )
        await asyncio.sleep(0.1)
        stop.set()
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()  # an open Watch stream would otherwise hold the drain for `grace`
        assert (await in_flight).keys[0].kid == "done"  # drained, not cut off
        await asyncio.wait_for(server_task, 10)
    finally:
        await channel.close()
        if not server_task.done():
            stop.set()
            await server_task


SERVE_SCRIPT = textwrap.dedent(
    """
    import sys
    from pi.auth.settings import AuthSettings
    from pi.platform.runtime.logging import configure
    from pi.platform.runtime.server import run, serve

    async def main():
        settings = AuthSettings.from_env()
        configure(settings)
        await serve(settings, lambda s: None, [], on_started=lambda p: print(p, flush=True))

    run(main)
    print("exited cleanly", flush=True)
    """
)


def test_sigterm_drains_and_exits_cleanly(
    settings_factory: Callable[..., ServiceSettings],
) -> None:
    unused = "postgresql://unused@127.0.0.1:1/unused"  # the server opens no database
    base = settings_factory("auth", database_url=unused)
    env = {
        **os.environ,
        "DATABASE_URL": unused,
        "PI_ADMIN_TOKEN": base.admin_token,
        "PI_SERVICE_TOKEN": base.service_token,
        "PI_MASTER_KEYS": "1=" + base64.b64encode(os.urandom(32)).decode(),
        "PI_GRPC_PORT": "0",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "exited cleanly" in out
        assert '"message": "draining"' in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
