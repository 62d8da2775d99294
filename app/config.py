"""Settings read from the environment (CONTRACT.md section 1).

Every variable is parsed once, at start-up, into a frozen dataclass. A missing
or malformed variable raises ``ConfigError`` whose single-line message names
the variable; the entry points turn it into one clear line and exit 1.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from botocore.handlers import VALID_BUCKET
from cryptography.fernet import Fernet


class ConfigError(Exception):
    """A configuration variable is missing or malformed."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"configuration error: {variable} {problem}")
        self.variable = variable


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def check_host_and_port(parts: SplitResult) -> None:
    """A port from 1 to 65535 if any, and a host name a resolver takes (an IP address, or
    IDNA: labels of 1-63 characters); ValueError otherwise."""
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has a malformed port") from None
    if port == 0:
        raise ValueError("has port 0")
    _check_host_name(parts.hostname or "")


def _check_host_name(host: str) -> None:
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        if not host or re.search(r"[\s%/\\]", host):
            raise UnicodeError
        host.encode("idna")
    except UnicodeError:
        raise ValueError(f"has a malformed host name {_shown(host)}") from None


def _shown(value: str, limit: int = 40) -> str:
    """A value quoted for an error message, cut short if it is long."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _database_url(value: str) -> str:
    if not value.isprintable():
        raise ValueError("has a character that is not printable")
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
        raise ValueError("must look like postgresql://user:pass@host:port/db")
    if parts.hostname:  # none: the local socket
        check_host_and_port(parts)
    # asyncpg also takes the host and port from the query (libpq's ?host=...&port=...).
    query = parse_qs(parts.query, keep_blank_values=True)
    for port in (p for value in query.get("port", []) for p in value.split(",") if p):  # "": the default
        if not (port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
            raise ValueError(f"has a malformed port {_shown(port)} in its query")
    for host in (h for value in query.get("host", []) for h in value.split(",") if h):
        if not host.startswith("/"):  # a directory: the local socket there
            _check_host_name(host)
    if "\x00" in unquote(parts.username or "") + unquote(parts.password or ""):
        raise ValueError("has a NUL character in its user name or password")
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s):// URL")
    check_host_and_port(parts)
    return value.rstrip("/")


# How botocore checks a region name (a malformed one stops every worker's start-up).
_REGION = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")


def _region(value: str) -> str:
    if not _REGION.fullmatch(value):
        raise ValueError(f"is not a region name: {value!r}")
    return value


# A key's per-minute limits are stored as PostgreSQL integers.
MAX_RATE_LIMIT_PER_MIN = 2**31 - 1
MAX_LLM_RETRIES = 10
MAX_LLM_TIMEOUT_S = 3600.0
MAX_S3_PARTS_IN_FLIGHT = 64  # each holds a part in memory
# Below the 28.5 s a worker's runner gives requests in progress at shutdown (app/serve.py).
MAX_UPLOAD_SHUTDOWN_GRACE_S = 25
MAX_UPLOADS_PER_WORKER = 256
# An upload waiting for its turn reads nothing: nginx's timeouts (15 min) must not cut it first.
MAX_UPLOAD_QUEUE_WAIT_S = 600
WEEK_S = 7 * 24 * 3600
# S3 takes at most 10,000 parts per upload: with parts of S3_PART_BYTES, that is the
# largest file an upload can store.
S3_MAX_PARTS = 10_000


_INTEGER = re.compile(r"[+-]?[0-9]+")


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """A parser of integers (ASCII digits) from ``minimum`` to ``maximum`` (ValueError naming the bound)."""
    def parse(value: str) -> int:
        if not _INTEGER.fullmatch(value):  # int() would also take "1_000" and other scripts' digits
            raise ValueError(f"must be an integer, got {_shown(value)}")
        if len(value.lstrip("+-").lstrip("0")) > 30:  # far beyond any bound here; int() refuses 4300 digits
            raise ValueError(f"is out of range, got {_shown(value)}")
        number = int(value)
        if number < minimum:
            raise ValueError(f"must be >= {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise ValueError(f"must be <= {maximum}, got {number}")
        return number

    return parse


def positive_seconds(maximum: float) -> Callable[[str], float]:
    """A parser of a finite number of seconds, above 0 and at most ``maximum``."""
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"must be a number, got {_shown(value)}") from None
        if not number > 0:
            raise ValueError(f"must be > 0, got {_shown(value)}")
        if not number <= maximum:  # also inf
            raise ValueError(f"must be <= {maximum:g}, got {_shown(value)}")
        return number

    return parse


def _origins(value: str) -> tuple[str, ...]:
    """Origins as browsers send them: scheme://host[:port], nothing after (or ``*``)."""
    origins = tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (not parts.scheme or not parts.netloc or parts.path or parts.query or parts.fragment
                              or "@" in parts.netloc):
            raise ValueError(f"has {_shown(origin)}, which is not an origin (scheme://host[:port])")
    return origins


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in _LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
    return level


