"""What `make run` prints while it runs: one line per state change of a process."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from typing import TextIO

from pi.launcher.supervisor import State, Supervised, tail


class Console:
    """Compact status lines: one per state change, plus the banner."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self._stream = stream
        self._color = stream.isatty() and os.environ.get("NO_COLOR") is None

    def say(self, text: str = "") -> None:
        print(text, file=self._stream, flush=True)

    def status(self, proc: Supervised) -> None:
        colors = {
            State.HEALTHY: "32",
            State.STARTING: "33",
            State.UNHEALTHY: "31",
            State.BACKOFF: "31",
        }
        state = f"{proc.state.value:<10}"
        if self._color and proc.state in colors:
            state = f"\033[{colors[proc.state]}m{state}\033[0m"
        details = [proc.spec.address]
        if proc.pid is not None:
            details.append(f"pid {proc.pid}")
        if proc.state is State.BACKOFF:
            details.append(
                f"{describe_exit(proc.last_exit)}; restart #{proc.restarts} "
                f"in {proc.next_restart_in:g}s"
            )
        self.say(f"{time.strftime('%H:%M:%S')}  {proc.name:<15} {state} {'  '.join(details)}")
        if proc.state is State.BACKOFF:
            for line in tail(proc.spec.log_path, 6):
                self.say(f"            | {line[:160]}")
            self.say(f"            | (full log: {proc.spec.log_path})")


def describe_exit(code: int | None) -> str:
    """How a child ended, for people: "killed by SIGKILL", "exited with 1"."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exited with {code}"
