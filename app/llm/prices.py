"""What a call costs: USD per million input/output tokens, by model.

The built-in table holds OpenAI's list prices for current chat models (standard
tier, uncached input); ``LLM_PRICES`` extends or overrides it. A dated snapshot
("gpt-4o-mini-2024-07-18") is priced as its model ("gpt-4o-mini"): the longest
table entry that the name starts with, followed by "-", wins. A model in no
table costs 0 and is logged once, so that it can be added to ``LLM_PRICES``.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Mapping

log = logging.getLogger("app.llm")

# (input, output) USD per 1M tokens.
BUILT_IN: dict[str, tuple[float, float]] = {
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}

_MILLION = Decimal(1_000_000)
_CENT_FRACTION = Decimal("0.00000001")  # numeric(14, 8) in llm_calls


class PriceTable:
    def __init__(self, overrides: Mapping[str, tuple[float, float]] | None = None) -> None:
        merged = {**BUILT_IN, **(overrides or {})}
        self._prices = {model: (Decimal(str(i)), Decimal(str(o))) for model, (i, o) in merged.items()}
        self._unpriced_seen: set[str] = set()

    def family(self, model: str) -> str | None:
        """The table's entry that prices ``model``: its own, or its family's for a dated snapshot."""
        if model in self._prices:
            return model
        return max((m for m in self._prices if model.startswith(m + "-")), key=len, default=None)

    def price(self, model: str) -> tuple[Decimal, Decimal] | None:
        family = self.family(model)
        return self._prices[family] if family else None

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> Decimal:
        price = self.price(model)
        if price is None:
            if model not in self._unpriced_seen:
                self._unpriced_seen.add(model)
                log.warning("no price for model %r: its calls cost 0 until LLM_PRICES lists it", model)
            return Decimal(0)
        cost = (input_tokens * price[0] + output_tokens * price[1]) / _MILLION
        return cost.quantize(_CENT_FRACTION)