def _text(value: str) -> str:
    return value


def _bucket(value: str) -> str:
    if not VALID_BUCKET.fullmatch(value):  # botocore refuses every request to such a bucket
        raise ValueError(f"is not a bucket name (letters, digits, '.', '-', '_'; 1-255): {_shown(value)}")
    return value


def _encryption_keys(value: str) -> tuple[str, ...]:
    """One Fernet key, or several comma-separated during a rotation (the first encrypts)."""
    keys = tuple(k.strip() for k in value.split(",") if k.strip())
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ValueError(f"key {position} is not a Fernet key (32 url-safe base64-encoded bytes; "
                             "make one with `python -m app.admin encryption new-key`)") from None
    return keys


def _price_file(value: str) -> dict[str, tuple[float, float]]:
    """LLM_PRICES: {"<model>": {"input_per_1m": USD, "output_per_1m": USD}}."""
    try:
        with open(value, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror}") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("must hold a JSON object of models")
    prices = {}
    for model, entry in data.items():
        try:
            prices[model] = (float(entry["input_per_1m"]), float(entry["output_per_1m"]))
        except (TypeError, KeyError, ValueError, OverflowError):
            raise ValueError(f"entry {model!r} needs numeric input_per_1m and output_per_1m") from None
        if not all(math.isfinite(price) and price >= 0 for price in prices[model]):
            raise ValueError(f"entry {model!r} needs prices that are finite and not negative")
    return prices


def _networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(item.strip()) for item in value.split(",") if item.strip())
    except ValueError as exc:
        raise ValueError(f"must be comma-separated networks such as 10.0.0.0/8 ({exc})") from None


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


