"""The `make run` supervisor, driven with stub processes instead of the services."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pi.launcher.supervisor import Backoff, ProcessSpec, State, Supervised, tail


async def _always(value: bool) -> bool:
    return value


def _spec(tmp_path: Path, code: str, *, healthy: bool = True, name: str = "stub") -> ProcessSpec:
    async def probe() -> bool:
        return healthy

    return ProcessSpec(
        name=name,
        argv=[sys.executable, "-c", textwrap.dedent(code)],
        log_path=tmp_path / f"{name}.log",
        probe=probe,
    )


class _States:
    def __init__(self) -> None:
        self.seen: list[State] = []

    def __call__(self, proc: Supervised) -> None:
        self.seen.append(proc.state)


async def _eventually(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_a_healthy_process_is_reported_healthy_and_stopped_with_sigterm(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "got-sigterm"
    code = f"""
        import signal, sys, time
        def bye(*_):
            open({str(marker)!r}, "w").close()
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        print("up", flush=True)
        while True:
            time.sleep(0.05)
    """
    states = _States()
    proc = Supervised(_spec(tmp_path, code), states, probe_interval=0.05)
    runner = asyncio.create_task(proc.run())
    assert await proc.wait_healthy(10)
    assert proc.state is State.HEALTHY and proc.pid is not None
    await _eventually(lambda: "up" in "".join(tail(proc.spec.log_path)))
    await proc.stop(grace=5)
    await runner
    assert marker.exists()
    assert proc.state is State.STOPPED
    assert proc.restarts == 0
    assert states.seen[:2] == [State.STARTING, State.HEALTHY]
    assert states.seen[-2:] == [State.STOPPING, State.STOPPED]


async def test_a_crashing_process_is_restarted_with_growing_backoff(tmp_path: Path) -> None:
    states = _States()
    proc = Supervised(
        _spec(tmp_path, "import sys; print('boom', flush=True); sys.exit(3)", healthy=False),
        states,
        probe_interval=0.05,
        backoff=Backoff(initial=0.05, maximum=0.2),
    )
    runner = asyncio.create_task(proc.run())
    await _eventually(lambda: proc.restarts >= 4)
    await proc.stop(grace=1)
    await runner
    assert proc.last_exit == 3
    assert State.BACKOFF in states.seen
    assert "boom" in tail(proc.spec.log_path)


def test_backoff_doubles_up_to_the_maximum_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(initial=1, maximum=8, stable_after=30)
    assert [backoff.delay(ran_for=0.1) for _ in range(5)] == [1, 2, 4, 8, 8]
    assert backoff.delay(ran_for=60) == 1


async def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(
    tmp_path: Path,
) -> None:
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stubborn", flush=True)
        while True:
            time.sleep(0.05)
    """
    proc = Supervised(_spec(tmp_path, code), lambda _: None, probe_interval=0.05)
    runner = asyncio.create_task(proc.run())
    await _eventually(lambda: "stubborn" in tail(proc.spec.log_path))
    started = time.monotonic()
    await proc.stop(grace=0.5)
    await runner
    assert 0.4 < time.monotonic() - started < 5
    assert proc.last_exit == -signal.SIGKILL


def test_children_die_with_the_launcher(tmp_path: Path) -> None:
    """Even a SIGKILLed launcher leaves no orphans (PR_SET_PDEATHSIG)."""
    pid_file = tmp_path / "child.pid"
    launcher = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from pi.launcher.supervisor import ProcessSpec, Supervised

        async def probe():
            return True

        async def main():
            spec = ProcessSpec(
                name="child",
                argv=[sys.executable, "-c", "import time; time.sleep(60)"],
                log_path=Path({str(tmp_path / "child.log")!r}),
                probe=probe,
            )
            proc = Supervised(spec, lambda _: None)
            task = asyncio.create_task(proc.run())
            await proc.wait_healthy(10)
            Path({str(pid_file)!r}).write_text(str(proc.pid))
            await task

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", launcher], cwd=Path(__file__).parents[3])
    try:
        deadline = time.monotonic() + 20
        while not pid_file.exists():
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        child = int(pid_file.read_text())
        os.kill(child, 0)  # alive
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "child outlived the launcher"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie waiting for init to reap it counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_program_that_cannot_start_is_retried_and_logged(tmp_path: Path) -> None:
    spec = ProcessSpec(
        name="missing",
        argv=[str(tmp_path / "no-such-program")],
        log_path=tmp_path / "missing.log",
        probe=lambda: _always(True),
    )
    proc = Supervised(spec, lambda _: None, backoff=Backoff(initial=0.05, maximum=0.1))
    runner = asyncio.create_task(proc.run())
    await _eventually(lambda: proc.restarts >= 2)
    await proc.stop(grace=1)
    await runner
    assert proc.last_exit == 127
    assert "cannot start" in "\n".join(tail(spec.log_path))


async def test_stop_during_a_restart_stops_the_new_child_too(tmp_path: Path) -> None:
    """The child crashes once, then runs forever; stop() lands while it is restarting."""
    flag = tmp_path / "crashed-once"
    code = f"""
        import os, sys, time
        if not os.path.exists({str(flag)!r}):
            open({str(flag)!r}, "w").close()
            sys.exit(1)
        while True:
            time.sleep(0.05)
    """
    proc = Supervised(
        _spec(tmp_path, code), lambda _: None, backoff=Backoff(initial=0.01, maximum=0.01)
    )
    runner = asyncio.create_task(proc.run())
    await _eventually(lambda: proc.restarts == 1)
    async with asyncio.timeout(10):
        await proc.stop(grace=2)
        await runner
    assert proc.state is State.STOPPED
