"""Which materials the LLM reads, and how much of them."""

from __future__ import annotations

import pytest

from app.material_text import kind_of, pdf_text
from tests.app.test_llm_features import make_pdf


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
