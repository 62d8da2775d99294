"""What a call costs: USD per million input/output tokens, by model, and at most.

The built-in table holds OpenAI's list prices for current chat models (standard
tier, uncached input); ``LLM_PRICES`` extends or overrides it. A dated snapshot
("gpt-4o-mini-2024-07-18") is priced as its model ("gpt-4o-mini"): the longest
table entry that the name starts with, followed by "-", wins. A model in no
table costs 0 and is logged once, so that it can be added to ``LLM_PRICES``.

A call's worst case (what a budget reserves for it, app/llm/budgets.py) needs the most
output tokens a model may write when the request sets no ``max_tokens``: the
built-in caps are the models' documented maximum output; ``LLM_PRICES`` may give
``max_output_tokens``; a priced model with neither is capped at ``DEFAULT_MAX_OUTPUT``.
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

# The most output tokens each model writes in one reply (reasoning tokens included).
BUILT_IN_MAX_OUTPUT: dict[str, int] = {
    "gpt-5": 128_000, "gpt-5-mini": 128_000, "gpt-5-nano": 128_000,
    "gpt-4.1": 32_768, "gpt-4.1-mini": 32_768, "gpt-4.1-nano": 32_768,
    "gpt-4o": 16_384, "gpt-4o-mini": 16_384,
    "o3": 100_000, "o3-mini": 100_000, "o4-mini": 100_000,
    "gpt-4-turbo": 4_096, "gpt-3.5-turbo": 4_096,
}
DEFAULT_MAX_OUTPUT = 128_000

_MILLION = Decimal(1_000_000)
_CENT_FRACTION = Decimal("0.00000001")  # numeric(14, 8) in llm_calls


class PriceTable:
    def __init__(self, overrides: Mapping[str, tuple] | None = None) -> None:
        """``overrides``: model -> (input, output) or (input, output, max output tokens or None)."""
        overrides = overrides or {}
        merged = {**BUILT_IN, **{model: entry[:2] for model, entry in overrides.items()}}
        self._prices = {model: (Decimal(str(i)), Decimal(str(o))) for model, (i, o) in merged.items()}
        self._max_output = {**BUILT_IN_MAX_OUTPUT,
                            **{model: entry[2] for model, entry in overrides.items() if len(entry) > 2 and entry[2]}}
        self._unpriced_seen: set[str] = set()

    def family(self, model: str) -> str | None:
        """The table's entry that prices ``model``: its own, or its family's for a dated snapshot."""
        if model in self._prices:
            return model
        return max((m for m in self._prices if model.startswith(m + "-")), key=len, default=None)

    def price(self, model: str) -> tuple[Decimal, Decimal] | None:
        family = self.family(model)
        return self._prices[family] if family else None

    def max_output(self, model: str) -> int:
        """The most output tokens ``model`` writes in one reply (see the module's doc)."""
        family = self.family(model)
        return self._max_output.get(model) or self._max_output.get(family or "", DEFAULT_MAX_OUTPUT)

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> Decimal:
        price = self.price(model)
        if price is None:
            if model not in self._unpriced_seen:
                self._unpriced_seen.add(model)
                log.warning("no price for model %r: its calls cost 0 until LLM_PRICES lists it", model)
            return Decimal(0)
        cost = (input_tokens * price[0] + output_tokens * price[1]) / _MILLION
        return cost.quantize(_CENT_FRACTION)
