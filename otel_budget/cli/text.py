"""Stored text on a terminal: control characters escaped.

Attribute values, writer ids, row names and budget names come from the store,
which any writer (or anyone who can edit a row) fills. Printed raw, an escape
sequence in one of them drives the terminal: it can clear lines, move the cursor
and forge a status line. Every CLI printer passes stored text through here: C0
and C1 controls, DEL, and the Unicode line separators and bidirectional
overrides (which reorder what is shown) become visible escapes (`\\x1b`,
`\\u202e`); a backslash is doubled so an escape cannot be faked either.
"""

from __future__ import annotations

import re
from typing import Any

_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: Any) -> str:
    """`text` (made a string) with every control character escaped."""
    return _UNSAFE.sub(_escape, text if isinstance(text, str) else str(text))


def printable_data(value: Any) -> Any:
    """A copy of a JSON-like value with every string in it (keys too) printable."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable_data(k): printable_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable_data(v) for v in value]
    return value
