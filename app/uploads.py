"""An upload's file as it arrives: a raw body (``?filename=``) or the ``file``
part of ``multipart/form-data``, read in chunks, never whole."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import AsyncIterator

from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from .errors import BadRequest, UnsupportedMediaType, ValidationFailed
from .materials import clean_filename, media_type

CHUNK_BYTES = 256 * 1024
# Boundaries and part headers around the file in a multipart body.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
DEFAULT_CONTENT_TYPE = "application/octet-stream"
# type/subtype, then any parameters, in printable ASCII: what storage headers can carry.
_CONTENT_TYPE = re.compile(r"[\w!#$&^.+-]+/[\w!#$&^.+-]+(\s*;[\x20-\x7e]*)?", re.ASCII)
MAX_CONTENT_TYPE_CHARS = 255
# RFC 7578 (4.7): form parts carry their bytes as they are; base64 or quoted-printable
# would be stored still encoded.
PART_TRANSFER_ENCODINGS = ("binary", "8bit", "7bit")
# What aiohttp's multipart reader raises on a body that is not well-formed multipart.
MALFORMED_MULTIPART = (ValueError, HttpProcessingError)


@dataclass
class IncomingFile:
    filename: str
    content_type: str
    chunks: AsyncIterator[bytes]


def declared_file_bytes(request: web.Request) -> int | None:
    """The most the file can be, judging by Content-Length (None: chunked, unknown)."""
    if request.content_length is None:
        return None
    if request.content_type == "multipart/form-data":
        return max(0, request.content_length - MULTIPART_OVERHEAD_BYTES)
    return request.content_length


def clean_content_type(value: str | None) -> str:
    """The file's declared media type as given, or the generic one when it is missing or
    not a media type (storage signs it into a header: printable ASCII only)."""
    value = (value or "").strip()
    if len(value) <= MAX_CONTENT_TYPE_CHARS and _CONTENT_TYPE.fullmatch(value):
        return value
    return DEFAULT_CONTENT_TYPE


async def incoming_file(request: web.Request) -> IncomingFile:
    if request.content_type == "multipart/form-data":
        return await _multipart_file(request)
    filename = request.query.get("filename", "")
    if not filename.strip():
        raise ValidationFailed("Name the file with ?filename= (or send multipart/form-data).",
                               details={"filename": ["Missing data for required field."]})
    content_type = clean_content_type(request.headers.get(hdrs.CONTENT_TYPE))
    if media_type(content_type) == "application/x-www-form-urlencoded":
        # What `curl --data-binary @file` declares unless told otherwise: no file's own type.
        content_type = DEFAULT_CONTENT_TYPE
    return IncomingFile(clean_filename(filename), content_type, request.content.iter_chunked(CHUNK_BYTES))


async def _multipart_file(request: web.Request) -> IncomingFile:
    try:
        reader = await request.multipart()
        part = await reader.next()
        while part is not None and not (isinstance(part, BodyPartReader) and part.name == "file"):
            await part.release()  # another field: skip it
            part = await reader.next()
    except MALFORMED_MULTIPART as exc:  # no boundary, no boundary line, bad part headers...
        raise _malformed(exc) from None
    if part is None:
        raise ValidationFailed("The form has no file part named 'file'.",
                               details={"file": ["Missing data for required field."]})
    transfer_encoding = part.headers.get(hdrs.CONTENT_TRANSFER_ENCODING, "binary").strip().lower()
    if transfer_encoding not in PART_TRANSFER_ENCODINGS:
        raise UnsupportedMediaType(f'The file part\'s Content-Transfer-Encoding "{transfer_encoding[:64]}" is not '
                                   "supported: send the file's bytes as they are (RFC 7578).")
    content_type = clean_content_type(part.headers.get(hdrs.CONTENT_TYPE))
    return IncomingFile(clean_filename(part.filename), content_type, _part_chunks(reader, part))


async def _part_chunks(reader: MultipartReader, part: BodyPartReader) -> AsyncIterator[bytes]:
    """The file part's bytes; then the rest of the form, which must end with its closing
    boundary (a body cut short is an error, not a shorter file) and hold no second file."""
    try:
        while chunk := await part.read_chunk(CHUNK_BYTES):
            yield chunk
        while (rest := await reader.next()) is not None:
            if isinstance(rest, BodyPartReader) and rest.name == "file":  # what was read so far is discarded
                raise ValidationFailed("The form has more than one part named 'file': send one file per upload.",
                                       details={"file": ["One file per upload."]})
            await rest.release()
    except MALFORMED_MULTIPART as exc:
        raise _malformed(exc) from None
    if not reader.at_eof():
        raise _malformed("the body ended before the closing boundary")


def _malformed(problem: object) -> BadRequest:
    text = problem.message if isinstance(problem, HttpProcessingError) else problem
    return BadRequest(f"The multipart/form-data body is malformed: {text}")
