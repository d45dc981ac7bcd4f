"""Bytes from outside (a served request, a file given to `cxr.predict`) as grey pixels, checked first.

Only PNG and JPEG are read, told by their content (the name is not asked): PIL opens some twenty
formats, each with its own decoder to attack. Before anything is decoded, the header's pixel count
is read from the header by cxr itself and held against a limit (a 194 KB PNG can hold 10000 x 10000
16-bit pixels, 200 MB decoded; PIL's own decompression-bomb limits still apply after), and
bytes after the image's end (a PNG's IEND chunk, a JPEG's EOI marker) beyond `TRAILING_SLACK` are
refused: whatever rides there is not part of the picture. A big JPEG is decoded already reduced
(`draft`, the DCT scaling PIL's `thumbnail` uses) when the caller says how large it will be needed;
PNG has no reduced decode, so its 16-bit data is brought to 8 bits a strip at a time (`to_grey`).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cxr.data.images import IMAGE_ERRORS, to_grey
from cxr.runtime.console import log
from cxr.runtime.errors import CxrError

MAX_IMAGE_PIXELS = 50_000_000  # default cap per image: a 7000 x 7000 scan; NIH's are 1024 x 1024
TRAILING_SLACK = 1024  # bytes tolerated after an image's end: some writers pad; a payload is refused
MIN_SIDE = 32  # a side below this, or an aspect beyond MAX_ASPECT, is scored with a warning
MAX_ASPECT = 4.0
DRAFT_GAP = 3  # a JPEG is reduced at decode to no less than this many times the side it is needed at

_PNG = b"\x89PNG\r\n\x1a\n"
_ACCEPTED = {"PNG": (_PNG,), "JPEG": (b"\xff\xd8\xff",)}
_REFUSED = {  # named in the refusal, so the user knows what they sent
    "TIFF": (b"II*\x00", b"MM\x00*"),
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",),
    "WebP": (b"RIFF",),
    "JPEG 2000": (b"\x00\x00\x00\x0cjP  ",),
    "PDF": (b"%PDF",),
}
ACCEPTED_FORMATS = tuple(_ACCEPTED)


@dataclass(frozen=True)
class Header:
    """What an image's header says, read without decoding its pixels."""

    format: str  # PNG or JPEG
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def sniff(data: bytes) -> str:
    """The format the bytes' signature names: an accepted one, a known refused one, or 'unknown'."""
    for name, signatures in (*_ACCEPTED.items(), *_REFUSED.items()):
        if data.startswith(signatures):
            return name
    if data[128:132] == b"DICM":
        return "DICOM"
    return "unknown"


def png_end(data: bytes) -> int | None:
    """The offset just past a PNG's IEND chunk (walking the chunks), or None if it never comes."""
    at = len(_PNG)
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        at += 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            return at if at <= len(data) else None
    return None


_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # JPEG markers without a length: TEM, RST0-7


def jpeg_end(data: bytes) -> int | None:
    """The offset just past a JPEG's EOI marker, walking its segments (an EXIF thumbnail's own EOI sits
    inside an APP1 segment and is skipped with it) and the entropy-coded data after each SOS (where a
    0xFF byte is stuffed with 0x00 or is a restart marker); None if there is no EOI."""
    at = 2  # after SOI
    while at + 2 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0xD9:  # EOI
            return at + 2
        if marker in _STANDALONE:
            at += 2
            continue
        if at + 4 > len(data):
            return None
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        at += 2 + length
        if marker == 0xDA:  # SOS: entropy-coded data up to the next real marker
            while True:
                at = data.find(b"\xff", at)
                if at < 0 or at + 1 >= len(data):
                    return None
                following = data[at + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    at += 2
                elif following == 0xFF:
                    at += 1
                else:
                    break
    return None


def trailing_bytes(data: bytes, kind: str) -> int:
    """How many bytes follow the image's end; 0 when the end is not found (a truncated image, which the
    decoder reports itself)."""
    end = png_end(data) if kind == "PNG" else jpeg_end(data)
    return 0 if end is None else len(data) - end


_SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, which must come first."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment, which precedes its first scan."""
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF or marker in _STANDALONE:
            at += 1 if marker == 0xFF else 2
            continue
        if marker in _SOF and at + 9 <= len(data):
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        if marker == 0xDA:
            return None
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    return None


def image_header(data: bytes, where: str) -> Header:
    """The format and size of a PNG or JPEG, parsed from its bytes without PIL; a CxrError naming `where`
    for anything else (by content), trailing data, or a header that gives no size."""
    kind = sniff(data)
    if kind not in _ACCEPTED:
        what = "its content is neither PNG nor JPEG" if kind == "unknown" else f"it is a {kind} file"
        raise CxrError(f"{where}: not a readable image: {what}; cxr reads PNG and JPEG only (convert to PNG)")
    extra = trailing_bytes(data, kind)
    if extra > TRAILING_SLACK:
        raise CxrError(
            f"{where}: {extra} bytes follow the end of the {kind} image (at most {TRAILING_SLACK} are "
            "tolerated); send the image file alone"
        )
    size = png_size(data) if kind == "PNG" else jpeg_size(data)
    if not size or not all(size):
        raise CxrError(f"{where}: not a readable {kind} image (its header gives no size)")
    return Header(kind, *size)


def unreadable(where: str, kind: str, err: Exception) -> CxrError:
    return CxrError(f"{where}: not a readable {kind} image ({type(err).__name__}: {err})")


def check_pixels(header: Header, where: str, max_pixels: int) -> None:
    if header.pixels > max_pixels:
        raise CxrError(
            f"{where}: a {header.width} x {header.height} image ({header.pixels:,} pixels) is over the "
            f"limit of {max_pixels:,} pixels an image (max_image_pixels); send it downscaled"
        )


def decode_grey(data: bytes, where: str, max_pixels: int = MAX_IMAGE_PIXELS, side: int = 0) -> np.ndarray:
    """Untrusted bytes -> (H, W) uint8 grey, after `image_header`'s checks and the pixel limit.

    `side`: the largest square side the pixels will be resized to; a JPEG more than twice `DRAFT_GAP`
    times larger is decoded reduced (by 2, 4 or 8). An image with a side under `MIN_SIDE` or an aspect
    beyond 1:`MAX_ASPECT` is decoded with a warning: it is scored, but hardly a chest X-ray."""
    header = image_header(data, where)
    check_pixels(header, where, max_pixels)
    try:
        with Image.open(io.BytesIO(data), formats=[header.format]) as img:
            if header.format == "JPEG" and side:
                img.draft("L", (side * DRAFT_GAP, side * DRAFT_GAP))
            pixels = to_grey(img)
    except IMAGE_ERRORS as err:
        raise unreadable(where, header.format, err) from None
    short, long = sorted((header.width, header.height))
    if short < MIN_SIDE or long > MAX_ASPECT * short:
        log.warning(
            f"cxr: warning: {where}: a {header.width} x {header.height} image (a side under {MIN_SIDE} px "
            f"or an aspect beyond 1:{MAX_ASPECT:g}) is scored, but is hardly a chest X-ray"
        )
    return pixels
