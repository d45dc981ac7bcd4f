"""One exception type for every error a user can cause; commands print it as one line and exit 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., object])


def shorten(text: str, limit: int) -> str:
    """`text` whole when it fits in `limit` characters, else its leading words and how much was left out:
    never cut mid-word (for stores that cap a value's length, such as MLflow tags)."""
    if len(text) <= limit:
        return text
    note = " ... ({} more characters)"
    head = text[: max(0, limit - len(note.format(len(text))))]
    head = head[: head.rfind(" ")] if " " in head else head
    return head.rstrip() + note.format(len(text) - len(head.rstrip()))


class CxrError(Exception):
    """A problem with the user's input or environment: the message says what, where and what to do."""


def exit_on_user_error(func: F) -> F:
    """Turn a CxrError into one line on stderr and exit code 2; bugs keep their traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CxrError as err:
            print(f"cxr: error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]
