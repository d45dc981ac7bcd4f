"""Untrusted image bytes: PNG and JPEG only, told by content; nothing after the image's end; the pixel
count held against its limit from the header, before decoding; degenerate shapes warned about."""

from __future__ import annotations

import io
import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cxr.data.images import read_grey
from cxr.data.untrusted_images import TRAILING_SLACK, decode_grey, image_header
from cxr.runtime.errors import CxrError


def encoded(pixels: np.ndarray, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind, **options)
    return buffer.getvalue()


def png_16bit(width: int, height: int) -> bytes:
    """A black 16-bit grey PNG written row by row (no full-size array): 10000 x 10000 is ~200 KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compress, row, parts = zlib.compressobj(9), b"\x00" * (1 + 2 * width), []
    parts += [compress.compress(row) for _ in range(height)]
    idat = b"".join(parts) + compress.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


PIXELS = np.random.default_rng(0).integers(0, 256, (120, 90), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_png_and_jpeg_decode_as_the_cache_reads_them(kind):
    data = encoded(PIXELS, kind)
    np.testing.assert_array_equal(decode_grey(data, "x.png"), read_grey(data))


@pytest.mark.parametrize(
    ("kind", "pixels", "named"),
    [
        ("TIFF", PIXELS, "a TIFF file"),
        ("TIFF", PIXELS.astype(np.float32) / 255, "a TIFF file"),  # float TIFF
        ("GIF", PIXELS, "a GIF file"),
        ("BMP", PIXELS, "a BMP file"),
        ("WEBP", PIXELS, "a WebP file"),
    ],
)
def test_other_formats_are_refused_by_content_whatever_the_name(kind, pixels, named):
    with pytest.raises(
        CxrError, match=f"chest.png: not a readable image: it is {named}; cxr reads PNG and JPEG"
    ):
        decode_grey(encoded(pixels, kind), "chest.png")


def test_bytes_after_the_image_end_are_refused_beyond_the_slack():
    png = encoded(PIXELS, "PNG")
    assert decode_grey(png + b"\0" * TRAILING_SLACK, "padded").shape == PIXELS.shape
    with pytest.raises(CxrError, match=r"x: 5000 bytes follow the end of the PNG image \(at most 1024"):
        decode_grey(png + b"PK\3\4" + b"z" * 4996, "x")
    # a JPEG's end is found by walking its segments: an EXIF thumbnail's EOI, restart markers and a
    # progressive scan's several SOS segments do not end it early
    rgb = np.stack([PIXELS] * 3, axis=-1)
    thumbnail = Image.Exif()
    for options in ({"exif": thumbnail}, {"progressive": True}, {"restart_marker_blocks": 1}):
        jpeg = encoded(rgb, "JPEG", **options)
        assert decode_grey(jpeg, "ok").shape == PIXELS.shape
        with pytest.raises(CxrError, match="3000 bytes follow the end of the JPEG image"):
            decode_grey(jpeg + b"\xff\xd9" * 1500, "x")


def test_the_pixel_limit_is_checked_from_the_header_before_decoding():
    bomb = png_16bit(10_000, 10_000)
    assert len(bomb) < 300_000  # 200 MB of pixels in a few hundred KB
    assert image_header(bomb, "b").pixels == 100_000_000
    with pytest.raises(
        CxrError, match=r"b: a 10000 x 10000 image \(100,000,000 pixels\) is over the limit of 50,000,000"
    ):
        decode_grey(bomb, "b")
    small = png_16bit(300, 200)
    with pytest.raises(CxrError, match="over the limit of 50,000 pixels an image"):
        decode_grey(small, "s", max_pixels=50_000)
    assert decode_grey(small, "s", max_pixels=60_000).shape == (200, 300)


def test_sixteen_bit_data_is_scaled_a_strip_at_a_time_as_whole():
    twelve_bit = np.random.default_rng(1).integers(0, 4096, (700, 64)).astype(np.uint16)  # 3 strips
    expected = np.rint(twelve_bit.astype(np.float32) * np.float32(255 / 4095)).clip(0, 255).astype(np.uint8)
    np.testing.assert_array_equal(decode_grey(encoded(twelve_bit, "PNG"), "t"), expected)


def test_a_big_jpeg_is_decoded_reduced_when_only_a_small_side_is_needed():
    jpeg = encoded(np.zeros((1600, 1200), np.uint8), "JPEG")
    assert decode_grey(jpeg, "j").shape == (1600, 1200)
    assert decode_grey(jpeg, "j", side=64).shape == (400, 300)  # by 4: still over 3 x 64 a side


@pytest.mark.parametrize(
    ("shape", "warned"), [((1, 1), True), ((1, 50_000), True), ((20, 81), True), ((64, 256), False)]
)
def test_degenerate_images_are_scored_with_a_warning(shape, warned, caplog):
    with caplog.at_level(logging.WARNING, logger="cxr"):
        assert decode_grey(encoded(np.zeros(shape, np.uint8), "PNG"), "odd").shape == shape
    assert ("odd: a" in caplog.text and "is hardly a chest X-ray" in caplog.text) == warned


def test_a_truncated_png_is_named():
    with pytest.raises(CxrError, match="t: not a readable PNG image"):
        decode_grey(encoded(PIXELS, "PNG")[:300], "t")
