"""Finding card numbers and secrets where they must never be: spans and log files."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

TEST_CARDS = ("4242424242424242", "4000000000000002", "4000000000009995", "4000000000000119")
"""The sandbox's test cards, which the suites pay with."""

_SECRET_SHAPE = re.compile(r"\beyJ[\w-]{10,}\.[\w-]{10,}\.|\bsk_[\w-]{16,}")


def leaks(texts: Mapping[str, str], secrets: Iterable[str]) -> list[str]:
    """Where (by the name of each text) a test card, one of `secrets`, a JWT or an API
    secret appears; only a prefix of what was found is quoted."""
    wanted = [*TEST_CARDS, *(s for s in secrets if s)]
    found = [
        f"{where}: {secret[:6]}…"
        for where, text in texts.items()
        for secret in wanted
        if secret in text
    ]
    found += [
        f"{where}: a bearer token or API secret"
        for where, text in texts.items()
        if _SECRET_SHAPE.search(text)
    ]
    return found
