"""Optional error tracking with Sentry (``SENTRY_DSN``): unexpected errors (the 500s, which the
error middleware logs at ERROR), anything else logged at ERROR, and workers that crash (the
gunicorn master logs those) become events, tagged with the request id, the tenant and the
release. Unset, nothing is imported and nothing is sent.

No event carries a secret: requests go without headers, cookies, query strings or bodies,
frames without local variables, and every text in an event has the API-key pattern and the
configured secrets (provider keys, the S3 secret, the database password, the encryption
keys) replaced before it leaves.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Iterable
from urllib.parse import unquote, urlsplit

from . import log
from .config import Settings
from .tenants import KEY_PATTERN

REDACTED = "[redacted]"
_ANY_KEY = re.compile(KEY_PATTERN.pattern)
# Request parts that may carry a key, a provider key or a prompt.
_REQUEST_PARTS = ("headers", "cookies", "data", "query_string", "env")


def secrets_of(settings: Settings) -> list[str]:
    """The configured secrets that must never leave in an event (boto3 reads the S3 secret
    from the environment itself)."""
    values = [settings.openai_api_key, settings.llm_fallback_api_key, *settings.app_encryption_keys,
              unquote(urlsplit(settings.database_url).password or ""), os.environ.get("AWS_SECRET_ACCESS_KEY")]
    return [value for value in values if value and len(value) >= 4]


class Scrubber:
    def __init__(self, secrets: Iterable[str], extra: Iterable[str] = ()) -> None:
        self.secrets = sorted({*secrets, *(s for s in extra if s and len(s) >= 4)}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, REDACTED)
        return _ANY_KEY.sub(REDACTED, value)

    def walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.walk(item) for item in value]
        return value

    def event(self, event: dict, hint: dict) -> dict:
        """before_send: the request's context as tags, then nothing secret."""
        tags = event.setdefault("tags", {})
        for name, var in (("request_id", log.request_id_var), ("tenant_id", log.tenant_id_var)):
            if var.get():
                tags[name] = var.get()
        request = event.get("request")
        if isinstance(request, dict):
            for part in _REQUEST_PARTS:
                request.pop(part, None)
            if "url" in request:
                request["url"] = request["url"].split("?", 1)[0]
        return self.walk(event)

    def breadcrumb(self, crumb: dict, hint: dict) -> dict:
        return self.walk(crumb)


def setup(settings: Settings, release: str) -> bool:
    """Start sending events to ``SENTRY_DSN``, once per process; False when it is unset."""
    if not settings.sentry_dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.aiohttp import AioHttpIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration

    if sentry_sdk.get_client().is_active():  # the gunicorn master's, inherited by its worker
        return True
    scrubber = Scrubber(secrets_of(settings))
    sentry_sdk.init(
        dsn=settings.sentry_dsn, release=release, environment=settings.sentry_environment,
        send_default_pii=False, include_local_variables=False, max_request_body_size="never",
        before_send=scrubber.event, before_breadcrumb=scrubber.breadcrumb,
        integrations=[AioHttpIntegration(), LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
    )
    return True