def encryption_keys_from_env(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """APP_ENCRYPTION_KEY on its own (the admin CLI's key rotation needs nothing else)."""
    return _read(os.environ if env is None else env, "APP_ENCRYPTION_KEY", _encryption_keys, required=True)


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


# 0 would make a key that can never be used (the key's scopes say what it may not do).
_RATE_LIMIT = whole_number(1, MAX_RATE_LIMIT_PER_MIN)


def _database_fields(env: Mapping[str, str]) -> dict:
    return {
        "database_url": _read(env, "DATABASE_URL", _database_url, required=True),
        "rate_limit_prep_per_min": _read(env, "RATE_LIMIT_PREP_PER_MIN", _RATE_LIMIT, 60),
        "rate_limit_check_per_min": _read(env, "RATE_LIMIT_CHECK_PER_MIN", _RATE_LIMIT, 300),
    }


def _fallback_fields(env: Mapping[str, str]) -> dict:
    base_url = _read(env, "LLM_FALLBACK_BASE_URL", _http_url, None)
    api_key = _read(env, "LLM_FALLBACK_API_KEY", _text, None)
    if base_url and not api_key:
        raise ConfigError("LLM_FALLBACK_API_KEY", "is required when LLM_FALLBACK_BASE_URL is set")
    if api_key and not base_url:
        raise ConfigError("LLM_FALLBACK_BASE_URL", "is required when LLM_FALLBACK_API_KEY is set")
    model = _read(env, "LLM_FALLBACK_MODEL", _text, None)
    if model and not base_url:
        raise ConfigError("LLM_FALLBACK_BASE_URL", "is required when LLM_FALLBACK_MODEL is set")
    return {"llm_fallback_base_url": base_url, "llm_fallback_api_key": api_key, "llm_fallback_model": model}


def _upload_fields(env: Mapping[str, str]) -> dict:
    # S3 wants parts of at least 5 MiB (all but the last one), and at most 5 GiB.
    part_bytes = _read(env, "S3_PART_BYTES", whole_number(5 << 20, 5 << 30), 5 << 20)
    most = part_bytes * S3_MAX_PARTS
    max_upload_bytes = _read(env, "MAX_UPLOAD_BYTES", whole_number(1), 1 << 30)
    if max_upload_bytes > most:
        raise ConfigError("MAX_UPLOAD_BYTES", f"must be <= {most} (S3_PART_BYTES x {S3_MAX_PARTS:,} parts, the "
                                              f"most S3 takes), got {max_upload_bytes}; raise S3_PART_BYTES")
    return {"max_upload_bytes": max_upload_bytes, "s3_part_bytes": part_bytes}


@dataclass(frozen=True)
class Settings(DatabaseSettings):
    """Everything the web app reads from its environment."""

    s3_bucket: str = ""
    s3_endpoint_url: str | None = None
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str = "https://api.openai.com/v1"
    llm_model: str = "gpt-4o-mini"
    llm_timeout_s: float = 30.0
    llm_max_retries: int = 3
    llm_fallback_base_url: str | None = None
    llm_fallback_api_key: str | None = field(default=None, repr=False)
    llm_fallback_model: str | None = None
    llm_prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    app_encryption_keys: tuple[str, ...] = field(default=(), repr=False)
    # Non-public networks a tenant's own provider (BYOK) may nevertheless be in.
    llm_byok_allowed_networks: tuple = ()
    max_upload_bytes: int = 1 << 30
    s3_part_bytes: int = 5 << 20
    s3_parts_in_flight: int = 6
    uploads_per_worker: int = 8
    upload_queue_wait_s: int = 300
    download_url_ttl_s: int = 900
    upload_orphan_age_s: int = 3600
    upload_sweep_interval_s: int = 600
    upload_shutdown_grace_s: int = 20
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        _read(env, "AWS_DEFAULT_REGION", _region)  # boto3 reads it itself; checked here for the one clear line
        return cls(
            **_database_fields(env),
            s3_bucket=_read(env, "S3_BUCKET", _bucket, required=True),
            s3_endpoint_url=_read(env, "S3_ENDPOINT_URL", _http_url, None),
            openai_api_key=_read(env, "OPENAI_API_KEY", _text, None),
            openai_base_url=_read(env, "OPENAI_BASE_URL", _http_url, "https://api.openai.com/v1"),
            llm_model=_read(env, "LLM_MODEL", _text, "gpt-4o-mini"),
            llm_timeout_s=_read(env, "LLM_TIMEOUT_S", positive_seconds(MAX_LLM_TIMEOUT_S), 30.0),
            llm_max_retries=_read(env, "LLM_MAX_RETRIES", whole_number(0, MAX_LLM_RETRIES), 3),
            **_fallback_fields(env),
            llm_prices=_read(env, "LLM_PRICES", _price_file, {}),
            app_encryption_keys=_read(env, "APP_ENCRYPTION_KEY", _encryption_keys, ()),
            llm_byok_allowed_networks=_read(env, "LLM_BYOK_ALLOWED_NETWORKS", _networks, ()),
            **_upload_fields(env),
            s3_parts_in_flight=_read(env, "S3_PARTS_IN_FLIGHT", whole_number(1, MAX_S3_PARTS_IN_FLIGHT), 6),
            uploads_per_worker=_read(env, "UPLOADS_PER_WORKER", whole_number(1, MAX_UPLOADS_PER_WORKER), 8),
            upload_queue_wait_s=_read(env, "UPLOAD_QUEUE_WAIT_S", whole_number(0, MAX_UPLOAD_QUEUE_WAIT_S), 300),
            # A pre-signed URL (signature v4) lives at most a week.
            download_url_ttl_s=_read(env, "DOWNLOAD_URL_TTL_S", whole_number(1, WEEK_S), 900),
            upload_orphan_age_s=_read(env, "UPLOAD_ORPHAN_AGE_S", whole_number(0, 52 * WEEK_S), 3600),
            upload_sweep_interval_s=_read(env, "UPLOAD_SWEEP_INTERVAL_S", whole_number(1, WEEK_S), 600),
            upload_shutdown_grace_s=_read(env, "UPLOAD_SHUTDOWN_GRACE_S",
                                          whole_number(0, MAX_UPLOAD_SHUTDOWN_GRACE_S), 20),
            cors_origins=_read(env, "CORS_ORIGINS", _origins, ()),
            log_level=_read(env, "LOG_LEVEL", _log_level, "INFO"),
        )
