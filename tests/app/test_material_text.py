"""Which materials the LLM reads, and how much of them."""

from __future__ import annotations

import asyncio
import subprocess
import time
import zlib

import pytest

from app.material_text import kind_of
from app.pdf_reader import PdfUnreadable, pdf_text, read_pdf_text
from tests.support.pdf import make_pdf


@pytest.mark.parametrize("content_type, filename, kind", [
    ("text/plain", "a.bin", "text"), ("text/markdown; charset=utf-8", "a", "text"), ("application/pdf", "x", "pdf"),
    ("application/octet-stream", "Notes.MD", "text"), ("application/octet-stream", "deck.pdf", "pdf"),
    ("application/octet-stream", "movie.mp4", None), ("video/mp4", "notes.md", None), ("image/png", "a.png", None),
])
def test_kind_of(content_type, filename, kind):
    assert kind_of(content_type, filename) == kind


def test_pdf_text_stops_at_the_budget():
    data = make_pdf(*(f"Page number {n}" for n in range(1, 21)))
    assert "Page number 20" in pdf_text(data, 10_000)
    short = pdf_text(data, 30)  # pages of 13 characters: the third crosses the budget, the fourth is not read
    assert "Page number 3" in short and "Page number 4" not in short


def _costly_pdf(pages: int = 50, stream_mib: int = 8) -> bytes:
    """A PDF of a few KB whose pages all share one large compressed content stream of
    text operators that yield no text: pypdf parses the whole stream again for every
    page (found by probing: minutes of CPU for one file)."""
    operator = b"1 0 0 1 0 0 cm\n"
    stream = zlib.compress(b"BT () Tj ET\n" + operator * (stream_mib * (1 << 20) // len(operator)), 9)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", None,
               b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream"]
    kids = []
    for _ in range(pages):
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R "
                       b"/Resources << /ProcSet [/PDF /Text] >> >>")
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), pages)
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _readers_running() -> list[str]:
    out = subprocess.run(["pgrep", "-f", "-a", "app.pdf_reader"], capture_output=True, text=True).stdout
    return out.splitlines()


async def test_a_pdf_too_costly_to_read_is_stopped_and_its_reader_killed():
    data = _costly_pdf()
    assert len(data) < 100_000
    began = time.monotonic()
    with pytest.raises(PdfUnreadable, match="took over 1 s"):
        await read_pdf_text(data, 10_000, seconds=1)
    assert time.monotonic() - began < 5
    assert _readers_running() == []


async def test_a_cancelled_read_kills_its_reader():
    reading = asyncio.ensure_future(read_pdf_text(_costly_pdf(), 10_000, seconds=60))
    for _ in range(50):
        if _readers_running():
            break
        await asyncio.sleep(0.1)
    assert _readers_running(), "the reader should be running"
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert _readers_running() == []


async def test_pdfs_are_read_in_a_child_process_and_broken_ones_say_why():
    assert await read_pdf_text(make_pdf("One page", "Two pages"), 10_000) == "One page\n\nTwo pages"
    with pytest.raises(PdfUnreadable, match="PdfReadError|PdfStreamError|EmptyFileError"):
        await read_pdf_text(b"%PDF-1.4 this is not really a PDF", 10_000)
