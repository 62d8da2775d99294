"""A PDF's text, read in a child process that can be stopped.

A crafted PDF of a few kilobytes can make pypdf decode one large content stream
again for every page that points at it: minutes of CPU and hundreds of MB for one
file (found by probing). A thread cannot be stopped, so each PDF is read by
``python -m app.pdf_reader BUDGET`` (the file on stdin, the text on stdout),
killed after ``PDF_SECONDS``; a worker runs one at a time.
"""

from __future__ import annotations

import asyncio
import io
import sys
import weakref
from pathlib import Path

from pypdf import PdfReader
from pypdf.errors import PyPdfError

PDF_SECONDS = 20.0
PDF_READERS_AT_ONCE = 1  # per worker
_ROOT = Path(__file__).resolve().parents[1]  # where `app` can be imported from
_readers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]" = weakref.WeakKeyDictionary()


class PdfUnreadable(Exception):
    """Broken, encrypted, or too costly to read."""


def pdf_text(data: bytes, budget_chars: int) -> str:
    parts, used = [], 0
    for page in PdfReader(io.BytesIO(data)).pages:
        text = (page.extract_text() or "").strip()
        if text:
            parts.append(text)
            used += len(text)
        if used >= budget_chars:
            break
    return "\n\n".join(parts)


async def read_pdf_text(data: bytes, budget_chars: int, seconds: float = PDF_SECONDS) -> str:
    """The text of a PDF, up to about ``budget_chars``, read in a child process."""
    async with _readers.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(PDF_READERS_AT_ONCE)):
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.pdf_reader", str(budget_chars), cwd=_ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(child.communicate(data), seconds)
        except TimeoutError:
            raise PdfUnreadable(f"reading it took over {seconds:g} s") from None
        finally:
            if child.returncode is None:  # timed out, or the request was cancelled
                child.kill()
                await asyncio.shield(child.wait())
    if child.returncode != 0:
        reason = err.decode("utf-8", errors="replace").strip().splitlines()
        raise PdfUnreadable(reason[-1] if reason else f"the reader exited with {child.returncode}")
    return out.decode("utf-8")


def main() -> int:
    try:
        text = pdf_text(sys.stdin.buffer.read(), int(sys.argv[1]))
    except (PyPdfError, ValueError, KeyError, TypeError, RecursionError) as exc:  # a broken or encrypted PDF
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(text.encode("utf-8", errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
