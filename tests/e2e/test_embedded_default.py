"""`make run` on a machine with no PostgreSQL or Redis: the embedded default.

`python -m pi.launcher` runs with no DATABASE_URL/REDIS_URL, from an empty working
directory (no `generated/` in it) and with `--var-dir` elsewhere, so the services use an
embedded PostgreSQL with its data in the var dir (on a unix socket there, no TCP port) and
the in-process cache; every port (services and Envoy) is a free one chosen by the test.
The test waits for the demo merchant's credentials in the banner, pays a transaction over
HTTP through Envoy, stops everything with SIGINT (Ctrl-C) and checks that no process is
left, PostgreSQL included; then starts it again and checks that the data survived and the
demo merchant was not recreated.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

SERVICES = ("auth", "transactions", "payments")
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
APPROVE_CARD = "4242424242424242"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        body: bytes = reply.read()
    return body.decode()


def _wait_for_spans(path: Path, services: set[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().splitlines()
            seen = {json.loads(line)["service"] for line in lines if line.strip()}
            if services <= seen:
                return
        time.sleep(0.25)
    raise AssertionError(f"spans of {sorted(services - seen)} never reached {path}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_port_base(avoid: set[int]) -> int:
    """A base port with base, base + 1 and base + 2 free: below Linux's ephemeral range
    (32768-60999), so that no client socket of another test takes one meanwhile."""
    for _ in range(200):
        base = random.randrange(20_000, 32_000)
        # The gRPC ports and the metrics ports (gRPC + 1000).
        ports = {base, base + 1, base + 2, base + 1000, base + 1001, base + 1002}
        if not ports & avoid and not any(_port_busy(port) for port in ports):
            return base
    raise AssertionError("no three consecutive free ports in 20000-32000")


def _port_busy(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _children_of(pid: int) -> set[int]:
    """Live direct children of `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # pid (comm) state ppid ...: comm may contain spaces, so split after ")".
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Launcher:
    """One `python -m pi.launcher` run, its output collected line by line."""

    def __init__(self, cwd: Path, var_dir: Path, ports: dict[str, int]) -> None:
        self.ports = ports
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PI_", "PYTEST_")) and key not in ("DATABASE_URL", "REDIS_URL")
        }
        env.update({"PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "REPLICAS": "1"})
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pi.launcher",
                "--var-dir",
                str(var_dir),
                "--grpc-port-base",
                str(ports["grpc_base"]),
                "--http-port",
                str(ports["http"]),
                "--https-port",
                str(ports["https"]),
                "--admin-port",
                str(ports["admin"]),
                "--edge-metrics-port",
                str(ports["edge_metrics"]),
                "--otlp-port",
                str(ports["otlp"]),
            ],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.children: set[int] = set()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = regex.search("\n".join(self.lines))
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"launcher output never matched {pattern!r} "
                        f"(exit {self.process.poll()}):\n{chr(10).join(self.lines)[-6000:]}"
                    )
                self._changed.wait(min(left, 0.5))

    def credentials(self) -> dict[str, str]:
        """The demo merchant of the banner, once the banner is complete."""
        self.wait_for(r"^Try it:\n(?:  .+\n)+")  # its curl example, then a blank line
        secret = self.wait_for(r"^\s*API key secret\s+(\S+)\s*$")
        key = self.wait_for(r"^\s*API key id\s+(\S+)\s*$")
        merchant = self.wait_for(r"^Demo merchant (\S+)")
        self.children = _children_of(self.process.pid)
        return {"merchant_id": merchant[1], "api_key_id": key[1], "api_key_secret": secret[1]}

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT to the launcher only, as a terminal sends it to the foreground job."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(STOP_TIMEOUT)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        """Teardown after a failure: the launcher and every child it had, by PID."""
        pids = self.children | _children_of(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory: the launcher must find `generated/` without it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return cwd


@pytest.fixture
def ports() -> dict[str, int]:
    """Envoy's ports and the services' base port (auth; transactions +1, payments +2)."""
    envoy = {
        "http": _free_port(),
        "https": _free_port(),
        "admin": _free_port(),
        "edge_metrics": _free_port(),
        "otlp": _free_port(),
    }
    return {**envoy, "grpc_base": _free_port_base(set(envoy.values()))}


def _service_ports(ports: dict[str, int]) -> list[int]:
    return [ports["grpc_base"] + offset for offset in range(len(SERVICES))]


@pytest.fixture
def launchers() -> Iterator[list[Launcher]]:
    started: list[Launcher] = []
    yield started
    for launcher in started:
        launcher.kill()


@pytest.fixture
def var_dir() -> Iterator[Path]:
    """The launcher's var dir, directly under the temp dir: the database's unix socket
    lives in it, and its path must stay short."""
    path = Path(tempfile.mkdtemp(prefix="pi-run-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_make_run_on_embedded_postgres_pays_stops_cleanly_and_keeps_its_data(
    var_dir: Path,
    json_call: Any,
    workdir: Path,
    ports: dict[str, int],
    launchers: list[Launcher],
) -> None:
    base = f"http://127.0.0.1:{ports['http']}"

    first = Launcher(workdir, var_dir, ports)
    launchers.append(first)
    demo = first.credentials()
    assert f"an embedded PostgreSQL in {var_dir / 'postgres'}" in first.output, first.output
    assert re.search(r"postgres +started in", first.output), first.output
    assert "in-process cache" in first.output, first.output
    for port in _service_ports(ports):
        assert f":{port}" in first.output, first.output
    assert f"curl -s {base}/v1/auth/token" in first.output, first.output

    # One payment over HTTP/JSON through the launcher's Envoy, with the printed credentials.
    token = json_call(
        base,
        "POST",
        "/v1/auth/token",
        {"apiKeyId": demo["api_key_id"], "apiKeySecret": demo["api_key_secret"]},
    )["accessToken"]
    transaction = json_call(
        base, "POST", "/v1/transactions", {"amount": "1250", "currency": "USD"}, token=token
    )["transaction"]
    payment = json_call(
        base,
        "POST",
        "/v1/payments",
        {
            "transactionId": transaction["id"],
            "method": "PAYMENT_METHOD_TYPE_CARD",
            "card": {"number": APPROVE_CARD, "expMonth": 12, "expYear": 2034, "cvc": "123"},
        },
        token=token,
    )["payment"]
    assert payment["status"] == "PAYMENT_STATUS_SUCCEEDED", payment
    shown = _poll_captured(json_call, base, token, transaction["id"])
    assert shown["status"] == "TRANSACTION_STATUS_COMPLETED", shown

    # The banner lists every metrics URL; they answer, and the edge's and the services'
    # spans of that payment reach the trace file under the var dir.
    metrics = dict(re.findall(r"^  (\S+-0|envoy) +(http://\S+)$", first.output, re.MULTILINE))
    assert set(metrics) == {"auth-0", "transactions-0", "payments-0", "envoy"}, first.output
    scraped = _get(metrics["payments-0"])
    assert 'pi_payments_total{capture_mode="AUTOMATIC",failure_reason="",method="CARD",' in scraped
    assert "envoy_http_downstream_rq_total" in _get(metrics["envoy"])
    traces = var_dir / "traces" / "spans.jsonl"
    assert str(traces) in first.output, first.output
    _wait_for_spans(traces, {"pi-edge", "payments", "transactions"})

    # The curl example of the banner works as printed.
    if shutil.which("curl"):
        created = _run_curl_example(first.output)
        assert created["transaction"]["amount"] == "1250", created
        assert created["transaction"]["merchantId"] == demo["merchant_id"], created

    # Secrets, certificate, logs and the database are all in the var dir; the working
    # directory is left alone. The database listens on its socket there, on no TCP port.
    for name in (
        "dev-secrets.env",
        "certs/ca.pem",
        "log/auth-0.log",
        "log/postgres.log",
        "demo-merchant.json",
        "postgres/PG_VERSION",
    ):
        assert (var_dir / name).is_file(), sorted(var_dir.rglob("*"))
    socket_path = var_dir / "postgres" / ".s.PGSQL.5432"
    assert socket_path.is_socket()
    assert list(workdir.iterdir()) == [], sorted(workdir.rglob("*"))

    # Ctrl-C: everything stops, nothing is left behind, the ports are free again.
    children = first.children
    assert len(children) >= 5, f"expected PostgreSQL, 3 services and Envoy: {children}"
    assert first.interrupt() == 0, first.output
    assert "postgres        stopped" in first.output.splitlines()[-1], first.output[-2000:]
    leftover = [pid for pid in children if _alive(pid)]
    assert not leftover, f"processes left after Ctrl-C: {leftover}"
    assert not socket_path.exists(), "PostgreSQL still listens after Ctrl-C"
    envoy_ports = (ports["http"], ports["https"], ports["admin"])
    busy = [p for p in (*_service_ports(ports), *envoy_ports) if _port_busy(p)]
    assert not busy, f"ports still bound after Ctrl-C: {busy}"

    # A restart keeps the data and the demo merchant.
    second = Launcher(workdir, var_dir, ports)
    launchers.append(second)
    again = second.credentials()
    assert again == demo, (demo, again)
    assert "creating a new one" not in second.output, second.output
    token = json_call(
        base,
        "POST",
        "/v1/auth/token",
        {"apiKeyId": demo["api_key_id"], "apiKeySecret": demo["api_key_secret"]},
    )["accessToken"]
    kept = json_call(base, "GET", f"/v1/transactions/{transaction['id']}", token=token)
    assert kept["transaction"]["capturedAmount"] == "1250", kept
    kept_payment = json_call(base, "GET", f"/v1/payments/{payment['id']}", token=token)
    assert kept_payment["payment"]["status"] == "PAYMENT_STATUS_SUCCEEDED", kept_payment

    children = second.children
    assert second.interrupt() == 0, second.output
    leftover = [pid for pid in children if _alive(pid)]
    assert not leftover, f"processes left after Ctrl-C: {leftover}"

    # Both runs stopped without a traceback in any service log.
    for log in sorted((var_dir / "log").glob("*.log")):
        assert "Traceback" not in log.read_text(errors="replace"), f"{log}:\n{log.read_text()}"


def _run_curl_example(output: str) -> dict[str, Any]:
    """The shell commands after "Try it:" in the banner, run as a user would paste them."""
    lines = output.split("Try it:", 1)[1].strip("\n").splitlines()
    script = "\n".join(line[2:] for line in itertools.takewhile(str.strip, lines))
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _poll_captured(call: Any, base: str, token: str, txn_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        reply = call(base, "GET", f"/v1/transactions/{txn_id}", token=token)
        transaction: dict[str, Any] = reply["transaction"]
        if transaction["capturedAmount"] != "0" or time.monotonic() > deadline:
            return transaction
        time.sleep(0.1)


@pytest.fixture
def json_call() -> Any:
    """`call(base, method, path, body=None, token=None)` → the JSON body of a 200."""
    import http.client
    from urllib.parse import urlsplit

    def call(
        base: str, method: str, path: str, body: Any = None, token: str | None = None
    ) -> dict[str, Any]:
        url = urlsplit(base)
        connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=15)
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        try:
            connection.request(
                method, path, body=None if body is None else json.dumps(body), headers=headers
            )
            reply = connection.getresponse()
            text = reply.read().decode()
        finally:
            connection.close()
        assert reply.status == 200, f"{method} {path}: {reply.status} {text}"
        result: dict[str, Any] = json.loads(text)
        return result

    return call
