"""Streaming multipart parser for ``POST /v1/jobs`` with a byte cap counted on the wire.

Why hand-written (on python-multipart's push parser, as Starlette does): ``request.form()`` spools
every part before the endpoint runs, so neither the size cap nor the auth check could act before the
body is read. Here the endpoint pulls ``request.stream()`` itself (after the API-key dependency ran),
counts every received byte, and stops with ``UploadTooLarge`` as soon as the cap is exceeded; file
parts go to a private temp folder (named by role, never by the client's filename), which the caller
deletes. Client filenames are not even parsed out of the part headers.

A CT or PET part may be a NIfTI (``.nii.gz``/``.nii``, by its gzip magic) or a zip of one DICOM
series: told by content (``PK\x03\x04``), never by a filename. A zip is kept as ``upload-<role>.zip``
(``UploadedFile.is_dicom_zip``); it skips the NIfTI header-first check and is unpacked and read by
``services.api.ingest`` once the body is complete.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from autopaint.contracts import INPUT_ROLES
from autopaint.errors import InvalidInput
from autopaint.storage import UploadTooLarge

log = logging.getLogger(__name__)

TEXT_FIELDS = ("params", "cohort_id", "case_name")
MAX_TEXT_FIELD = 64 * 1024
MAX_PART_HEADER = 8 * 1024
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
DICOM_ROLES = ("ct", "pet")
"""Roles that may be uploaded as a zip of a DICOM series."""


@dataclass
class UploadedFile:
    role: str
    path: Path
    nbytes: int = 0
    sha256: str = ""
    head: bytes = b""  # first bytes (for header-first checks)

    @property
    def is_dicom_zip(self) -> bool:
        """A CT/PET part that starts like a zip archive (a DICOM series; masks and labels are NIfTI)."""
        return self.role in DICOM_ROLES and self.head[:4] == ZIP_MAGIC


@dataclass
class ParsedUpload:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)
    received_bytes: int = 0


class _Collector:
    """python-multipart callbacks: route each part to a text buffer or a temp file."""

    HEAD_BYTES = 64 * 1024

    def __init__(self, tmpdir: Path, on_file_head: Callable[[UploadedFile], None] | None) -> None:
        self.tmpdir = tmpdir
        self.out = ParsedUpload()
        self.on_file_head = on_file_head
        self._hname = b""
        self._hvalue = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._text: bytearray | None = None
        self._file: UploadedFile | None = None
        self._fh: BinaryIO | None = None
        self._digest = hashlib.sha256()
        self._head_sent = False

    def on_part_begin(self) -> None:
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]
        if len(self._hvalue) > MAX_PART_HEADER:
            raise InvalidInput("multipart part header too long", code="bad_multipart")

    def on_header_end(self) -> None:
        self._headers[self._hname.lower()] = self._hvalue
        self._hname, self._hvalue = b"", b""

    def on_headers_finished(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        raw = opts.get(b"name")
        name = raw.decode("latin-1") if raw else ""
        if name in INPUT_ROLES:
            if name in self.out.files:
                raise InvalidInput(f"field '{name}' given twice", code="duplicate_field")
            up = UploadedFile(role=name, path=self.tmpdir / f"upload-{name}.nii.gz")
            self._file, self._fh, self._digest, self._head_sent = up, open(up.path, "wb"), hashlib.sha256(), False
            self._text = None
        elif name in TEXT_FIELDS:
            if name in self.out.fields:
                raise InvalidInput(f"field '{name}' given twice", code="duplicate_field")
            self._text, self._file = bytearray(), None
        else:
            allowed = ", ".join((*INPUT_ROLES, *TEXT_FIELDS))
            raise InvalidInput(f"unknown form field {name[:40]!r}; allowed: {allowed}", code="unknown_field")
        self._name = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._file is not None and self._fh is not None:
            self._fh.write(chunk)
            self._digest.update(chunk)
            self._file.nbytes += len(chunk)
            if len(self._file.head) < self.HEAD_BYTES:
                self._file.head += chunk[: self.HEAD_BYTES - len(self._file.head)]
            if not self._head_sent and len(self._file.head) >= self.HEAD_BYTES:
                self._send_head()
        elif self._text is not None:
            self._text += chunk
            if len(self._text) > MAX_TEXT_FIELD:
                raise InvalidInput(f"field '{self._name}' too long", code="field_too_long")

    def _send_head(self) -> None:
        self._head_sent = True
        if self.on_file_head is not None and self._file is not None:
            self.on_file_head(self._file)

    def on_part_end(self) -> None:
        if self._file is not None and self._fh is not None:
            self._fh.close()
            self._fh = None
            if self._file.is_dicom_zip:
                self._file.path = self._file.path.rename(self._file.path.with_name(f"upload-{self._file.role}.zip"))
            elif self._file.head[:2] != GZIP_MAGIC:  # readers pick the codec from the suffix
                plain = self._file.path.with_name(f"upload-{self._file.role}.nii")
                self._file.path = self._file.path.rename(plain)
            if not self._head_sent:
                self._send_head()
            self._file.sha256 = self._digest.hexdigest()
            self.out.files[self._file.role] = self._file
            self._file = None
        elif self._text is not None:
            try:
                self.out.fields[self._name] = self._text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"field '{self._name}' is not UTF-8", code="bad_multipart") from exc
            self._text = None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def parse_upload(
    content_type: str,
    stream: AsyncIterator[bytes],
    tmpdir: Path,
    max_bytes: int,
    on_file_head: Callable[[UploadedFile], None] | None = None,
) -> ParsedUpload:
    """Parse a ``multipart/form-data`` body from ``stream`` into ``tmpdir``.

    Raises ``UploadTooLarge`` once more than ``max_bytes`` body bytes arrived (the rest is not
    read), ``InvalidInput`` (codes ``bad_multipart``, ``unknown_field``, ``duplicate_field``,
    ``field_too_long``, or whatever ``on_file_head`` raises for a file's first 64 KiB).
    """
    ctype, opts = parse_options_header(content_type)
    if ctype != b"multipart/form-data" or not opts.get(b"boundary"):
        raise InvalidInput("the body must be multipart/form-data", code="bad_multipart")
    collector = _Collector(tmpdir, on_file_head)
    callbacks = {
        "on_part_begin": collector.on_part_begin,
        "on_part_data": collector.on_part_data,
        "on_part_end": collector.on_part_end,
        "on_header_field": collector.on_header_field,
        "on_header_value": collector.on_header_value,
        "on_header_end": collector.on_header_end,
        "on_headers_finished": collector.on_headers_finished,
    }
    parser = MultipartParser(opts[b"boundary"], callbacks)  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > max_bytes:
                raise UploadTooLarge(f"the upload exceeds {max_bytes} bytes")
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidInput(f"malformed multipart body: {exc}", code="bad_multipart") from exc
    finally:
        collector.close()
    collector.out.received_bytes = received
    return collector.out
