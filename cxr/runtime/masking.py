"""Passwords in URLs never reach MLflow, a log file or the console.

Storage and tracking URLs (`postgresql://user:password@host/db`, `...?password=...`) travel in the
config, the command line and the sweeper's job overrides; `mask` is the one function every writer
passes text through (params, tags, config.yaml, messages), and `MaskSecrets` is the logging filter
Hydra's log handlers use (conf/hydra/*_logging/cxr.yaml), which covers Hydra's own "Launching" lines
and each job's `#0 : <overrides>` line.

A URL reaches those writers in more than one spelling: as typed (`http://bob:secret@host`, quoted or
not), as Hydra re-writes a multirun's job overrides (`http\\://bob\\:secret@host`: every `:`, `=`, `,`
or space behind a backslash), and percent-encoded (`http%3A%2F%2Fbob%3Asecret%40host`, a URL inside a
URL). Each spelling is one row of `_SPELLINGS`; a password is masked in all of them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

MASK = "***"


@dataclass(frozen=True)
class _Spelling:
    """How one spelling writes a URL's separators (regular expressions); `char` is one character of a
    user name or password, which never holds the spelling's own `/` or `@`."""

    colon: str
    slash: str
    at: str
    equals: str
    amp: str
    query: str
    char: str

    def userinfo(self) -> re.Pattern:
        """scheme://user:password@ (the password up to the last `@` before the host's `/`)."""
        user = rf"(?:(?!{self.colon}|{self.at}){self.char})*"
        head = rf"(?P<head>\b[a-z][\w+.-]*{self.colon}{self.slash}{self.slash}{user}{self.colon})"
        secret = rf"(?P<secret>(?:(?!{self.slash}){self.char}|{self.at})*)"
        return re.compile(rf"{head}{secret}(?={self.at})", re.I)

    def parameter(self) -> re.Pattern:
        """?password=... or &pass=... (libpq and SQLite URI parameters)."""
        name = r"(?:password|passwd|pass|pwd|secret|token)"
        head = rf"(?P<head>(?:{self.query}|{self.amp}){name}{self.equals})"
        return re.compile(rf"{head}(?P<secret>(?:(?!{self.amp}){self.char}|{self.slash}|{self.at})*)", re.I)


_SPELLINGS = (
    # as typed, quoted, or escaped by Hydra (a backslash before `:` and `=`; `\\.` keeps an escaped
    # character, a space included, inside the password)
    _Spelling(r"\\*:", "/", "@", r"\\*=", "&", r"\?", r"""(?:\\.|[^/@\s'"\\])"""),
    # percent-encoded: separators as %XX (either case); the password's own `%` is then `%25`
    _Spelling("%3a", "%2f", "%40", "%3d", "%26", "%3f", r"""[^/@\s'"&]"""),
)
_PATTERNS = tuple(p for s in _SPELLINGS for p in (s.userinfo(), s.parameter()))


def mask(text: str) -> str:
    """`text` with every URL password replaced by `***`, in every spelling; anything else unchanged."""
    if "://" not in text and "=" not in text and "%" not in text:
        return text
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m["head"] + MASK, text)
    return text


def mask_values(values: dict[str, Any]) -> dict[str, Any]:
    """A params/tags dict with its string values masked."""
    return {k: mask(v) if isinstance(v, str) else v for k, v in values.items()}


class MaskSecrets(logging.Filter):
    """Masks URL passwords in every record a handler writes (message and arguments, rendered once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
