"""`python -m pi.payments [serve | migrate]`.

The command line every service shares (`pi.platform.runtime.cli`), on this service's
composition root: `cli.main` looks for a `main` module, which `bootstrap` replaces here,
so the same commands are parsed here, identically.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pi.platform.config import ConfigError
from pi.platform.runtime.cli import MIGRATE, SERVE


def main(argv: Sequence[str] | None = None) -> int:
    commands = {command.name: command for command in (SERVE, MIGRATE)}
    parser = argparse.ArgumentParser(
        prog="python -m pi.payments", description="Pi payment service."
    )
    subparsers = parser.add_subparsers(dest="command")
    for command in commands.values():
        subparsers.add_parser(command.name, help=command.help)
    args = parser.parse_args(argv)

    # Imported once the arguments parsed: `--help` needs no gRPC or database.
    from pi.payments import bootstrap

    try:
        commands[args.command or SERVE.name].run(bootstrap)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
