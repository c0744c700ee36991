"""The free-text rules of every service, in one place: names and free text.

`printable_text` is for names and labels (one line, no leading or trailing blanks, no
invisible formatting); `text_problem` is for free text such as descriptions, metadata
values and reasons (emoji sequences and, when `multiline`, line breaks allowed). Both
refuse control characters and lone surrogates, which PostgreSQL text cannot hold.
"""

from __future__ import annotations

import unicodedata

from pi.platform.kernel.errors import InvalidArgument, ValidationErrors

__all__ = ["printable_text", "text_problem"]

# Control, format, surrogate, line/paragraph separators: invisible or layout-breaking.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


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
    """`value` if it is printable text of an allowed length (code points).

    Rejects control and format characters (Unicode categories Cc, Cf, ...), text that
    is only whitespace, and leading/trailing whitespace. An empty optional value is
    returned as "".
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
    if any(unicodedata.category(c) in _FORBIDDEN_CATEGORIES for c in value):
        _fail(field, "must not contain control or invisible formatting characters.", errors)
    return value


def text_problem(value: str, *, max_length: int, multiline: bool = False) -> str | None:
    """Why `value` is not acceptable free text, or None.

    Acceptable: at most `max_length` characters (code points), no control characters
    (Unicode category Cc, which includes NUL that PostgreSQL text cannot hold) and no
    lone surrogates; `multiline` text may contain newline, carriage return and tab.
    Format characters such as the zero-width joiner of emoji sequences are allowed.
    """
    if len(value) > max_length:
        return f"must be at most {max_length} characters"
    allowed = "\n\r\t" if multiline else ""
    for char in value:
        if char in allowed:
            continue
        if unicodedata.category(char) in ("Cc", "Cs"):
            return "must not contain control characters"
    return None
