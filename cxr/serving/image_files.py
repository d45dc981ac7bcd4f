"""The image files `cxr.predict` is given: found, and every path checked, before a model is loaded.

A path that cannot be examined (a folder it may not list, a file under one, a name too long), one
that is missing, or one that is not a regular file (a FIFO named `x.png` would block its reader
forever; a device never ends) is one line each; a folder's entries that are not regular files are
left out, as its subfolders are. Reading opens without blocking and checks again what it opened.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from cxr.runtime.errors import CxrError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _why(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _not_regular(path: str) -> str:
    return f"{path}: not a regular file (a FIFO, socket or device): give an image file"


def _mode(path: Path) -> int | None:
    """The path's file type bits (following links), None if it does not exist; OSError if it cannot be
    examined."""
    try:
        return path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None


def _folder_images(folder: Path) -> list[str]:
    """The folder's regular files with an image suffix, sorted; OSError if it cannot be listed."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.lower().endswith(IMAGE_SUFFIXES):
                try:
                    if entry.is_file():  # a regular file (or a link to one): not a FIFO, socket, device
                        found.append(str(folder / entry.name))
                except OSError:
                    continue
    return sorted(found)


def collect_images(images: str | Sequence[str]) -> tuple[list[str], dict[str, str], bool]:
    """(regular files to read, {path: why not}, whether a folder was given)."""
    entries = [images] if isinstance(images, str) else list(images)
    if not entries:
        raise CxrError("images= is empty: give a file, a folder or a list [a.png,b.png]")
    files, failures, folder = [], {}, False
    for entry in map(str, entries):
        path = Path(entry).expanduser()
        try:
            mode = _mode(path)
            if mode is None:
                failures[entry] = f"{entry}: no such file or folder"
            elif stat.S_ISDIR(mode):
                folder = True
                found = _folder_images(path)
                if not found:
                    failures[entry] = f"{entry}: no PNG or JPEG files in this folder"
                files += found
            elif stat.S_ISREG(mode):
                files.append(str(path))
            else:
                failures[entry] = (
                    f"{entry}: not a regular file (a FIFO, socket or device): give an image file"
                )
        except OSError as err:
            failures[entry] = f"{entry}: cannot be examined ({_why(err)})"
    return files, failures, folder


def read_regular_file(path: str) -> bytes:
    """A regular file's bytes, opened without blocking (a FIFO swapped in after `collect_images` would
    block a plain open); a CxrError for anything else or a file that cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise CxrError(f"{path}: cannot be read ({_why(err)})") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CxrError(_not_regular(path))
        try:
            return file.read()
        except OSError as err:
            raise CxrError(f"{path}: cannot be read ({_why(err)})") from None
