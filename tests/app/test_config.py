"""Configuration: defaults, and one clear line naming a bad variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.config import ConfigError, Settings
from tests.support.paths import REPO_ROOT

BASE = {"DATABASE_URL": "postgresql://u:p@localhost:5432/db", "S3_BUCKET": "b"}


def test_defaults():
    settings = Settings.from_env(BASE)
    assert settings.llm_model == "gpt-4o-mini" and settings.llm_timeout_s == 30 and settings.llm_max_retries == 3
    assert settings.max_upload_bytes == 1073741824
    assert (settings.rate_limit_prep_per_min, settings.rate_limit_check_per_min) == (60, 300)
    assert settings.cors_origins == () and settings.log_level == "INFO" and settings.s3_endpoint_url is None


def test_values_are_parsed():
    settings = Settings.from_env({**BASE, "CORS_ORIGINS": "https://a.example, https://b.example/",
                                  "LOG_LEVEL": "debug", "LLM_TIMEOUT_S": "2.5", "MAX_UPLOAD_BYTES": "1024"})
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.log_level == "DEBUG" and settings.llm_timeout_s == 2.5 and settings.max_upload_bytes == 1024


@pytest.mark.parametrize("name, value", [
    ("DATABASE_URL", ""), ("DATABASE_URL", "mysql://x/y"), ("DATABASE_URL", "postgresql://h:notaport/db"),
    ("S3_BUCKET", ""), ("S3_ENDPOINT_URL", "ftp://x"), ("LLM_TIMEOUT_S", "soon"), ("LLM_TIMEOUT_S", "0"),
    ("LLM_MAX_RETRIES", "-1"), ("MAX_UPLOAD_BYTES", "1G"), ("RATE_LIMIT_PREP_PER_MIN", "many"),
    ("RATE_LIMIT_CHECK_PER_MIN", "2147483648"),
    # Found by probing: each of these passed, then stopped every worker's start-up with a traceback
    # (or made every request a 500, or the sweeps log an overflow).
    ("S3_ENDPOINT_URL", "http://exa mple.com"), ("S3_ENDPOINT_URL", "http://a..b"),
    ("OPENAI_BASE_URL", "http://h:abc"), ("S3_ENDPOINT_URL", "http://127.0.0.1:0"),
    ("AWS_DEFAULT_REGION", "bad region!"), ("DATABASE_URL", "postgresql://u:%00@127.0.0.1:5432/db"),
    ("DATABASE_URL", "postgresql://u:p@" + "a" * 64 + ".x/db"),
    ("DATABASE_URL", "postgresql://u:p@h/db?application_name=\udcff"),
    ("UPLOAD_ORPHAN_AGE_S", "1000000000000"), ("DOWNLOAD_URL_TTL_S", "604801"), ("LLM_MAX_RETRIES", "11"),
    ("CORS_ORIGINS", "not an origin"), ("LOG_LEVEL", "LOUD"), ("OPENAI_BASE_URL", "api.openai.com"),
    ("APP_ENCRYPTION_KEY", "too-short"), ("LLM_PRICES", "/nonexistent/prices.json"),
    ("LLM_BYOK_ALLOWED_NETWORKS", "10.0.0.0/33"), ("LLM_BYOK_ALLOWED_NETWORKS", "10.0.0.1/8"),
    # Found by probing the admin CLI and the config: a port or host in the URL's query (asyncpg
    # takes them from there too: a traceback, or every request a 500); a bucket botocore refuses
    # every request to; no timeout at all; digits int() takes but nobody means; 0 requests a
    # minute (a key nobody can use); an origin no browser sends; values beyond what the app can do.
    ("DATABASE_URL", "postgresql:///db?host=127.0.0.1&port=99999"), ("DATABASE_URL", "postgresql:///db?port=-5"),
    ("DATABASE_URL", "postgresql://u@h/db?port=5432,x"), ("DATABASE_URL", "postgresql:///db?host=a..b"),
    ("DATABASE_URL", "postgresql:///db?port=" + "9" * 5000),
    ("S3_BUCKET", "bad bucket!"), ("S3_BUCKET", "a" * 256),
    ("LLM_TIMEOUT_S", "inf"), ("LLM_TIMEOUT_S", "1e400"), ("LLM_TIMEOUT_S", "nan"), ("LLM_TIMEOUT_S", "3601"),
    ("MAX_UPLOAD_BYTES", "1_000"), ("MAX_UPLOAD_BYTES", "\u0661\u0662"), ("MAX_UPLOAD_BYTES", "9" * 5000),
    ("MAX_UPLOAD_BYTES", str(5 * 2**20 * 10_000 + 1)),
    ("RATE_LIMIT_PREP_PER_MIN", "0"), ("RATE_LIMIT_CHECK_PER_MIN", "0"),
    ("CORS_ORIGINS", "http://a.com/path"), ("CORS_ORIGINS", "https://a.com?x=1"), ("CORS_ORIGINS", "https://u@a.com"),
    ("S3_PARTS_IN_FLIGHT", "65"), ("UPLOAD_SHUTDOWN_GRACE_S", "26"),
    ("UPLOADS_PER_WORKER", "0"), ("UPLOADS_PER_WORKER", "257"), ("UPLOAD_QUEUE_WAIT_S", "601"),
    # A query parameter one of the database's clients does not read the same way (asyncpg sends
    # connect_timeout to the server as a setting, which refuses it; pg_dump would ignore a typo),
    # and an sslmode libpq does not know.
    ("DATABASE_URL", "postgresql://u:p@h/db?connect_timeout=5"), ("DATABASE_URL", "postgresql://u:p@h/db?sslmod=require"),
    ("DATABASE_URL", "postgresql://u:p@h/db?sslmode=verify"),
    # A token or chat Telegram would refuse every message for (found out only when a tenant passes
    # its budget, and then only in the log).
    ("TELEGRAM_BOT_TOKEN", "not-a-token"), ("TELEGRAM_BOT_TOKEN", "123:short"), ("TELEGRAM_CHAT_ID", "the ops chat"),
    ("TELEGRAM_CHAT_ID", "@ab"), ("TELEGRAM_API_URL", "api.telegram.org"),
])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, name: value})
    assert caught.value.variable == name
    assert str(caught.value).startswith(f"configuration error: {name} ")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_edge_values_that_are_fine():
    settings = Settings.from_env({
        **BASE, "DATABASE_URL": "postgresql://u:p@/db?host=/run/postgresql&port=5433",
        "S3_BUCKET": "course-supporter.materials_1", "LLM_TIMEOUT_S": "3600", "MAX_UPLOAD_BYTES": "+1024",
        "S3_PART_BYTES": str(64 << 20), "CORS_ORIGINS": "https://a.example:8443/, http://localhost:3000, *"})
    assert settings.llm_timeout_s == 3600 and settings.max_upload_bytes == 1024
    assert settings.cors_origins == ("https://a.example:8443", "http://localhost:3000", "*")
    # A larger part makes room for larger files: 10,000 parts of 64 MiB.
    big = Settings.from_env({**BASE, "S3_PART_BYTES": str(64 << 20), "MAX_UPLOAD_BYTES": str(100 << 30)})
    assert big.max_upload_bytes == 100 << 30


def test_gunicorn_refuses_to_start_with_one_line_and_no_traceback():
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "S3_BUCKET")}
    env.update({"DATABASE_URL": BASE["DATABASE_URL"], "LLM_TIMEOUT_S": "soon", "S3_BUCKET": "b"})
    result = subprocess.run([sys.executable, "-m", "gunicorn", "app.main:create_app", "--bind", "127.0.0.1:0"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "configuration error" in line]
    assert len(errors) == 1 and "LLM_TIMEOUT_S" in errors[0]


@pytest.mark.parametrize("given, missing", [("LLM_FALLBACK_BASE_URL", "LLM_FALLBACK_API_KEY"),
                                            ("LLM_FALLBACK_API_KEY", "LLM_FALLBACK_BASE_URL"),
                                            ("LLM_FALLBACK_MODEL", "LLM_FALLBACK_BASE_URL")])
def test_half_a_fallback_names_the_missing_half(given, missing):
    value = {"LLM_FALLBACK_BASE_URL": "https://fallback.example/v1", "LLM_FALLBACK_API_KEY": "sk-1",
             "LLM_FALLBACK_MODEL": "gpt-4o"}[given]
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, given: value})
    assert caught.value.variable == missing


TOKEN = "1234567890:" + "A" * 35


@pytest.mark.parametrize("given, missing", [({"TELEGRAM_BOT_TOKEN": TOKEN}, "TELEGRAM_CHAT_ID"),
                                            ({"TELEGRAM_CHAT_ID": "-1001"}, "TELEGRAM_BOT_TOKEN")])
def test_half_a_telegram_bot_names_the_missing_half(given, missing):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, **given})
    assert caught.value.variable == missing


def test_telegram_settings_are_parsed():
    assert Settings.from_env(BASE).telegram_bot_token is None
    settings = Settings.from_env({**BASE, "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": "@course_ops",
                                  "TELEGRAM_API_URL": "https://bots.example/"})
    assert (settings.telegram_chat_id, settings.telegram_api_url) == ("@course_ops", "https://bots.example")
    assert TOKEN not in repr(settings)
    assert Settings.from_env({**BASE, "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": "-1001000000001"}
                             ).telegram_api_url == "https://api.telegram.org"


def test_llm_settings_are_parsed(tmp_path):
    from cryptography.fernet import Fernet

    keys = [Fernet.generate_key().decode() for _ in range(2)]
    prices = tmp_path / "prices.json"
    prices.write_text('{"my-model": {"input_per_1m": 1.5, "output_per_1m": 3}, '
                      '"capped": {"input_per_1m": 1, "output_per_1m": 2, "max_output_tokens": 8192}}')
    settings = Settings.from_env({**BASE, "OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": "http://llm:8090/v1/",
                                  "LLM_FALLBACK_BASE_URL": "https://fb.example/v1", "LLM_FALLBACK_API_KEY": "sk-fb",
                                  "LLM_FALLBACK_MODEL": "fb-model", "APP_ENCRYPTION_KEY": f"{keys[0]}, {keys[1]}",
                                  "LLM_PRICES": str(prices)})
    assert settings.openai_base_url == "http://llm:8090/v1" and settings.llm_fallback_model == "fb-model"
    assert settings.app_encryption_keys == tuple(keys)
    assert settings.llm_prices == {"my-model": (1.5, 3.0, None), "capped": (1.0, 2.0, 8192)}
    assert "sk-x" not in repr(settings) and "sk-fb" not in repr(settings) and keys[0] not in repr(settings)


@pytest.mark.parametrize("content, problem", [("not json", "not valid JSON"), ("[1]", "JSON object"),
                                              ('{"m": {"input_per_1m": 1}}', "needs numeric"),
                                              ('{"m": {"input_per_1m": -1, "output_per_1m": 1}}', "not negative"),
                                              ('{"m": {"input_per_1m": NaN, "output_per_1m": 1}}', "finite"),
                                              ('{"m": {"input_per_1m": 1, "output_per_1m": 1e999}}', "finite"),
                                              ('{"m": {"input_per_1m": 1' + "0" * 400 + ', "output_per_1m": 1}}',
                                               "needs numeric"),
                                              ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
                                              ('{"m": {"input_per_1m": 1, "output_per_1m": 1, '
                                               '"max_output_tokens": 0}}', "max_output_tokens"),
                                              ('{"m": {"input_per_1m": 1, "output_per_1m": 1, '
                                               '"max_output_tokens": "many"}}', "max_output_tokens")])
def test_a_bad_price_file_is_named(tmp_path, content, problem):
    prices = tmp_path / "prices.json"
    prices.write_text(content)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, "LLM_PRICES": str(prices)})
    assert "LLM_PRICES" in str(caught.value) and problem in str(caught.value)


def test_byok_allowed_networks_are_parsed():
    settings = Settings.from_env({**BASE, "LLM_BYOK_ALLOWED_NETWORKS": " 10.20.0.0/16, fd00::/8 "})
    assert [str(n) for n in settings.llm_byok_allowed_networks] == ["10.20.0.0/16", "fd00::/8"]
    assert Settings.from_env(BASE).llm_byok_allowed_networks == ()
