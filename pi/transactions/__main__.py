"""`python -m pi.transactions [serve | migrate]`.

The command line every service shares (`pi.platform.runtime.cli`), run on this
service's composition root, `pi.transactions.bootstrap`: it is imported only after the
arguments parsed, so `--help` needs no gRPC or database.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pi.platform.config import ConfigError
from pi.platform.runtime import cli

_COMMANDS = {command.name: command for command in (cli.SERVE, cli.MIGRATE)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pi.transactions", description="Pi transaction service."
    )
    subparsers = parser.add_subparsers(dest="command")
    for command in _COMMANDS.values():
        subparsers.add_parser(command.name, help=command.help)
    args = parser.parse_args(argv)

    bootstrap = importlib.import_module("pi.transactions.bootstrap")
    try:
        _COMMANDS[args.command or cli.SERVE.name].run(bootstrap)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
