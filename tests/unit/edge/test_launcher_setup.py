"""`make run` preparation: dev secrets, ports and addresses, the printed example."""

from __future__ import annotations

import io
import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pi.launcher import __main__ as cli
from pi.launcher import demo
from pi.launcher.console import Console, describe_exit
from pi.launcher.database import embedded_postgres
from pi.launcher.identities import service_env
from pi.launcher.options import LaunchOptions, generated_dir
from pi.launcher.preflight import LaunchError, busy_ports, data_store, prepare
from pi.launcher.secrets import REQUIRED, ensure_dev_secrets, read_env_file
from pi.platform.config import SERVICE_PORTS, parse_master_keys


def test_dev_secrets_are_generated_once_with_owner_only_permissions(tmp_path: Path) -> None:
    path = tmp_path / "var" / "dev-secrets.env"
    first = ensure_dev_secrets(path)
    assert set(first) == set(REQUIRED)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = [first[f"PI_MASTER_KEYS_{service.upper()}"] for service in SERVICE_PORTS]
    assert all(len(parse_master_keys(k)[1]) == 32 for k in keys)
    assert len(set(keys)) == len(keys), "each service has master keys of its own"
    assert "PI_SERVICE_TOKEN" not in first  # services are known by their certificates
    assert ensure_dev_secrets(path) == first
    assert read_env_file(path) == first


def test_a_var_dir_from_before_the_split_keeps_its_one_master_key(tmp_path: Path) -> None:
    path = tmp_path / "dev-secrets.env"
    path.write_text("PI_ADMIN_TOKEN=adm_x\nPI_MASTER_KEYS=1=old\n")
    values = ensure_dev_secrets(path)
    assert values == {"PI_ADMIN_TOKEN": "adm_x", "PI_MASTER_KEYS": "1=old"}
    env = service_env(LaunchOptions(var_dir=tmp_path), values, "payments")
    assert env["PI_MASTER_KEYS"] == "1=old"


def test_each_process_gets_only_its_own_secrets_identity_and_database_role(
    tmp_path: Path,
) -> None:
    options = LaunchOptions(root=tmp_path)
    secrets = ensure_dev_secrets(tmp_path / "dev-secrets.env")
    embedded = f"postgresql://postgres@/pi?host={options.postgres_dir}&port=5432"
    env = {**secrets, "PI_SERVICE_TOKEN": "svc_legacy", "DATABASE_URL": embedded, "X": "y"}
    seen = {}
    for service in SERVICE_PORTS:
        own = service_env(options, env, service)
        seen[service] = own["PI_MASTER_KEYS"]
        assert own["PI_MASTER_KEYS"] == secrets[f"PI_MASTER_KEYS_{service.upper()}"]
        assert not any(k.startswith("PI_MASTER_KEYS_") for k in own), own.keys()
        assert "PI_SERVICE_TOKEN" not in own
        assert ("PI_ADMIN_TOKEN" in own) == (service == "auth")
        assert own["PI_TLS_CERT"].endswith(f"mesh/{service}.pem")
        assert own["DATABASE_URL"].startswith(f"postgresql://pi_{service}@/pi?host=")
        assert own["X"] == "y"
        migrating = service_env(options, env, service, migrate=True)
        assert migrating["DATABASE_URL"] == embedded
        assert migrating["PI_DB_SERVICE_ROLE"] == f"pi_{service}"
    assert len(set(seen.values())) == 3
    # A DATABASE_URL of the user's own is used as given: no roles are made there.
    external = {**env, "DATABASE_URL": "postgresql://me:pw@db:5432/pi"}
    assert service_env(options, external, "auth")["DATABASE_URL"] == external["DATABASE_URL"]
    assert "PI_DB_SERVICE_ROLE" not in service_env(options, external, "auth", migrate=True)


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


def test_the_default_ports_are_the_documented_ones() -> None:
    options = LaunchOptions()
    assert {s: options.port(s, 0) for s in SERVICE_PORTS} == dict(SERVICE_PORTS)


def test_a_port_base_moves_every_service_and_replica_and_envoy_follows() -> None:
    options = LaunchOptions(grpc_port_base=20000, replicas=2)
    assert [options.port(s, 0) for s in ("auth", "transactions", "payments")] == [
        20000,
        20001,
        20002,
    ]
    assert options.target("payments") == "ipv4:127.0.0.1:20002,127.0.0.1:20102"
    assert {s: [e.port for e in endpoints] for s, endpoints in options.upstreams().items()} == {
        "auth": [20000, 20100],
        "transactions": [20001, 20101],
        "payments": [20002, 20102],
    }


