"""Text from outside is data: bounded when kept, inert when shown.

A node, a user or a file may send any string: an exception message of a megabyte, a metric
name with a newline in it, terminal escapes, rich markup. Whatever pollinate keeps, logs or
shows of such a string passes through here first.

Invariants:

- ``cap`` keeps at most ``limit`` characters (``MAX_TEXT`` by default) and says how long the
  string was: ``xxxx… [1048576 chars]``. It reads only what it keeps, so a megabyte costs
  what a kilobyte does.
- ``inert`` is ``cap`` whose result is one line of plain text: every control character
  (newline, carriage return, escape, tab, DEL, C1), Unicode line and paragraph separators,
  bidirectional overrides and lone surrogates are written as visible escapes (``\\n``,
  ``\\x1b``, ``\\u202e``). One string makes one line of a log, and cannot forge another.
  Renderers still print it without markup or highlighting: ``[bold]`` stays ``[bold]``.
- Names (metric and config keys, task and run ids) are never cut: two long names cut to one
  prefix would collide silently. ``name_problem`` says why a name is refused: longer than
  ``MAX_NAME``, or holding a character ``inert`` would escape.

``cap`` and ``inert`` are idempotent: text they return passes through them unchanged, so a
string capped where it arrived still says its original length wherever it is shown.

>>> inert("x" * 2000 + "\\n[red]forged line", limit=8)
'xxxxxxxx… [2017 chars]'
>>> inert("a\\nb\\x1b[2J")
'a\\\\nb\\\\x1b[2J'
>>> name_problem("loss\\n")
'holds the control character \\\\n'
"""

from __future__ import annotations

import re

MAX_TEXT = 1000
"""Characters kept of one string from outside: an error, a string metric or config value."""

MAX_LINE = 4 * MAX_TEXT
"""Characters kept of one line we build around such strings: a log line, a failure reason."""

MAX_NAME = 256
"""The longest metric or config name, task id or run id accepted; longer ones are refused."""

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPED = [
    *range(0x00, 0x20),  # C0 controls: newline, carriage return, escape, ...
    *range(0x7F, 0xA0),  # DEL and the C1 controls (0x9b is a one-byte escape sequence)
    0x061C,  # Arabic letter mark, and below the other bidirectional controls, which
    0x200E,  # reorder how a line reads on screen ("Trojan Source")
    0x200F,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
    0x2028,  # line and paragraph separators: a new line to many log viewers
    0x2029,
    *range(0xD800, 0xE000),  # lone surrogates: not encodable as UTF-8
]
_TABLE = {
    code: _SHORT.get(chr(code)) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in _ESCAPED
}
_UNSAFE = re.compile("[" + "".join(re.escape(chr(code)) for code in _ESCAPED) + "]")
_MARK = re.compile(r"… \[([1-9][0-9]{0,18}) chars\]\Z")
MARK_ROOM = 32
"""The most characters a length mark adds: "… [", up to 19 digits, " chars]"."""


def cap(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` if it has at most ``limit`` characters, else its first ``limit`` characters
    and how many it had.

    >>> cap("abcdef", 3)
    'abc… [6 chars]'
    >>> cap(cap("abcdef", 3), 2)
    'ab… [6 chars]'
    """
    body, length = _split(text)
    if len(body) <= limit:
        return text
    return f"{body[:limit]}… [{length} chars]"


def inert(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` as one line of plain text of at most ``limit`` characters (and the length
    mark): control characters escaped, longer text cut and marked with its length.

    >>> inert("line one\\r\\nline two")
    'line one\\\\r\\\\nline two'
    """
    body, length = _split(text)
    shown = body[:limit].translate(_TABLE)  # escapes lengthen it, at most 6 times
    if len(shown) <= limit and len(body) == len(text) <= limit:  # neither cut nor marked
        return shown
    return f"{shown[:limit]}… [{length} chars]"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a metric or config name, task id or run id; None if it can.

    >>> name_problem("accuracy") is None
    True
    >>> name_problem("n" * 300)
    'is 300 characters long, over the limit of 256 (pollinate.text.MAX_NAME)'
    """
    if len(name) > MAX_NAME:
        return (
            f"is {len(name)} characters long, over the limit of {MAX_NAME} "
            "(pollinate.text.MAX_NAME)"
        )
    unsafe = _UNSAFE.search(name)
    if unsafe is not None:
        return f"holds the control character {unsafe.group().translate(_TABLE)}"
    return None


def _split(text: str) -> tuple[str, int]:
    """(the text before a length mark, the length it states) if ``text`` was cut by ``cap``
    or ``inert``; else (``text``, its length). Reads only the end of ``text``."""
    tail = text[-MARK_ROOM:]
    mark = _MARK.search(tail)
    if mark is None:
        return text, len(text)
    # escapes lengthen a cut text, so its mark may state fewer characters than it shows
    return text[: len(text) - len(tail) + mark.start()], int(mark.group(1))
