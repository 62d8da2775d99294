"""Configuration: defaults, and one clear line naming a bad variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.config import ConfigError, Settings
from tests.conftest import REPO_ROOT

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
    ("CORS_ORIGINS", "not an origin"), ("LOG_LEVEL", "LOUD"),
])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, name: value})
    assert caught.value.variable == name
    assert str(caught.value).startswith(f"configuration error: {name} ")
    assert "\n" not in str(caught.value)


def test_gunicorn_refuses_to_start_with_one_line_and_no_traceback():
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "S3_BUCKET")}
    env.update({"DATABASE_URL": BASE["DATABASE_URL"], "LLM_TIMEOUT_S": "soon", "S3_BUCKET": "b"})
    result = subprocess.run([sys.executable, "-m", "gunicorn", "app.main:create_app", "--bind", "127.0.0.1:0"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "configuration error" in line]
    assert len(errors) == 1 and "LLM_TIMEOUT_S" in errors[0]
