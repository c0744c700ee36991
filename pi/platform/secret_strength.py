"""How strong the platform's own secrets must be outside development (finding 13).

The admin and service tokens must be long and look random (their characters' entropy,
and no repeated run); master keys must look like CSPRNG output. The estimate is a
heuristic floor, not a proof: it refuses the typed and the patterned ("changeme",
"password" four times, 32 zero bytes), and accepts what `secrets.token_urlsafe(32)` or
`openssl rand -base64 32` make.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

#: Outside development, the admin and service tokens must be at least this long and carry
#: at least this much entropy as estimated from their characters (a random 32-byte
#: url-safe token has ~190 bits by this measure; "password" repeated has under 100).
MIN_TOKEN_LENGTH = 32
MIN_TOKEN_BITS = 128
#: A master key of 32 random bytes has ~30 distinct byte values; fewer than this means
#: it was typed or derived from something guessable, not drawn from a CSPRNG.
MIN_MASTER_KEY_DISTINCT_BYTES = 16


def weak_secrets(
    admin_token: str, service_token: str, master_keys: Mapping[int, bytes]
) -> list[str]:
    """A problem per short or guessable credential or master key (none: all strong)."""
    problems = []
    for name, token in (("PI_ADMIN_TOKEN", admin_token), ("PI_SERVICE_TOKEN", service_token)):
        if token and (
            len(token) < MIN_TOKEN_LENGTH
            or estimated_bits(token) < MIN_TOKEN_BITS
            or _repeats(token)
        ):
            problems.append(
                f"{name} is too weak: use at least {MIN_TOKEN_LENGTH} random characters "
                f"(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
                "or set PI_ENVIRONMENT=development on a developer machine."
            )
    for version, key in master_keys.items():
        if len(set(key)) < MIN_MASTER_KEY_DISTINCT_BYTES or _repeats(key):
            problems.append(
                f"PI_MASTER_KEYS: key version {version} does not look random: use 32 bytes "
                "from a CSPRNG (`openssl rand -base64 32`)."
            )

    return problems


def _repeats(value: str | bytes) -> bool:
    """Whether `value` is a shorter run repeated ("abcabc"): as guessable as the run."""
    text = value if isinstance(value, str) else value.hex()
    return text in (text + text)[1:-1]


def estimated_bits(text: str) -> float:
    """Entropy of `text` estimated from its own character frequencies, times its length:
    a lower bound for a random token, far below it for words and repeats."""
    counts = Counter(text)
    total = len(text)
    per_char = -sum(n / total * math.log2(n / total) for n in counts.values())
    return per_char * total
