"""`python -m pi.payments [serve | migrate]`."""

from __future__ import annotations

import argparse
import sys

from pi.platform.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pi.payments", description="Pi payment service."
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve gRPC (the default)")
    commands.add_parser("migrate", help="apply the database migrations and exit")
    args = parser.parse_args(argv)

    from pi.payments import main as app

    try:
        if args.command == "migrate":
            app.migrate()
        else:
            app.run()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
