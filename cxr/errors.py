"""One exception type for every error a user can cause; commands print it as one line and exit 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., object])


class CxrError(Exception):
    """A problem with the user's input or environment: the message says what, where and what to do."""


def exit_on_user_error(func: F) -> F:
    """Turn a CxrError into one line on stderr and exit code 2; bugs keep their traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CxrError as err:
            from cxr.masking import mask

            print(f"cxr: error: {mask(str(err))}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]
