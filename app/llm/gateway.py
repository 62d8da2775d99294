"""The one way the app talks to LLM providers (OpenAI-compatible chat completions).

* Two ``httpx`` connection pools per worker (the server's providers; tenants', which
  checks every address it connects to), shared by one ``AsyncOpenAI`` client per
  provider, made with the provider: the server's provider and its fallback at
  start-up, tenants' own (BYOK) on first use, kept in a small LRU -- never per request.
* Retries are the ``openai`` client's own: ``max_retries=LLM_MAX_RETRIES`` on
  connection errors, timeouts, 408/409/429 and 5xx, exponential backoff with
  jitter, honouring ``Retry-After``. An httpx request hook counts the attempts
  that really went out, so each recorded call says how many it took.
* ``LLM_TIMEOUT_S`` bounds every attempt (connect, and each wait for bytes).
* When a provider still fails with a retryable error, the next provider on the
  route gets the call (the server's fallback; a BYOK tenant has only its own).
  The last failure becomes ``502 llm_provider_error`` or ``504 llm_timeout``.
* Every provider call, failed or not, is recorded in ``llm_calls`` (tokens, cost,
  latency, attempts, outcome; never the prompt or the answer), written in the
  background so that the answer does not wait for it; shutdown waits for them.
* A call with a budget over it reserves its worst case first (``budgets``): 402
  ``budget_exceeded`` before any provider is asked when it does not fit; its row
  settles the reservation, and a call that ends without one gives it back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, AsyncIterator, Callable, Sequence

import asyncpg
import httpx2
import openai
from openai.types import CompletionUsage

from .. import metrics
from ..config import Settings
from ..errors import ApiError, ServiceUnavailable
from ..jsonutil import carriable, loads
from . import accounting, budgets, byok
from .budgets import NOTHING, Budgets, Reservation
from .byok import KeyBox
from .prices import PriceTable

log = logging.getLogger("app.llm")

TENANT_CLIENTS_KEPT = 256
CHARS_PER_TOKEN = 4  # rough estimate, used only when a provider reports no usage


class LLMProviderError(ApiError):
    status, code = 502, "llm_provider_error"


class LLMTimeout(ApiError):
    status, code = 504, "llm_timeout"


class LLMBadOutput(ApiError):
    status, code = 502, "llm_bad_output"


class LLMNotConfigured(ServiceUnavailable):
    code = "llm_not_configured"


class BadOutput(ValueError):
    """Raised by a reply parser: the reply is not what was asked for."""


class MalformedReply(Exception):
    """A provider's success that is no chat completion (another site, a broken proxy)."""


# What a reply may say about itself and still be believed (llm_calls holds integers).
MAX_REPORTED_TOKENS = 100_000_000
MAX_MODEL_CHARS = 200


