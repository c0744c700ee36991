"""The command line every service shares: `python -m pi.<svc> [serve | migrate | ...]`.

A service's `__main__.py`:

    def main(argv: list[str] | None = None) -> int:
        return cli.main("payments", "Pi payment service.", argv)

`serve` (the default) calls `pi.<svc>.bootstrap.run()`, `migrate` calls its
`migrate()`; `extra` commands add the service's own (auth's `rotate-keys`). The
service's composition root is imported only after the arguments parsed, so `--help`
needs no gRPC or database. A missing or invalid setting is printed on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

from pi.platform.config import ConfigError


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, its help text, and what it does with `pi.<svc>.bootstrap`."""

    name: str
    help: str
    run: Callable[[ModuleType], object]


SERVE = Command("serve", "serve gRPC (the default)", lambda app: app.run())
MIGRATE = Command("migrate", "apply the database migrations and exit", lambda app: app.migrate())


def main(
    service: str,
    description: str,
    argv: Sequence[str] | None = None,
    *,
    extra: Sequence[Command] = (),
) -> int:
    """Parse `argv`, run the chosen command; the process exit status."""
    commands = {command.name: command for command in (SERVE, MIGRATE, *extra)}
    parser = argparse.ArgumentParser(prog=f"python -m pi.{service}", description=description)
    subparsers = parser.add_subparsers(dest="command")
    for command in commands.values():
        subparsers.add_parser(command.name, help=command.help)
    args = parser.parse_args(argv)

    app = importlib.import_module(f"pi.{service}.bootstrap")
    try:
        commands[args.command or SERVE.name].run(app)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0
