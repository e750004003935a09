"""The ids a caller sends that the router stores (request and user ids): checked at the door,
so no request can carry a row the results store refuses. The store's columns are sized from
the same constant."""

from __future__ import annotations

import re

MAX_ID_LENGTH = 128
"""Characters in a request id or a user id (a UUID is 36; a SHA-256 in hex is 64)."""

# Printable ASCII: what every engine stores as text, what a log line and a URL carry unescaped.
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


def id_problem(field: str, value: str) -> str | None:
    """What is wrong with an id a caller sent, as a sentence naming the field; None if fine."""
    if len(value) > MAX_ID_LENGTH:
        return f"{field} is {len(value)} characters; at most {MAX_ID_LENGTH} are allowed"
    if not _PRINTABLE.fullmatch(value):
        bad = next(c for c in value if not _PRINTABLE.fullmatch(c))
        return (
            f"{field} holds the character {bad!a}; ids are printable ASCII "
            f"(letters, digits, punctuation and spaces), at most {MAX_ID_LENGTH} characters"
        )
    return None
