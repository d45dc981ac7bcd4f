"""One exception type for every error a user can cause; commands print it as one line and exit 2.

Ctrl-C ends a command with one line and exit 130 (128 + SIGINT, as shells report it), its MLflow run
KILLED (`cxr.tracking.runs.tracked_run`); Hydra's own errors in composing the config (a misspelt key, an
unknown option) are one line and exit 2 too (`run_command`).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from cxr.runtime import interrupt
from cxr.runtime.masking import mask

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

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
    """A problem with the user's input or environment: the message says what, where and what to do.

    Its text is masked (`cxr.runtime.masking.mask`): a message that quotes a library's error may carry
    a URL's password, and Hydra prints a failed multirun job's exception itself."""

    def __str__(self) -> str:
        return mask(super().__str__())


def _interrupted() -> NoReturn:
    print("cxr: interrupted (Ctrl-C)", file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


def exit_on_user_error(func: F) -> F:
    """Turn a CxrError into one line on stderr and exit code 2, Ctrl-C into one line and exit 130; bugs
    keep their traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CxrError as err:
            print(f"cxr: error: {mask(str(err))}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            _interrupted()

    return wrapper  # type: ignore[return-value]


def one_line(err: BaseException) -> str:
    """An exception's message and its cause's on one line (Hydra's span several)."""
    text = "\n".join([str(err), *([str(err.__cause__)] if err.__cause__ is not None else [])])
    text = text.split("Config search path:")[0]  # Hydra's list of where it looked: long, rarely the point
    return "; ".join(line.strip().rstrip(".:") for line in text.splitlines() if line.strip())


def run_command(main: Callable[[], object]) -> NoReturn:
    """Run a `@hydra.main` function as `python -m cxr.<command>` does.

    Hydra prints its own config errors and exits 1; here they are one `cxr: error:` line and exit 2 like
    every other error a user can cause. They are told apart from bugs by when they happen: before Hydra
    hands a config to the job (HydraConfig unset) and as Hydra's or OmegaConf's exception types. Ctrl-C
    while Hydra starts up is one line and exit 130. With HYDRA_FULL_ERROR=1 set by the user, Hydra's
    traceback is shown as Hydra would."""
    # Hydra and OmegaConf, each of the imports below, only where a command runs: this module is on
    # bench/train_throughput's import path, which has neither
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    interrupt.install()
    user_full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors here instead of printing them
    try:
        main()
        interrupt.raise_pending()  # swallowed where no batch came after it to raise it again
    except KeyboardInterrupt:
        _interrupted()
    except (HydraException, OmegaConfBaseException) as err:
        if user_full_error == "1" or HydraConfig.initialized():
            raise
        print(f"cxr: error: {one_line(err)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    finally:
        if user_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = user_full_error
    sys.exit(0)
