"""Uploads, from the request's bytes to grey pixels, in memory and within limits.

Starlette's own form parser spools files over 1 MB to a temporary file; here each part is read into
memory as it streams in, and the request stops being read the moment it exceeds a limit (too many
files, a file too large, the whole body too large), answered 413. The content decides what a file is
(PNG, JPEG or DICOM signatures), never its name or its Content-Type; a PNG's or JPEG's header is
checked against the pixel cap before any pixel is decoded. Nothing from a request becomes a path:
`keep_uploads` names each kept file by a fresh random id and its sniffed kind.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from multipart.multipart import MultipartParser, parse_options_header

from cxr.data.images import IMAGE_ERRORS
from cxr.data.untrusted_images import decode_grey, image_header
from cxr.runtime.errors import CxrError
from cxr.serving import dicom

MB = 1024 * 1024
FIELD_LIMIT = 1024  # bytes of a plain form field (a finding's name, an opacity)
ENVELOPE = MB  # room for the multipart headers and boundaries around the files
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
KINDS = ("PNG", "JPEG", "DICOM")


class UploadError(CxrError):
    """What a client sent that cannot be used; `status` is the HTTP answer (400, 413, 415, 422)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may carry (`cxr.app`'s max_file_mb, max_files and max_pixels)."""

    max_file_bytes: int
    max_files: int
    max_pixels: int

    @property
    def max_body_bytes(self) -> int:
        return self.max_files * self.max_file_bytes + ENVELOPE


@dataclass(frozen=True)
class Upload:
    """One file part: the name the client gave (shown back to it, never used as a path) and its bytes."""

    name: str
    data: bytes


@dataclass
class Form:
    files: list[Upload]
    fields: dict[str, str]


class _Collector:
    """python-multipart callbacks that keep each part in memory and enforce the limits as bytes arrive."""

    def __init__(self, limits: Limits):
        self.limits, self.form = limits, Form([], {})
        self._field = self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._data = bytearray()
        self._name: str = ""
        self._filename: str | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: setattr(self, "_field", self._field + d[s:e]),
            "on_header_value": lambda d, s, e: setattr(self, "_value", self._value + d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._headers, self._data, self._field, self._value = {}, bytearray(), b"", b""

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._filename = None if filename is None else filename.decode("utf-8", "replace")
        if self._filename is not None and len(self.form.files) >= self.limits.max_files:
            raise UploadError(413, f"too many files: at most {self.limits.max_files} a request")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]
        if self._filename is not None and len(self._data) > self.limits.max_file_bytes:
            raise UploadError(
                413, f"{self._filename!r} is larger than {self.limits.max_file_bytes / MB:g} MB (max_file_mb)"
            )
        if self._filename is None and len(self._data) > FIELD_LIMIT:
            raise UploadError(413, f"form field {self._name!r} is longer than {FIELD_LIMIT} bytes")

    def _end(self) -> None:
        if self._filename is not None:
            self.form.files.append(Upload(self._filename, bytes(self._data)))
        else:
            self.form.fields[self._name] = self._data.decode("utf-8", "replace")


async def read_form(request, limits: Limits) -> Form:
    """The multipart/form-data body of a Starlette request, every part in memory, within `limits`."""
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise UploadError(415, "send the images as multipart/form-data (curl -F file=@image.png)")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise UploadError(413, f"the request is larger than {limits.max_body_bytes / MB:g} MB in all")
    collector = _Collector(limits)
    parser = MultipartParser(options[b"boundary"], collector.callbacks())
    received, refused = 0, None
    async for chunk in request.stream():
        received += len(chunk)
        if received > limits.max_body_bytes:
            raise UploadError(413, f"the request is larger than {limits.max_body_bytes / MB:g} MB in all")
        if refused is None:  # after a refusal the rest is read and dropped, so the client hears why
            try:
                parser.write(chunk)
            except UploadError as err:
                refused = err
    if refused is not None:
        raise refused
    parser.finalize()
    return collector.form


def sniff(data: bytes) -> str:
    """PNG, JPEG or DICOM, from the file's first bytes; UploadError 400/415 otherwise."""
    if not data:
        raise UploadError(400, "the file is empty")
    for signature, kind in SIGNATURES.items():
        if data.startswith(signature):
            return kind
    if dicom.is_dicom(data):
        return "DICOM"
    raise UploadError(415, "not a PNG, JPEG or DICOM file (judged by its content, not its name)")


def check_pixels(data: bytes, limits: Limits) -> None:
    """A PNG's or JPEG's width x height, from its header alone, within the pixel cap (413 otherwise)."""
    try:
        header = image_header(data, "the upload")  # also refuses data after the image's end
    except CxrError as err:
        raise UploadError(422, str(err)) from None
    if header.pixels > limits.max_pixels:
        raise UploadError(
            413,
            f"{header.width} x {header.height} pixels is more than the {limits.max_pixels:,} allowed "
            "(max_pixels)",
        )


def decode_image(data: bytes, limits: Limits) -> np.ndarray:
    """PNG/JPEG bytes -> (H, W) uint8 grey through the decoder `cxr.predict` and `mlflow models serve`
    use for untrusted bytes, so the page and the API score exactly what they would."""
    return decode_grey(data, "the upload", limits.max_pixels)


def decode(data: bytes, limits: Limits) -> tuple[str, np.ndarray]:
    """(kind, grey pixels) of one uploaded file, or an UploadError with the status and why."""
    kind = sniff(data)
    if kind == "DICOM":
        try:
            return kind, dicom.read_dicom(data, limits.max_pixels)
        except dicom.DicomError as err:
            raise UploadError(413 if isinstance(err, dicom.DicomTooLarge) else 422, str(err)) from None
    check_pixels(data, limits)
    try:
        return kind, decode_image(data, limits)
    except CxrError as err:
        raise UploadError(422, str(err)) from None
    except IMAGE_ERRORS as err:
        raise UploadError(422, f"the {kind} cannot be decoded ({type(err).__name__}: {err})") from None


def keep(data: bytes, kind: str, folder: Path) -> Path:
    """Write an upload under `folder` as `<random id>.<kind>`: no part of the request names the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.{kind.lower()}"
    path.write_bytes(data)
    return path
