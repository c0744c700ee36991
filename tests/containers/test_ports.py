"""The pod ports' reservation (tests/containers/ports.py) does what the tier relies on: no
outbound connection and no bind to port 0 is given a reserved port, and a released port
is a pod's to bind at once.

The kernel's choice is forced by running the check in a network namespace of its own
(`unshare -n`, root) whose ephemeral range is narrowed to 50050-50054: the three pod
ports in it are reserved, so the two others are all there is to hand out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHECK = """
import socket, subprocess
from tests.containers import ports
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
open("/proc/sys/net/ipv4/ip_local_port_range", "w").write("50050 50054")
ports.reserve()
server = socket.socket(); server.bind(("127.0.0.1", 9999)); server.listen(16)
given, sockets = [], []
for _ in range(6):
    client = socket.socket()
    try:
        client.connect(("127.0.0.1", 9999))
    except OSError:
        break
    sockets.append(client)
    given.append(client.getsockname()[1])
for _ in range(6):
    bound = socket.socket()
    try:
        bound.bind(("127.0.0.1", 0))
    except OSError:
        break
    sockets.append(bound)
    given.append(bound.getsockname()[1])
print(*sorted(set(given)))
ports.release()
pod = socket.socket()
pod.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
pod.bind(("0.0.0.0", 50052)); pod.listen(); print("pod bound")
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root")
def test_no_connection_is_given_a_reserved_port_and_a_released_one_is_free() -> None:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed")
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", CHECK],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    given, bound = done.stdout.splitlines()
    # 50051-50053 are pod ports: only 50050 and 50054 are ever handed out.
    assert given and {int(port) for port in given.split()} <= {50050, 50054}, given
    assert bound == "pod bound"
