"""`python -m pi.payments [serve | migrate]`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pi.platform.runtime import cli


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main("payments", "Pi payment service.", argv)


if __name__ == "__main__":
    sys.exit(main())
