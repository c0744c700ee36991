"""`python -m pi.auth [serve | migrate | rotate-keys]`.

The platform's command line (`pi.platform.runtime.cli`), run on `pi.auth.bootstrap`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pi.platform.config import ConfigError
from pi.platform.runtime import cli

ROTATE_KEYS = cli.Command(
    "rotate-keys",
    "make a new current signing key; the previous one keeps verifying its tokens",
    lambda app: print(app.rotate_keys()),
)
COMMANDS = {command.name: command for command in (cli.SERVE, cli.MIGRATE, ROTATE_KEYS)}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the chosen command; the process exit status.

    As `cli.main`, which imports `pi.<svc>.main`; auth's composition root is
    `pi.auth.bootstrap`, imported only after the arguments parsed (`--help` needs no
    gRPC or database).
    """
    parser = argparse.ArgumentParser(prog="python -m pi.auth", description="Pi auth service.")
    subparsers = parser.add_subparsers(dest="command")
    for command in COMMANDS.values():
        subparsers.add_parser(command.name, help=command.help)
    args = parser.parse_args(argv)

    from pi.auth import bootstrap

    try:
        COMMANDS[args.command or cli.SERVE.name].run(bootstrap)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
