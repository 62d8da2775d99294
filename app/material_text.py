"""The text of a course's materials, for the LLM (structure generation).

Plain text and Markdown are read as they are; PDFs through pypdf, page by page
until the budget is used, in a child process killed if it takes too long
(``app.pdf_reader``). Only the first bytes of a text file are fetched (a
ranged GET); a PDF must be read whole, so PDFs above ``PDF_MAX_BYTES`` are left
out, as is any file that cannot be read or is missing from storage (logged, never
fatal).
"""

from __future__ import annotations

import logging
import uuid

import asyncpg

from .materials import media_type
from .pdf_reader import PdfUnreadable, read_pdf_text
from .storage import ObjectMissing

log = logging.getLogger("app.materials")

TEXT_TYPES = ("text/plain", "text/markdown", "text/x-markdown")
PDF_TYPE = "application/pdf"
# A file stored as application/octet-stream still counts by its name.
SUFFIXES = {".txt": "text/plain", ".md": "text/markdown", ".markdown": "text/markdown", ".pdf": PDF_TYPE}
PDF_MAX_BYTES = 64 << 20


def kind_of(content_type: str, filename: str) -> str | None:
    """"text", "pdf" or None (not readable for the LLM)."""
    media = media_type(content_type)
    if media == "application/octet-stream":
        media = next((t for suffix, t in SUFFIXES.items() if filename.lower().endswith(suffix)), media)
    if media in TEXT_TYPES:
        return "text"
    return "pdf" if media == PDF_TYPE else None


async def readable_materials(conn: asyncpg.Connection, tenant_id: uuid.UUID, course_id: uuid.UUID) -> list[dict]:
    """The course's text, Markdown and PDF materials, oldest first, with their object keys."""
    rows = await conn.fetch(
        """SELECT filename, content_type, object_key, size_bytes FROM materials
           WHERE course_id = $1 AND tenant_id = $2 ORDER BY created_at, id""", course_id, tenant_id)
    return [dict(r, kind=kind) for r in rows if (kind := kind_of(r["content_type"], r["filename"]))]


async def _text_of(storage, row: dict, budget_chars: int) -> str:
    if row["size_bytes"] == 0:  # nothing to read (and S3 refuses any range of an empty object)
        return ""
    if row["kind"] == "text":
        head = await storage.read_head(row["object_key"], min(budget_chars, row["size_bytes"]))
        return head.decode("utf-8", errors="ignore")
    if row["size_bytes"] > PDF_MAX_BYTES:
        log.info("PDF %r left out of the LLM's input: %d bytes is over %d", row["filename"], row["size_bytes"],
                 PDF_MAX_BYTES)
        return ""
    data = await storage.read_head(row["object_key"], row["size_bytes"])
    try:
        return await read_pdf_text(data, budget_chars)
    except PdfUnreadable as exc:
        log.warning("PDF %r left out of the LLM's input: %s", row["filename"], exc)
        return ""


async def read_texts(storage, rows: list[dict], budget_chars: int) -> list[tuple[str, str]]:
    """(filename, text) of readable materials, oldest first, until ``budget_chars`` are used."""
    texts = []
    for row in rows:
        if budget_chars <= 0:
            break
        try:
            text = (await _text_of(storage, row, budget_chars)).strip()[:budget_chars]
        except ObjectMissing:
            log.warning("material %r left out of the LLM's input: its file is missing from storage (%s)",
                        row["filename"], row["object_key"])
            continue
        if text:
            texts.append((row["filename"], text))
            budget_chars -= len(text)
    return texts