def test_the_port_base_comes_from_the_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[LaunchOptions] = []

    async def fake_launch(options: LaunchOptions) -> int:
        seen.append(options)
        return 0

    monkeypatch.setattr(cli, "launch", fake_launch)
    monkeypatch.delenv("PI_GRPC_PORT_BASE", raising=False)
    assert cli.main([]) == 0
    monkeypatch.setenv("PI_GRPC_PORT_BASE", "21000")
    assert cli.main([]) == 0
    assert cli.main(["--grpc-port-base", "22000", "--var-dir", "/tmp/pi-x"]) == 0
    assert [o.grpc_port_base for o in seen] == [50051, 21000, 22000]
    assert seen[-1].var == Path("/tmp/pi-x")


def test_the_embedded_postgres_lives_in_the_var_dir_unless_database_url_is_set(
    tmp_path: Path,
) -> None:
    options = LaunchOptions(root=tmp_path, var_dir=Path("state"))
    assert options.var == tmp_path / "state"
    assert options.postgres_dir == tmp_path / "state" / "postgres"
    assert data_store(options, {}) == f"an embedded PostgreSQL in {tmp_path / 'state' / 'postgres'}"
    exported = {"DATABASE_URL": "postgresql://u:secret@db/pi"}
    assert data_store(options, exported) == "PostgreSQL (DATABASE_URL)"
    absolute = LaunchOptions(root=tmp_path, var_dir=Path("/srv/pi"))
    assert absolute.postgres_dir == Path("/srv/pi/postgres")


def test_the_embedded_postgres_has_room_for_every_replicas_pool(tmp_path: Path) -> None:
    def sized(replicas: int, env: dict[str, str]) -> int:
        server = embedded_postgres(
            tmp_path / "pg", env, processes=3 * replicas, log_dir=tmp_path / "log"
        )
        return server.max_connections

    assert sized(1, {}) == 100  # PostgreSQL's own default covers 3 x 20
    assert sized(3, {}) == 9 * 21 + 6 + 10
    assert sized(3, {"PI_DB_POOL_SIZE": "50"}) == 9 * 51 + 6 + 10
    assert sized(1, {"PI_DB_POOL_SIZE": "lots"}) == 100  # the services refuse it anyway


def test_generated_files_are_found_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert (generated_dir() / "__init__.py").is_file()
    assert generated_dir().is_absolute()
    assert LaunchOptions().generated == generated_dir()


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_values(node: Any) -> set[int]:
    if isinstance(node, dict):
        found = {node["port_value"]} if "port_value" in node else set()
        return found.union(*(_port_values(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_port_values(v) for v in node))
    return set()


def test_prepare_keeps_every_file_in_the_var_dir_and_points_envoy_at_the_port_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (generated_dir() / "descriptors.binpb").is_file():
        pytest.skip("generated/descriptors.binpb is missing (make proto)")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    http, https, admin, base = _free_ports(4)
    options = LaunchOptions(
        var_dir=tmp_path / "state",
        grpc_port_base=base,
        http_port=http,
        https_port=https,
        admin_port=admin,
    )
    console = io.StringIO()
    env = prepare(options, Console(console))

    state = tmp_path / "state"
    assert {p.name for p in state.iterdir()} == {"dev-secrets.env", "certs", "envoy.json"}
    assert list(cwd.iterdir()) == []
    bootstrap = json.loads((state / "envoy.json").read_text())
    assert {base, base + 1, base + 2, http, https, admin} <= _port_values(bootstrap)
    assert 50051 not in _port_values(bootstrap)
    assert env["PI_TRANSACTIONS_TARGET"] == f"127.0.0.1:{base + 1}"
    # `make run` is explicit development mode, where hand-set weak secrets still start.
    assert env["PI_ENVIRONMENT"] == "development"
    assert f"an embedded PostgreSQL in {state / 'postgres'}" in console.getvalue()


def test_prepare_refuses_ports_used_twice(tmp_path: Path) -> None:
    options = LaunchOptions(var_dir=tmp_path, grpc_port_base=30000, http_port=30001)
    with pytest.raises(LaunchError, match="30001"):
        prepare(options, Console(io.StringIO()))


def test_ports_in_use_are_detected() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert busy_ports([port]) == [port]
    assert busy_ports([port]) == []


def test_exit_codes_are_described_for_people() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(2) == "exited with 2"


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
