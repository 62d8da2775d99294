"""Settings read from the environment (CONTRACT.md section 1).

Every variable is parsed once, at start-up, into a frozen dataclass. A missing
or malformed variable raises ``ConfigError`` whose single-line message names
the variable; the entry points turn it into one clear line and exit 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Mapping
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A configuration variable is missing or malformed."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"configuration error: {variable} {problem}")
        self.variable = variable


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _database_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
        raise ValueError("must look like postgresql://user:pass@host:port/db")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("has a malformed port") from None
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s):// URL")
    return value.rstrip("/")


def _int(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"must be an integer, got {value!r}") from None
        if number < minimum:
            raise ValueError(f"must be >= {minimum}, got {number}")
        return number

    return parse


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"must be a number, got {value!r}") from None
    if not number > 0:
        raise ValueError(f"must be > 0, got {value}")
    return number


def _origins(value: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not urlsplit(origin).netloc:
            raise ValueError(f"has a malformed origin {origin!r}")
    return origins


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in _LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
    return level


def _text(value: str) -> str:
    return value


def _read(env: Mapping[str, str], name: str, parse: Callable, default=None, required=False):
    raw = env.get(name, "")
    if raw.strip() == "":
        if required:
            raise ConfigError(name, "is required but not set")
        return default
    try:
        return parse(raw.strip())
    except ValueError as exc:
        raise ConfigError(name, str(exc)) from None


@dataclass(frozen=True)
class DatabaseSettings:
    """What the admin CLI needs: the database and the defaults for new keys."""

    database_url: str
    rate_limit_prep_per_min: int = 60
    rate_limit_check_per_min: int = 300

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "DatabaseSettings":
        env = os.environ if env is None else env
        return cls(**_database_fields(env))


def _database_fields(env: Mapping[str, str]) -> dict:
    return {
        "database_url": _read(env, "DATABASE_URL", _database_url, required=True),
        "rate_limit_prep_per_min": _read(env, "RATE_LIMIT_PREP_PER_MIN", _int(0), 60),
        "rate_limit_check_per_min": _read(env, "RATE_LIMIT_CHECK_PER_MIN", _int(0), 300),
    }


@dataclass(frozen=True)
class Settings(DatabaseSettings):
    """Everything the web app reads from its environment."""

    s3_bucket: str = ""
    s3_endpoint_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout_s: float = 30.0
    llm_max_retries: int = 3
    max_upload_bytes: int = 1 << 30
    s3_part_bytes: int = 5 << 20
    s3_parts_in_flight: int = 6
    download_url_ttl_s: int = 900
    upload_orphan_age_s: int = 3600
    upload_sweep_interval_s: int = 600
    upload_shutdown_grace_s: int = 20
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        return cls(
            **_database_fields(env),
            s3_bucket=_read(env, "S3_BUCKET", _text, required=True),
            s3_endpoint_url=_read(env, "S3_ENDPOINT_URL", _http_url, None),
            llm_model=_read(env, "LLM_MODEL", _text, "gpt-4o-mini"),
            llm_timeout_s=_read(env, "LLM_TIMEOUT_S", _positive_float, 30.0),
            llm_max_retries=_read(env, "LLM_MAX_RETRIES", _int(0), 3),
            max_upload_bytes=_read(env, "MAX_UPLOAD_BYTES", _int(1), 1 << 30),
            # S3 wants parts of at least 5 MiB (all but the last one).
            s3_part_bytes=_read(env, "S3_PART_BYTES", _int(5 << 20), 5 << 20),
            s3_parts_in_flight=_read(env, "S3_PARTS_IN_FLIGHT", _int(1), 6),
            download_url_ttl_s=_read(env, "DOWNLOAD_URL_TTL_S", _int(1), 900),
            upload_orphan_age_s=_read(env, "UPLOAD_ORPHAN_AGE_S", _int(0), 3600),
            upload_sweep_interval_s=_read(env, "UPLOAD_SWEEP_INTERVAL_S", _int(1), 600),
            # Less than gunicorn's graceful_timeout (30 s), which ends in SIGKILL.
            upload_shutdown_grace_s=_read(env, "UPLOAD_SHUTDOWN_GRACE_S", _int(0), 20),
            cors_origins=_read(env, "CORS_ORIGINS", _origins, ()),
            log_level=_read(env, "LOG_LEVEL", _log_level, "INFO"),
        )
