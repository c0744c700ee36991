"""The one text validator of every service: names, descriptions, metadata, reasons.

`text_problem` says why a value is not acceptable text, or None; `printable_text` applies
it to names and labels (required or not, one line, no surrounding blanks) and raises or
collects the violation. Both apply the same rules, so no field accepts what another
refuses:

- no control characters (Unicode Cc; `multiline` text may hold newline, carriage return
  and tab), no line or paragraph separators, no lone surrogates (PostgreSQL text cannot
  hold NUL or surrogates);
- no bidirectional or other invisible format controls (Unicode Cf): they make text read
  differently from what it is ("Trojan Source"). The zero-width joiner and the emoji tag
  characters stay allowed, so emoji sequences and flags survive;
- no card numbers: a run of 13 to 19 digits (spaces or dashes between them allowed) that
  passes the Luhn check is refused, as Stripe refuses them in descriptions, so a PAN
  pasted into a free-text field is never stored or logged (PCI DSS 3.3, 3.5).
"""

from __future__ import annotations

import re
import unicodedata

from pi.platform.kernel.errors import InvalidArgument, ValidationErrors

__all__ = ["contains_card_number", "printable_text", "text_problem"]

_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Format characters emoji need: ZERO WIDTH JOINER and the tag characters of subdivision
# flags (U+E0020..U+E007F). Every other Cf (bidi embeddings, overrides and isolates, the
# LRM/RLM marks, zero-width spaces, word joiners, soft hyphens...) is refused.
_ALLOWED_FORMAT = frozenset({"\u200d", *map(chr, range(0xE0020, 0xE0080))})
# Digits, each optionally followed by one space or dash: "4242 4242-4242 4242".
_DIGIT_RUN = re.compile(r"[0-9](?:[ -]?[0-9])*")


def _fail(field: str, description: str, errors: ValidationErrors | None) -> None:
    if errors is None:
        raise InvalidArgument.field(field, description)
    errors.add(field, description)


def printable_text(
    value: str,
    field: str,
    max_len: int,
    required: bool = True,
    *,
    min_len: int = 1,
    errors: ValidationErrors | None = None,
) -> str:
    """`value` if it is acceptable one-line text of an allowed length (code points).

    On top of `text_problem`: not only whitespace, no leading or trailing whitespace. An
    empty optional value is returned as "".
    """
    if value == "":
        if required:
            _fail(field, "is required.", errors)
        return value
    if value.strip() == "":
        _fail(field, "must not be blank.", errors)
        return value
    if value != value.strip():
        _fail(field, "must not start or end with whitespace.", errors)
        return value
    if len(value) < min_len or len(value) > max_len:
        _fail(field, f"must be {min_len} to {max_len} characters long.", errors)
        return value
    problem = text_problem(value, max_length=max_len)
    if problem is not None:
        _fail(field, f"{problem}.", errors)
    return value


def text_problem(value: str, *, max_length: int, multiline: bool = False) -> str | None:
    """Why `value` is not acceptable text, or None (the rules are in the module doc)."""
    if len(value) > max_length:
        return f"must be at most {max_length} characters"
    allowed = "\n\r\t" if multiline else ""
    for char in value:
        if char in allowed or char in _ALLOWED_FORMAT:
            continue
        category = unicodedata.category(char)
        if category in _FORBIDDEN_CATEGORIES:
            if category == "Cf":
                return "must not contain invisible formatting or bidirectional control characters"
            return "must not contain control characters"
    if contains_card_number(value):
        return "must not contain a card number"
    return None


def contains_card_number(value: str) -> bool:
    """Whether `value` holds a run of 13 to 19 digits that passes the Luhn check."""
    for match in _DIGIT_RUN.finditer(value):
        digits = [int(c) for c in match.group() if c.isdigit() and c.isascii()]
        if 13 <= len(digits) <= 19 and _luhn(digits):
            return True
    return False


def _luhn(digits: list[int]) -> bool:
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0
