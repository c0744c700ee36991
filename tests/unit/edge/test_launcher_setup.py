"""`make run` preparation: dev secrets, ports and addresses, the printed example."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

from pi.launcher import demo
from pi.launcher.app import LaunchOptions, _busy_ports, _describe_exit
from pi.launcher.secrets import REQUIRED, ensure_dev_secrets, read_env_file
from pi.platform.config import parse_master_keys


def test_dev_secrets_are_generated_once_with_owner_only_permissions(tmp_path: Path) -> None:
    path = tmp_path / "var" / "dev-secrets.env"
    first = ensure_dev_secrets(path)
    assert set(first) == set(REQUIRED)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first["PI_ADMIN_TOKEN"] != first["PI_SERVICE_TOKEN"]
    assert len(parse_master_keys(first["PI_MASTER_KEYS"])[1]) == 32
    assert ensure_dev_secrets(path) == first
    assert read_env_file(path) == first


def test_missing_dev_secrets_are_added_without_replacing_the_others(tmp_path: Path) -> None:
    path = tmp_path / "dev-secrets.env"
    path.write_text("# mine\nPI_ADMIN_TOKEN=keep-me\n")
    values = ensure_dev_secrets(path)
    assert values["PI_ADMIN_TOKEN"] == "keep-me"
    assert set(values) == set(REQUIRED)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_replicas_listen_100_ports_apart_and_services_see_all_of_them() -> None:
    single = LaunchOptions(replicas=1)
    assert single.target("payments") == "127.0.0.1:50053"
    triple = LaunchOptions(replicas=3)
    assert [triple.port("auth", i) for i in range(3)] == [50051, 50151, 50251]
    assert triple.target("auth") == "ipv4:127.0.0.1:50051,127.0.0.1:50151,127.0.0.1:50251"


def test_ports_in_use_are_detected() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert _busy_ports([port]) == [port]
    assert _busy_ports([port]) == []


def test_exit_codes_are_described_for_people() -> None:
    assert _describe_exit(-9) == "killed by SIGKILL"
    assert _describe_exit(2) == "exited with 2"


def test_the_curl_example_gets_a_token_then_creates_a_transaction() -> None:
    merchant = demo.DemoMerchant("mer_1", "key_1", "sk_secret")
    example = demo.curl_example("http://127.0.0.1:8080", merchant)
    assert '"apiKeyId":"key_1","apiKeySecret":"sk_secret"' in example
    assert "http://127.0.0.1:8080/v1/auth/token" in example
    assert "http://127.0.0.1:8080/v1/transactions" in example
    assert "authorization: Bearer $TOKEN" in example


def test_the_demo_merchant_file_is_private_and_round_trips(tmp_path: Path) -> None:
    merchant = demo.DemoMerchant("mer_1", "key_1", "sk_secret")
    path = tmp_path / "demo-merchant.json"
    demo.save(path, merchant)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert demo.load(path) == merchant
    path.write_text("{}")
    assert demo.load(path) is None
