"""Optional error tracking: with SENTRY_DSN, an unexpected error (a 500) and a worker that
crashes reach Sentry (here a local stand-in for its ingest), tagged with the request id, the
tenant and the release, and nothing that leaves holds a key, a password or a prompt. Unset,
nothing is imported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pytest
from cryptography.fernet import Fernet

from app.config import Settings
from app.error_tracking import REDACTED, Scrubber, secrets_of
from app.migrate import apply_migrations
from tests.support.admin_cli import admin
from tests.support.gunicorn import Gunicorn
from tests.support.names import unique
from tests.support.paths import REPO_ROOT
from tests.support.sentry_ingest import SentryIngest
from tests.support.vps import wait_for


def _call(url: str, key: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, method=method, headers={"X-API-Key": key, "Content-Type": "application/json"},
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


@pytest.mark.gunicorn
def test_a_500_and_a_worker_crash_reach_sentry_tagged_and_without_secrets(app_env, pg):
    database = pg.create_database(unique("sentry").replace("-", "_"))
    apply_migrations(database)
    fernet = Fernet.generate_key().decode()
    with SentryIngest() as ingest:
        env = {**app_env, "DATABASE_URL": database, "APP_ENCRYPTION_KEY": fernet, "SENTRY_DSN": ingest.dsn,
               "SENTRY_ENVIRONMENT": "test"}
        tenant = json.loads(admin("tenant", "create", "Sentry", "--json", env=env).stdout)
        key = json.loads(admin("key", "issue", tenant["id"], "--json", env=env).stdout)["key"]
        prompt = f"PROMPT-{uuid.uuid4().hex}"
        with Gunicorn(env, workers=1) as server:
            status, _, _ = _call(f"{server.url}/api/v1/gpt", key, "POST", {"prompt": prompt})
            assert status == 200
            # The fault, from outside the app (no test route in the product): the table the
            # course list reads is gone.
            pg.psql("ALTER TABLE courses RENAME TO courses_gone", database.rsplit("/", 1)[1])
            status, headers, body = _call(f"{server.url}/api/v1/courses?api_key={key}", key)
            assert (status, body["error"]["code"]) == (500, "internal_error")
            request_id = headers["X-Request-ID"]
            event = ingest.wait_for_event(lambda e: e.get("tags", {}).get("request_id") == request_id)
            assert event["tags"]["tenant_id"] == tenant["id"]
            assert event["release"] == "unpackaged" and event["environment"] == "test"
            assert "UndefinedTableError" in json.dumps(event["exception"])
            assert "query_string" not in event.get("request", {}) and "headers" not in event.get("request", {})

            worker = server.worker_pids()[0]
            os.kill(worker, signal.SIGKILL)
            crash = ingest.wait_for_event(lambda e: str(worker) in json.dumps(e.get("logentry", e.get("message", ""))))
            assert crash["release"] == "unpackaged"
            assert wait_for(lambda: server.worker_pids() and worker not in server.worker_pids(), timeout=30)
    sent = b"".join(ingest.raw).decode(errors="replace")
    assert ingest.events() and prompt not in sent
    for secret in (key, fernet, app_env["OPENAI_API_KEY"]):
        assert secret not in sent


def test_the_scrubber_takes_every_configured_secret_and_any_key_out_of_an_event():
    settings = Settings.from_env({"DATABASE_URL": "postgresql://app:db-pass-1234@127.0.0.1/db", "S3_BUCKET": "b",
                                  "OPENAI_API_KEY": "sk-server-key-5678", "LLM_FALLBACK_BASE_URL": "https://fb.example",
                                  "LLM_FALLBACK_API_KEY": "sk-fallback-9012",
                                  "APP_ENCRYPTION_KEY": Fernet.generate_key().decode()})
    scrubber = Scrubber(secrets_of(settings), ["aws-secret-3456"])
    some_key = "cs_test_" + "ab" * 16
    event = {"message": f"failed with {some_key} and sk-server-key-5678",
             "exception": {"values": [{"value": "password db-pass-1234 rejected; aws-secret-3456"}]},
             "request": {"url": f"http://h/api/v1/courses?api_key={some_key}", "headers": {"X-API-Key": some_key},
                         "query_string": f"api_key={some_key}", "data": {"prompt": "secret plan"}},
             "extra": {"keys": [settings.app_encryption_keys[0], "sk-fallback-9012"]}}
    scrubbed = json.dumps(scrubber.event(event, {}))
    for secret in (some_key, "sk-server-key-5678", "db-pass-1234", "aws-secret-3456", "sk-fallback-9012",
                   settings.app_encryption_keys[0], "secret plan"):
        assert secret not in scrubbed
    assert scrubbed.count(REDACTED) >= 6


def test_without_a_dsn_sentry_is_not_even_imported(app_env):
    code = ("import asyncio, sys; from app.main import create_app; from app.config import Settings; "
            "asyncio.run(create_app(Settings.from_env())); print('sentry_sdk' in sys.modules)")
    env = {**os.environ, **app_env}
    env.pop("SENTRY_DSN", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr[-2000:]
