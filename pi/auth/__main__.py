"""`python -m pi.auth [serve | migrate | rotate-keys]`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pi.platform.runtime import cli

ROTATE_KEYS = cli.Command(
    "rotate-keys",
    "make a new current signing key; the previous one keeps verifying its tokens",
    lambda app: print(app.rotate_keys()),
)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main("auth", "Pi auth service.", argv, extra=(ROTATE_KEYS,))


if __name__ == "__main__":
    sys.exit(main())
