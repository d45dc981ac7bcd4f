"""DICOM bytes -> (H, W) grey uint8, as a radiologist's viewer would show the image and as the cache
scales wide data, so a DICOM and the PNG exported from it give the model the same pixels.

The modality LUT (rescale slope and intercept) and the VOI LUT or window are applied (pydicom's own
`apply_modality_lut` and `apply_voi_lut`), MONOCHROME1 is inverted (there, high values are dark), and
the result is scaled to 0..255 over its range: the window's output range when there is one, else
0..2**bits - 1 with the fewest bits (at least 8) that hold the data, as `cxr.data.images.to_grey`
scales 12- and 16-bit PNGs. Nothing read from the dataset's tags (patient name, ids, dates) goes into
a message: errors name only the transfer syntax and what to do.

pydicom is the optional extra `[dicom]`; without it a DICOM upload is answered with how to install it.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cxr.data.images import bit_depth, to_grey
from cxr.runtime.errors import CxrError

DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128  # after the 128-byte preamble (PS3.10 7.1)
_EXTREMES = np.array([-1e12, 1e12])  # through a monotonic window: its output range's two ends


class DicomError(CxrError):
    """A DICOM that cannot become an image: no pixel data, a transfer syntax without a decoder, ..."""


class DicomTooLarge(DicomError):
    """Rows x Columns over the caller's pixel cap, found before the pixels are decoded."""


def is_dicom(data: bytes) -> bool:
    """The DICOM file signature (`DICM` after the preamble): what the content says, not the file name."""
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise DicomError("DICOM files need pydicom: pip install 'cxr[dicom]'") from None
    return pydicom


def read_dicom(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """DICOM file bytes -> (H, W) uint8 grey (module docstring); DicomError says why not, DicomTooLarge
    when the header's Rows x Columns exceed `max_pixels`."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as err:  # pydicom raises many types for a malformed file
        raise DicomError(f"not a readable DICOM file ({type(err).__name__})") from None
    if "PixelData" not in ds:
        raise DicomError("the DICOM file has no pixel data (a report or structured document, not an image)")
    rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if max_pixels is not None and rows * columns > max_pixels:
        raise DicomTooLarge(f"{columns} x {rows} pixels is more than the {max_pixels:,} allowed (max_pixels)")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        raw = ds.pixel_array
    except Exception as err:  # no decoder for a compressed syntax, or corrupt pixel data
        named = f"{syntax} ({syntax.name})" if syntax is not None else "unknown"
        raise DicomError(
            f"the DICOM pixel data cannot be decoded here (transfer syntax {named}: {type(err).__name__}); "
            "export it uncompressed or as PNG, or install a decoder for it (pylibjpeg, gdcm)"
        ) from None
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        rgb = np.asarray(raw)
        if rgb.ndim != 3 or rgb.dtype != np.uint8:
            raise DicomError("only single-frame grey or 8-bit RGB DICOM images are read; send one frame")
        return to_grey(Image.fromarray(rgb, mode="RGB"))
    if raw.ndim != 2:
        raise DicomError(f"a multi-frame DICOM ({raw.shape[0]} frames); send one frame as its own file")
    return to_uint8(raw, ds)


def to_uint8(raw: np.ndarray, ds) -> np.ndarray:
    """Stored values -> display grey: modality LUT, VOI LUT or window, MONOCHROME1 inverted, 0..255."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(raw, ds)
    windowed = "WindowCenter" in ds or "VOILUTSequence" in ds
    if windowed:
        values = apply_voi_lut(values, ds)
        low, high = np.sort(apply_voi_lut(_EXTREMES.copy(), ds))
    elif np.issubdtype(values.dtype, np.unsignedinteger):
        low, high = 0.0, float(2 ** bit_depth(values) - 1)
    else:  # signed or rescaled data: its own range
        low, high = float(values.min()), float(values.max())
    span = max(float(high - low), 1.0)
    values = values.astype(np.float32) - np.float32(low)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        values = np.float32(span) - values
    # the scale as to_grey computes it, so 8-bit data is unchanged and 16-bit data matches the cache
    return np.rint(values * np.float32(255.0 / span)).clip(0, 255).astype(np.uint8)
