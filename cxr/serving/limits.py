"""What one served request may cost, set by the operator's environment where the model is served.

`mlflow models serve` runs each request in a thread and answers 504 after
`MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT` seconds (60 by default) without stopping that thread: the work
and its memory went on. A cxr model therefore bounds a request itself: pixels per image and per
request, checked from the images' headers before any is decoded; a deadline at `TIMEOUT_SHARE` of the
server's timeout, checked before each image and batch, so the request ends with cxr's message before
the server gives up on it; and at most `CXR_DECODE_SLOTS` images decoded at full size at once across
the process's concurrent requests.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from cxr.data.untrusted_images import MAX_IMAGE_PIXELS
from cxr.runtime.errors import CxrError

MAX_IMAGE_PIXELS_ENV = "CXR_MAX_IMAGE_PIXELS"
MAX_REQUEST_PIXELS_ENV = "CXR_MAX_REQUEST_PIXELS"
DECODE_SLOTS_ENV = "CXR_DECODE_SLOTS"
TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"  # MLflow's own; set by `mlflow models serve`
SERVING_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"  # MLflow's scoring server sets it to "true"

MAX_REQUEST_PIXELS = 200_000_000  # four images at the per-image cap; 190 NIH images of 1024 x 1024
DECODE_SLOTS = 2
TIMEOUT_SHARE = 0.8  # a served request stops itself after this share of the server's timeout


@dataclass(frozen=True)
class RequestLimits:
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_request_pixels: int = MAX_REQUEST_PIXELS
    seconds: float | None = None  # the request's own deadline; None: none (cxr.predict, a notebook)


def _positive(env: Mapping[str, str], name: str, default: float, kind: type = int) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise CxrError(f"{name}={raw!r}: give a positive {'whole ' if kind is int else ''}number")
    return value


def served_limits(env: Mapping[str, str] | None = None) -> RequestLimits:
    """The limits in this process's environment: CXR_MAX_IMAGE_PIXELS, CXR_MAX_REQUEST_PIXELS, and a
    deadline only inside MLflow's scoring server (TIMEOUT_SHARE of its request timeout)."""
    env = os.environ if env is None else env
    serving = env.get(SERVING_ENV, "").lower() == "true"
    timeout = _positive(env, TIMEOUT_ENV, 60.0, float)
    return RequestLimits(
        max_image_pixels=int(_positive(env, MAX_IMAGE_PIXELS_ENV, MAX_IMAGE_PIXELS)),
        max_request_pixels=int(_positive(env, MAX_REQUEST_PIXELS_ENV, MAX_REQUEST_PIXELS)),
        seconds=TIMEOUT_SHARE * timeout if serving else None,
    )


def decode_slots(env: Mapping[str, str] | None = None) -> threading.BoundedSemaphore:
    """How many images the process decodes at full size at once (CXR_DECODE_SLOTS, default 2)."""
    slots = _positive(os.environ if env is None else env, DECODE_SLOTS_ENV, DECODE_SLOTS)
    return threading.BoundedSemaphore(int(slots))


class Deadline:
    """Raises a CxrError once `seconds` have passed since it was made; None never does."""

    def __init__(self, seconds: float | None):
        self.seconds, self.start = seconds, time.monotonic()

    def check(self, done: str) -> None:
        if self.seconds is not None and time.monotonic() - self.start >= self.seconds:
            raise CxrError(
                f"the request was stopped after {self.seconds:g} s ({TIMEOUT_SHARE:.0%} of the server's "
                f"{TIMEOUT_ENV}), {done}: send fewer or smaller images per request, or raise the timeout"
            )