def _reported_tokens(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPORTED_TOKENS:
        raise ValueError(f"not a token count: {value!r}")
    return value


def reported_model(value: Any, requested: str) -> str:
    """The model the reply names, unless that is no model name; then the one asked for."""
    if isinstance(value, str) and 0 < len(value) <= MAX_MODEL_CHARS and value.isprintable():
        return value
    return requested


def reply_text(reply: Any) -> str:
    """The text of a chat completion's first choice; ``MalformedReply`` if it is none."""
    choices = getattr(reply, "choices", None)
    if not isinstance(choices, list):
        raise MalformedReply("no list of choices")
    if not choices:
        return ""
    content = getattr(getattr(choices[0], "message", None), "content", None)
    if content is not None and not isinstance(content, str):
        raise MalformedReply("the message content is not text")
    return carriable(content or "")


def delta_text(chunk: Any) -> str:
    """The text a streamed chunk adds (nothing from anything that is not text)."""
    choices = getattr(chunk, "choices", None)
    if not isinstance(choices, list):
        return ""
    parts = (getattr(getattr(choice, "delta", None), "content", None) for choice in choices)
    return "".join(carriable(part) for part in parts if isinstance(part, str))


def finish_reason_in(chunk: Any) -> bool:
    """Whether a streamed chunk says why a choice stopped ("stop", "length", ...)."""
    choices = getattr(chunk, "choices", None)
    return isinstance(choices, list) and any(getattr(choice, "finish_reason", None) for choice in choices)


@dataclass(frozen=True)
class Provider:
    kind: str  # "default", "fallback" or "tenant" (llm_calls.provider)
    client: openai.AsyncOpenAI = field(repr=False, compare=False)  # holds the key; shares the worker's pool
    model: str  # used when the caller names no model
    pinned_model: str | None = None  # used whatever the caller names (LLM_FALLBACK_MODEL)

    def model_for(self, requested: str | None) -> str:
        return self.pinned_model or requested or self.model


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int
    estimated: bool = False

    @classmethod
    def reported(cls, usage) -> "Usage | None":
        """The provider's own figures (an ``openai`` usage object), if it sent any that
        can be true: otherwise the call's tokens are estimated."""
        if not isinstance(usage, CompletionUsage):
            return None
        try:
            return cls(_reported_tokens(usage.prompt_tokens), _reported_tokens(usage.completion_tokens))
        except ValueError:
            log.warning("the provider reported unusable token counts: %r", usage)
            return None


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    usage: Usage
    cost_usd: Decimal
    provider: str
    value: Any = None  # what the parser made of the text


@dataclass(frozen=True)
class Failure:
    outcome: str  # "provider_error" or "timeout"
    may_fall_back: bool
    detail: str

    def error(self) -> ApiError:
        if self.outcome == "timeout":
            return LLMTimeout("The LLM provider did not answer in time; try again later.")
        return LLMProviderError(f"The LLM provider failed ({self.detail}); try again later.")


def classify(exc: BaseException) -> Failure:
    """What a provider exception means for the caller and for the fallback."""
    if isinstance(exc, (openai.APITimeoutError, httpx2.TimeoutException, TimeoutError)):
        return Failure("timeout", True, "timeout")
    if isinstance(exc, byok.RefusedConnection):
        return Failure("provider_error", False, f"address refused: {exc.refusal}")
    if isinstance(exc, (openai.APIConnectionError, httpx2.TransportError, ConnectionError)):
        return Failure("provider_error", True, "connection error")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        return Failure("provider_error", status in (408, 409, 429) or status >= 500, f"HTTP {status}")
    if isinstance(exc, (MalformedReply, json.JSONDecodeError)):  # the latter: a body that is not JSON
        return Failure("provider_error", True, f"malformed reply: {exc}"[:200])
    return Failure("provider_error", False, type(exc).__name__)


_ATTEMPTS: ContextVar[list[int] | None] = ContextVar("llm_attempts", default=None)


async def _count_attempt(request: httpx2.Request) -> None:
    counter = _ATTEMPTS.get()
    if counter is not None:
        counter[0] += 1


def json_object_of(text: str) -> dict:
    try:
        data = loads(text)
    except ValueError:
        raise BadOutput("the reply is not JSON") from None
    if not isinstance(data, dict):
        raise BadOutput("the reply is not a JSON object")
    return data


def non_blank(text: str) -> str:
    if not text.strip():
        raise BadOutput("the reply is empty")
    return text


def estimate_tokens(messages: Sequence[dict]) -> int:
    return max(1, sum(len(str(m.get("content", ""))) for m in messages) // CHARS_PER_TOKEN)


class Gateway:
    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.recorder = accounting.Recorder(pool)
        self.budgets = Budgets(pool, settings.llm_reservation_ttl_s, later=self.recorder.later)
        self.prices = PriceTable(settings.llm_prices)
        self.keybox = KeyBox(settings.app_encryption_keys)
        timeout = httpx2.Timeout(settings.llm_timeout_s, connect=min(settings.llm_timeout_s, 10.0))
        self._http = openai.DefaultAsyncHttpxClient(timeout=timeout, event_hooks={"request": [_count_attempt]})
        # Tenants' own providers: every connection (for retries and redirects too) to a checked address.
        self._tenant_http = openai.DefaultAsyncHttpxClient(
            timeout=timeout, transport=byok.CheckedTransport(settings.llm_byok_allowed_networks), trust_env=False,
            event_hooks={"request": [_count_attempt]})
        self._timeout = timeout
        self._configured_models = {settings.llm_model, settings.llm_fallback_model}
        self._tenant_providers: OrderedDict[tuple, Provider] = OrderedDict()
        self.default = (self._provider("default", settings.openai_base_url, settings.openai_api_key,
                                       settings.llm_model) if settings.openai_api_key else None)
        self.fallback = (self._provider("fallback", settings.llm_fallback_base_url, settings.llm_fallback_api_key,
                                        settings.llm_model, settings.llm_fallback_model)
                         if settings.llm_fallback_base_url else None)

    async def close(self) -> None:
        await self.recorder.drain()
        await self.budgets.close()
        await self.recorder.drain()
        await self._http.aclose()
        await self._tenant_http.aclose()

    def _provider(self, kind: str, base_url: str, api_key: str, model: str, pinned_model: str | None = None, *,
                  http: httpx2.AsyncClient | None = None) -> Provider:
        client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=self.settings.llm_max_retries,
                                    timeout=self._timeout, http_client=http or self._http)
        return Provider(kind, client, model, pinned_model)

    def model_label(self, model: str) -> str:
        """A model's name in the metrics: the priced family or a configured model, else "other"
        (tenants name models freely; the metrics' series must not grow with them)."""
        family = self.prices.family(model)
        if family is not None:
            return family
        return model if model in self._configured_models else metrics.OTHER

    @property
    def client_count(self) -> int:
        """Clients made so far (and still kept): one per provider."""
        return sum(p is not None for p in (self.default, self.fallback)) + len(self._tenant_providers)

    def route(self, tenant_settings: dict | None) -> list[Provider]:
        """Providers to try in order: the tenant's own, else the server's and its fallback."""
        if tenant_settings:
            ident = (tenant_settings["base_url"], bytes(tenant_settings["api_key_encrypted"]), tenant_settings["model"])
            provider = self._tenant_providers.get(ident)
            if provider is None:
                provider = self._provider("tenant", tenant_settings["base_url"],
                                          self.keybox.decrypt(tenant_settings["api_key_encrypted"]),
                                          tenant_settings["model"] or self.settings.llm_model,
                                          http=self._tenant_http)
                self._tenant_providers[ident] = provider
                if len(self._tenant_providers) > TENANT_CLIENTS_KEPT:
                    self._tenant_providers.popitem(last=False)
            else:
                self._tenant_providers.move_to_end(ident)
            return [provider]
        route = [p for p in (self.default, self.fallback) if p]
        if not route:
            raise LLMNotConfigured("No LLM provider is configured on this server (OPENAI_API_KEY), "
                                   "and this tenant has none of its own (PUT /api/v1/settings/llm).")
        return route


def _request_options(messages: Sequence[dict], temperature: float | None, max_tokens: int | None,
                     json_object: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"messages": list(messages)}
    if temperature is not None:
        options["temperature"] = temperature
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    if json_object:
        options["response_format"] = {"type": "json_object"}
    return options


@dataclass
class CallContext:
    """One request's LLM calls: who pays, under which endpoint name, and the route."""

    gateway: Gateway
    tenant_id: uuid.UUID
    key_id: uuid.UUID | None
    endpoint: str
    route: list[Provider]
    budgeted: bool = False  # a budget is over the caller's calls: each reserves its worst case first
    reservation: Reservation = NOTHING  # the last call's (its remaining budget goes into the response)

    async def reserve(self, messages: Sequence[dict], model: str | None, max_tokens: int | None) -> Reservation:
        """The worst case of one call along the route, taken from the budgets over it
        (``BudgetExceeded`` if it does not fit); nothing without a budget."""
        if not self.budgeted:
            return NOTHING
        prices = self.gateway.prices
        prompt = budgets.prompt_tokens_bound(messages)
        worst = max(prices.cost(name, prompt, max_tokens or prices.max_output(name))
                    for name in {provider.model_for(model) for provider in self.route})
        self.reservation = await self.gateway.budgets.reserve(self.tenant_id, self.key_id, worst)
        return self.reservation

    def record(self, provider: Provider, model: str, usage: Usage, started: float, attempts: int,
               outcome: str, error: str | None = None, reservation: Reservation = NOTHING) -> Decimal:
        """Account for one provider call (written in the background, settling ``reservation``)
        and return its cost."""
        cost = self.gateway.prices.cost(model, usage.input_tokens, usage.output_tokens)
        seconds = time.monotonic() - started
        call = accounting.LLMCall(
            tenant_id=self.tenant_id, key_id=self.key_id, endpoint=self.endpoint, provider=provider.kind,
            model=model, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            usage_estimated=usage.estimated, cost_usd=cost, latency_ms=round(seconds * 1000),
            attempts=attempts, outcome=outcome, error=error)
        on_slice = reservation.open and reservation.slice is not None
        settling = self.gateway.recorder.submit(call, reservation.id if reservation.open and not on_slice else None,
                                                reservation.id if on_slice else None)
        self.gateway.budgets.done(reservation, cost, settling)
        metrics.observe_llm_call(provider.kind, self.gateway.model_label(model), outcome, attempts,
                                 usage.input_tokens, usage.output_tokens, float(cost), seconds)
        return cost

    async def _send(self, model: str | None, reservation: Reservation,
                    **options) -> tuple[Provider, str, Any, float, int]:
        """The request along the route, each provider with its own retries: the first
        answer wins (provider, model, reply, start time, attempts); the last failure raises.
        A call the client abandons is recorded as cancelled, its prompt estimated (what the
        provider bills for it is not known), settling ``reservation``."""
        failure: Failure | None = None
        for provider in self.route:
            model_name = provider.model_for(model)
            counter = [0]
            token = _ATTEMPTS.set(counter)
            started = time.monotonic()
            try:
                reply = await provider.client.chat.completions.create(model=model_name, **options)
                # A success that is no chat completion (or no stream of one) fails here, and may fall back.
                if options.get("stream"):
                    reply = await StartedStream.of(reply)
                else:
                    reply_text(reply)
                return provider, model_name, reply, started, counter[0]
            except asyncio.CancelledError:
                usage = Usage(estimate_tokens(options["messages"]), 0, estimated=True)
                self.record(provider, model_name, usage, started, counter[0], "cancelled", "client disconnected",
                            reservation)
                raise
            except (openai.OpenAIError, MalformedReply, json.JSONDecodeError) as exc:
                failure = classify(exc)
                self.record(provider, model_name, Usage(0, 0), started, counter[0], failure.outcome, failure.detail)
                log.warning("LLM call failed: %s via %s provider after %d attempt(s)", failure.detail, provider.kind,
                            counter[0])
                if not failure.may_fall_back:
                    break
            finally:
                _ATTEMPTS.reset(token)
        assert failure is not None
        raise failure.error()

    async def complete(self, messages: Sequence[dict], *, model: str | None = None, temperature: float | None = None,
                       max_tokens: int | None = None, json_object: bool = False,
                       parse: Callable[[str], Any] | None = None) -> Completion:
        """One chat completion along the route. ``parse`` turns the text into a value or
        raises ``BadOutput`` (recorded as such, then ``LLMBadOutput``)."""
        reservation = await self.reserve(messages, model, max_tokens)
        try:
            provider, model_name, reply, started, attempts = await self._send(
                model, reservation, **_request_options(messages, temperature, max_tokens, json_object))
            text = reply_text(reply)
            usage = (Usage.reported(getattr(reply, "usage", None))
                     or Usage(estimate_tokens(messages), max(1, len(text) // CHARS_PER_TOKEN), estimated=True))
            used_model = reported_model(getattr(reply, "model", None), model_name)
            try:
                value = parse(text) if parse else None
            except BadOutput as exc:
                self.record(provider, used_model, usage, started, attempts, "bad_output", str(exc)[:200], reservation)
                raise
            cost = self.record(provider, used_model, usage, started, attempts, "ok", reservation=reservation)
        finally:
            self.gateway.budgets.abandon(reservation)  # no row settled it (the call failed): give it back
        return Completion(text, used_model, usage, cost, provider.kind, value)

    async def complete_valid(self, messages: Sequence[dict], parse: Callable[[str], Any], *,
                             json_object: bool = False, **options) -> Completion:
        """A call whose reply ``parse`` must accept; one retry on a bad reply, then ``LLMBadOutput``."""
        for attempt in (1, 2):
            try:
                return await self.complete(messages, json_object=json_object, parse=parse, **options)
            except BadOutput as exc:
                log.warning("LLM reply unusable for %s (try %d of 2): %s", self.endpoint, attempt, exc)
                reason = str(exc)
        raise LLMBadOutput(f"The LLM's reply was not usable twice ({reason}); try again or rephrase.")

    async def complete_json(self, messages: Sequence[dict], parse: Callable[[dict], Any], **options) -> Completion:
        """A structured call: JSON-object mode; ``parse`` picks its keys from the object."""
        return await self.complete_valid(messages, lambda text: parse(json_object_of(text)), json_object=True,
                                         **options)

    async def open_stream(self, messages: Sequence[dict], *, model: str | None = None,
                          temperature: float | None = None, max_tokens: int | None = None) -> "LLMStream":
        """Start a streamed completion; errors before the first byte raise like ``complete``."""
        reservation = await self.reserve(messages, model, max_tokens)
        try:
            provider, model_name, raw, started, attempts = await self._send(
                model, reservation, **_request_options(messages, temperature, max_tokens, False),
                stream=True, stream_options={"include_usage": True})
        except BaseException:
            self.gateway.budgets.abandon(reservation)
            raise
        return LLMStream(self, provider, model_name, raw, started, attempts, estimate_tokens(messages), reservation)


class StartedStream:
    """A provider's event stream whose first chunk has arrived: until then, nothing is
    sent to the client, so a reply that is no event stream (an HTML page, a JSON body,
    an empty stream) can still fall back, or become a plain 502."""

    def __init__(self, raw, first) -> None:
        self._raw, self._first = raw, first

    @classmethod
    async def of(cls, raw) -> "StartedStream":
        try:
            content_type = raw.response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                raise MalformedReply(f"not an event stream ({content_type[:60] or 'no content type'})")
            try:
                first = await raw.__anext__()
            except StopAsyncIteration:
                raise MalformedReply("an empty event stream") from None
        except BaseException:
            await raw.close()
            raise
        return cls(raw, first)

    async def __aiter__(self):
        yield self._first
        async for chunk in self._raw:
            yield chunk

    async def close(self) -> None:
        await self._raw.close()


class LLMStream:
    """Text deltas of a streamed completion; ``finish`` closes it and records the call."""

    def __init__(self, ctx: CallContext, provider: Provider, model: str, raw, started: float, attempts: int,
                 input_estimate: int, reservation: Reservation = NOTHING) -> None:
        self.ctx, self.provider, self.model, self._raw = ctx, provider, model, raw
        self._reservation = reservation
        self._started, self._attempts, self._input_estimate = started, attempts, input_estimate
        self._usage: Usage | None = None
        self._deltas = 0
        self._chars = 0
        self._finished = False

    async def deltas(self) -> AsyncIterator[str]:
        """The text as it comes; ``MalformedReply`` at the end of a stream that closed
        before its reply was finished (no choice ever said why it stopped)."""
        finished = False
        async for chunk in self._raw:
            self.model = reported_model(getattr(chunk, "model", None), self.model)
            self._usage = Usage.reported(getattr(chunk, "usage", None)) or self._usage
            finished = finished or finish_reason_in(chunk)
            text = delta_text(chunk)
            if text:
                self._deltas += 1
                self._chars += len(text)
                yield text
        if not finished:
            raise MalformedReply("the stream ended before the reply was finished")

    @property
    def usage(self) -> Usage:
        """The provider's figures, or an estimate when it sent none (e.g. cancelled early)."""
        return self._usage or Usage(self._input_estimate, max(self._deltas, self._chars // CHARS_PER_TOKEN),
                                    estimated=True)

    async def finish(self, outcome: str = "ok", error: str | None = None) -> Decimal:
        """Close the upstream response (cancelling it if unfinished) and record the call."""
        if self._finished:
            return Decimal(0)
        self._finished = True
        try:
            await self._raw.close()
        except Exception:  # the connection is going away anyway
            log.debug("closing the upstream stream failed", exc_info=True)
        return self.ctx.record(self.provider, self.model, self.usage, self._started, self._attempts, outcome, error,
                               self._reservation)
