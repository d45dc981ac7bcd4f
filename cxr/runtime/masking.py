"""Passwords in URLs never reach MLflow, a log file or the console.

Storage and tracking URLs (`postgresql://user:password@host/db`, `...?password=...`) travel in the
config, the command line and the sweeper's job overrides; `mask` is the one function every writer
passes text through (params, tags, config.yaml, messages), and `MaskSecrets` is the logging filter
Hydra's log handlers use (conf/hydra/*_logging/cxr.yaml), which covers Hydra's own "Launching" lines.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
# scheme://user:password@host (a password's own '@' or '/' is percent-encoded in a valid URL)
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^:/@\s'\"]*:)(?P<secret>[^@\s'\"/]*)(?=@)")
# ?password=... or &pass=... (libpq and SQLite URI parameters)
_QUERY = re.compile(r"(?P<head>[?&](?:password|passwd|pass|pwd|secret|token)=)(?P<secret>[^&\s'\"]*)", re.I)


def mask(text: str) -> str:
    """`text` with every URL password replaced by `***`; anything else unchanged."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: m["head"] + MASK, text)
    return _QUERY.sub(lambda m: m["head"] + MASK, text)


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
