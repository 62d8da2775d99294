"""Settings read from the environment: each declared once, here.

Every setting is a field of a frozen dataclass declared with ``setting(...)``:
its environment variable, type (the annotation), default, the values it accepts
(its parser) and what it means. ``docs/configuration.md`` is generated from these
declarations (``make docs``). A missing or malformed variable raises
``ConfigError`` whose single-line message names the variable; the entry points
turn it into one clear line and exit 1. ``python -m app.config FILE`` checks an
environment file the same way (the app role validates the one it writes).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from botocore.handlers import VALID_BUCKET
from cryptography.fernet import Fernet

from . import dburl


class ConfigError(Exception):
    """A configuration variable is missing or malformed."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"configuration error: {variable} {problem}")
        self.variable = variable


def accepts(description: str):
    """Say, for the docs, which values a parser takes."""

    def mark(parse: Callable[[str], Any]) -> Callable[[str], Any]:
        parse.accepts = description
        return parse

    return mark


# --- parsers: a value's text in, the value out, ValueError naming the problem ----

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


@accepts("`postgresql://user:pass@host:port/db` (no host: the local socket), with libpq's query parameters "
         f"{', '.join(f'`{name}`' for name in dburl.QUERY_PARAMETERS)}: e.g. "
         "`?sslmode=verify-full&sslrootcert=/etc/course-supporter/postgresql-ca.pem` for a database on another host")
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
    unknown = sorted(set(query) - set(dburl.QUERY_PARAMETERS))
    if unknown:
        raise ValueError(f"has query parameters {', '.join(map(_shown, unknown))} that not every client of the "
                         f"database reads; accepted: {', '.join(dburl.QUERY_PARAMETERS)}")
    for mode in query.get("sslmode", []):
        if mode not in dburl.SSL_MODES:
            raise ValueError(f"has sslmode {_shown(mode)}; accepted: {', '.join(dburl.SSL_MODES)}")
    for port in (p for value in query.get("port", []) for p in value.split(",") if p):  # "": the default
        if not (port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
            raise ValueError(f"has a malformed port {_shown(port)} in its query")
    for host in (h for value in query.get("host", []) for h in value.split(",") if h):
        if not host.startswith("/"):  # a directory: the local socket there
            _check_host_name(host)
    if "\x00" in unquote(parts.username or "") + unquote(parts.password or ""):
        raise ValueError("has a NUL character in its user name or password")
    return value


@accepts("an `http://` or `https://` URL (a trailing `/` is dropped)")
def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s):// URL")
    check_host_and_port(parts)
    return value.rstrip("/")


# How botocore checks a region name (a malformed one stops every worker's start-up).
_REGION = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")


@accepts("a region name: letters, digits and `-`, at most 63")
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
# S3 wants parts of at least 5 MiB (all but the last one), and at most 5 GiB.
MIN_S3_PART_BYTES = 5 << 20
MAX_S3_PART_BYTES = 5 << 30


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

    return accepts(f"an integer from {minimum:,} to {maximum:,}" if maximum is not None
                   else f"an integer, {minimum:,} or more")(parse)


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

    return accepts(f"seconds (a decimal number), above 0 and at most {maximum:g}")(parse)


@accepts("comma-separated origins `scheme://host[:port]` (nothing after), or `*`")
def _origins(value: str) -> tuple[str, ...]:
    """Origins as browsers send them: scheme://host[:port], nothing after (or ``*``)."""
    origins = tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (not parts.scheme or not parts.netloc or parts.path or parts.query or parts.fragment
                              or "@" in parts.netloc):
            raise ValueError(f"has {_shown(origin)}, which is not an origin (scheme://host[:port])")
    return origins


@accepts(f"one of {', '.join(f'`{level}`' for level in _LOG_LEVELS)} (any case)")
def _log_level(value: str) -> str:
    level = value.upper()
    if level not in _LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
    return level


_SWITCH = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


@accepts("`true` or `false` (also `yes`/`no`, `on`/`off`, `1`/`0`; any case)")
def _switch(value: str) -> bool:
    try:
        return _SWITCH[value.strip().lower()]
    except KeyError:
        raise ValueError(f"must be true or false, got {_shown(value)}") from None


@accepts("text")
def _text(value: str) -> str:
    return value


@accepts("a Sentry DSN: `https://<public key>@<host>/<project id>`")
def _sentry_dsn(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.username or not parts.path.strip("/"):
        raise ValueError("must look like https://<public key>@<host>/<project id>")
    check_host_and_port(parts)
    return value


_TELEGRAM_TOKEN = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{20,100}")
_TELEGRAM_CHAT = re.compile(r"-?[0-9]{1,20}|@[A-Za-z][A-Za-z0-9_]{4,31}")


@accepts("a bot token as @BotFather gives it: `<bot id>:<secret>`")
def _telegram_token(value: str) -> str:
    if not _TELEGRAM_TOKEN.fullmatch(value):
        raise ValueError("is not a Telegram bot token (<digits>:<secret>)")
    return value


@accepts("a chat id (digits, `-` first for groups and channels) or a channel's `@username`")
def _telegram_chat(value: str) -> str:
    if not _TELEGRAM_CHAT.fullmatch(value):
        raise ValueError(f"is not a Telegram chat id or @channel: {_shown(value)}")
    return value


@accepts("a bucket name as botocore takes it: letters, digits, `.`, `-`, `_`; 1 to 255")
def _bucket(value: str) -> str:
    if not VALID_BUCKET.fullmatch(value):  # botocore refuses every request to such a bucket
        raise ValueError(f"is not a bucket name (letters, digits, '.', '-', '_'; 1-255): {_shown(value)}")
    return value


@accepts("one Fernet key, or several comma-separated during a rotation (the first encrypts, all decrypt)")
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


@accepts('the path of a JSON file `{"<model>": {"input_per_1m": USD, "output_per_1m": USD}}`, '
         "prices finite and not negative; an entry may add `\"max_output_tokens\": N`, the most the model writes "
         "in one reply (what a budget reserves for a call without `max_tokens`)")
def _price_file(value: str) -> dict[str, tuple[float, float, int | None]]:
    """LLM_PRICES: {"<model>": {"input_per_1m": USD, "output_per_1m": USD, "max_output_tokens"?: N}}."""
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
        cap = entry.get("max_output_tokens")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= 10_000_000):
            raise ValueError(f"entry {model!r}: max_output_tokens must be a whole number from 1 to 10000000")
        prices[model] = (*prices[model], cap)
    return prices


@accepts("comma-separated networks in CIDR notation, e.g. `10.20.0.0/16, fd00::/8`")
def _networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(item.strip()) for item in value.split(",") if item.strip())
    except ValueError as exc:
        raise ValueError(f"must be comma-separated networks such as 10.0.0.0/8 ({exc})") from None


# --- the declarations ---------------------------------------------------------

# The docs' sections, in this order.
GROUPS = ("Database and keys", "Storage (S3)", "Uploads", "LLM providers", "HTTP and logging", "Error tracking",
          "Operator alerts")


@dataclass(frozen=True)
class Setting:
    """One environment variable: how it is read and what it means."""

    name: str
    parse: Callable[[str], Any]
    doc: str
    group: str
    default: Any = None  # when the variable is unset or blank
    required: bool = False
    secret: bool = False  # never shown (repr, docs examples)
    shown_default: str | None = None  # the docs' words for the default, where the value alone would not say it

    def read(self, env: Mapping[str, str]) -> Any:
        raw = env.get(self.name, "")
        if raw.strip() == "":
            if self.required:
                raise ConfigError(self.name, "is required but not set")
            return self.default
        try:
            return self.parse(raw.strip())
        except ValueError as exc:
            raise ConfigError(self.name, str(exc)) from None


def setting(name: str, parse: Callable[[str], Any], doc: str, *, group: str, default: Any = None,
            required: bool = False, secret: bool = False, shown_default: str | None = None) -> Any:
    """A settings field read from the environment variable ``name``."""
    assert group in GROUPS, group
    spec = Setting(name, parse, doc, group, default, required, secret, shown_default)
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), repr=not secret, metadata={"setting": spec})
    return field(default=default, repr=not secret, metadata={"setting": spec})


@dataclass(frozen=True)
class Rule:
    """A rule between settings, checked after each was read."""

    doc: str
    check: Callable[[Mapping[str, Any]], None]


# Read by boto3 itself (its credential chain and region); the app only checks the region.
READ_BY_BOTO3 = (
    Setting("AWS_ACCESS_KEY_ID", _text, "S3 access key id, read by boto3 (its usual chain: this variable, "
            "`~/.aws/credentials`, instance metadata).", "Storage (S3)", shown_default="boto3's chain"),
    Setting("AWS_SECRET_ACCESS_KEY", _text, "S3 secret access key, read by boto3 like `AWS_ACCESS_KEY_ID`.",
            "Storage (S3)", secret=True, shown_default="boto3's chain"),
    Setting("AWS_DEFAULT_REGION", _region, "The S3 region, read by boto3 (e.g. `eu-central-003` for Backblaze B2); "
            "checked at start-up, since boto3 would refuse a malformed one in every worker.", "Storage (S3)",
            default="us-east-1", shown_default="`us-east-1` (boto3's for S3)"),
)


class _FromEnv:
    """``from_env`` for a settings dataclass whose fields were declared with ``setting``."""

    RULES: tuple[Rule, ...] = ()
    CHECKED: tuple[Setting, ...] = ()

    @classmethod
    def declared(cls) -> Iterator[tuple[str | None, Setting]]:
        """(attribute or None, setting) for every variable the class reads or checks."""
        for f in dataclasses.fields(cls):
            if "setting" in f.metadata:
                yield f.name, f.metadata["setting"]
        for spec in cls.CHECKED:
            yield None, spec

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        values = {}
        for attribute, spec in cls.declared():
            value = spec.read(env)
            if attribute is not None:
                values[attribute] = value
        for rule in cls.RULES:
            rule.check(values)
        return cls(**values)


def _fallback_complete(values: Mapping[str, Any]) -> None:
    base_url, api_key, model = (values["llm_fallback_base_url"], values["llm_fallback_api_key"],
                                values["llm_fallback_model"])
    if base_url and not api_key:
        raise ConfigError("LLM_FALLBACK_API_KEY", "is required when LLM_FALLBACK_BASE_URL is set")
    if api_key and not base_url:
        raise ConfigError("LLM_FALLBACK_BASE_URL", "is required when LLM_FALLBACK_API_KEY is set")
    if model and not base_url:
        raise ConfigError("LLM_FALLBACK_BASE_URL", "is required when LLM_FALLBACK_MODEL is set")


def _telegram_complete(values: Mapping[str, Any]) -> None:
    if values["telegram_bot_token"] and not values["telegram_chat_id"]:
        raise ConfigError("TELEGRAM_CHAT_ID", "is required when TELEGRAM_BOT_TOKEN is set")
    if values["telegram_chat_id"] and not values["telegram_bot_token"]:
        raise ConfigError("TELEGRAM_BOT_TOKEN", "is required when TELEGRAM_CHAT_ID is set")


def _upload_fits_in_parts(values: Mapping[str, Any]) -> None:
    most = values["s3_part_bytes"] * S3_MAX_PARTS
    if values["max_upload_bytes"] > most:
        raise ConfigError("MAX_UPLOAD_BYTES", f"must be <= {most} (S3_PART_BYTES x {S3_MAX_PARTS:,} parts, the most "
                                              f"S3 takes), got {values['max_upload_bytes']}; raise S3_PART_BYTES")


# 0 would make a key that can never be used (the key's scopes say what it may not do).
_RATE_LIMIT = whole_number(1, MAX_RATE_LIMIT_PER_MIN)
_DATABASE = "Database and keys"
_S3 = "Storage (S3)"
_UPLOADS = "Uploads"
_LLM = "LLM providers"
_HTTP = "HTTP and logging"
_ERRORS = "Error tracking"
_ALERTS = "Operator alerts"


@dataclass(frozen=True, kw_only=True)
class DatabaseSettings(_FromEnv):
    """What the admin CLI needs: the database and the defaults for new keys."""

    database_url: str = setting(
        "DATABASE_URL", _database_url, "The PostgreSQL database of the app.", group=_DATABASE, required=True,
        secret=True)
    rate_limit_prep_per_min: int = setting(
        "RATE_LIMIT_PREP_PER_MIN", _RATE_LIMIT, "The `prep` requests a minute of a key issued without "
        "`--rate-limit-prep` (keys keep the limit they were issued with).", group=_DATABASE, default=60)
    rate_limit_check_per_min: int = setting(
        "RATE_LIMIT_CHECK_PER_MIN", _RATE_LIMIT, "The `check` requests a minute of a key issued without "
        "`--rate-limit-check`.", group=_DATABASE, default=300)


@dataclass(frozen=True, kw_only=True)
class Settings(DatabaseSettings):
    """Everything the web app reads from its environment."""

    CHECKED = READ_BY_BOTO3
    RULES = (
        Rule("`LLM_FALLBACK_BASE_URL` and `LLM_FALLBACK_API_KEY` are set together or not at all, and "
             "`LLM_FALLBACK_MODEL` only with them.", _fallback_complete),
        Rule(f"`MAX_UPLOAD_BYTES` is at most `S3_PART_BYTES` x {S3_MAX_PARTS:,} (the most parts S3 takes in one "
             "upload): raise `S3_PART_BYTES` for larger files.", _upload_fits_in_parts),
        Rule("`TELEGRAM_BOT_TOKEN` and `TELEGRAM_CHAT_ID` are set together or not at all.", _telegram_complete),
    )

    s3_bucket: str = setting(
        "S3_BUCKET", _bucket, "The bucket that holds uploaded materials (and the database backups, under "
        "`backups/`).", group=_S3, required=True)
    s3_endpoint_url: str | None = setting(
        "S3_ENDPOINT_URL", _http_url, "An S3-compatible endpoint (Backblaze B2, MinIO, a test server).", group=_S3,
        shown_default="unset: AWS S3")
    openai_api_key: str | None = setting(
        "OPENAI_API_KEY", _text, "The API key of the server's LLM provider.", group=_LLM, secret=True,
        shown_default="unset: calls go to the fallback if one is set, else answer 503 `llm_not_configured` "
        "unless the tenant has its own provider")
    openai_base_url: str = setting(
        "OPENAI_BASE_URL", _http_url, "The server's OpenAI-compatible provider.", group=_LLM,
        default="https://api.openai.com/v1")
    llm_model: str = setting(
        "LLM_MODEL", _text, "The chat model of calls that name none.", group=_LLM, default="gpt-4o-mini")
    llm_timeout_s: float = setting(
        "LLM_TIMEOUT_S", positive_seconds(MAX_LLM_TIMEOUT_S), "The time each attempt of an LLM call may take.",
        group=_LLM, default=30.0)
    llm_max_retries: int = setting(
        "LLM_MAX_RETRIES", whole_number(0, MAX_LLM_RETRIES), "Retries after the first attempt, per provider "
        "(connection errors, timeouts, 408/409/429, 5xx; exponential backoff with jitter, `Retry-After` honoured).",
        group=_LLM, default=3)
    llm_fallback_base_url: str | None = setting(
        "LLM_FALLBACK_BASE_URL", _http_url, "A second OpenAI-compatible provider, tried when the first still fails "
        "with a retryable error after its retries.", group=_LLM, shown_default="unset: no fallback")
    llm_fallback_api_key: str | None = setting(
        "LLM_FALLBACK_API_KEY", _text, "The fallback provider's API key.", group=_LLM, secret=True)
    llm_fallback_model: str | None = setting(
        "LLM_FALLBACK_MODEL", _text, "The model asked of the fallback provider.", group=_LLM,
        shown_default="the model of the call")
    llm_prices: dict[str, tuple[float, float, int | None]] = setting(
        "LLM_PRICES", _price_file, "Prices that extend or override the built-in table of OpenAI models (USD per "
        "million tokens); an unpriced model costs 0 and is logged once. On the appliance the file must be on the "
        "server, readable by the app's user.", group=_LLM, default={},
        shown_default="the built-in table")
    llm_reservation_ttl_s: float = setting(
        "LLM_RESERVATION_TTL_S", positive_seconds(3600), "How long a budget reservation (a running call's worst "
        "case) outlives the worker that took it: a worker extends its calls' reservations every third of this, "
        "so a worker that died mid-call gives its budget back this much later.", group=_LLM, default=60.0)
    app_encryption_keys: tuple[str, ...] = setting(
        "APP_ENCRYPTION_KEY", _encryption_keys, "Encrypts tenants' own provider keys (BYOK) at rest. Make one with "
        "`course-supporter-admin encryption new-key`; rotation: docs/operations.md.", group=_LLM, default=(),
        secret=True, shown_default="unset: `PUT /api/v1/settings/llm` answers 503 `encryption_unavailable`")
    llm_byok_allowed_networks: tuple = setting(
        "LLM_BYOK_ALLOWED_NETWORKS", _networks, "Non-public networks a tenant's own provider may nevertheless be in "
        "(an in-house model server). Otherwise only public addresses are allowed, so that no tenant can make the "
        "server call into its own network.", group=_LLM, default=(), shown_default="none")
    max_upload_bytes: int = setting(
        "MAX_UPLOAD_BYTES", whole_number(1), "The largest material accepted; larger is a 413 and nothing is kept. "
        "nginx's body limit is derived from it.", group=_UPLOADS, default=1 << 30,
        shown_default="`1073741824` (1 GiB)")
    s3_part_bytes: int = setting(
        "S3_PART_BYTES", whole_number(MIN_S3_PART_BYTES, MAX_S3_PART_BYTES), "The part size of S3 multipart "
        "uploads: a file smaller than one part is one `PutObject`.", group=_UPLOADS, default=5 << 20,
        shown_default="`5242880` (5 MiB)")
    s3_parts_in_flight: int = setting(
        "S3_PARTS_IN_FLIGHT", whole_number(1, MAX_S3_PARTS_IN_FLIGHT), "Parts of one upload sent to S3 at once "
        "(each held in memory meanwhile).", group=_UPLOADS, default=6)
    uploads_per_worker: int = setting(
        "UPLOADS_PER_WORKER", whole_number(1, MAX_UPLOADS_PER_WORKER), "Uploads a worker streams at once; more "
        "wait their turn with their bodies unread.", group=_UPLOADS, default=8)
    upload_queue_wait_s: int = setting(
        "UPLOAD_QUEUE_WAIT_S", whole_number(0, MAX_UPLOAD_QUEUE_WAIT_S), "Seconds an upload may wait for its turn "
        "before it is a 503 `uploads_busy` with `Retry-After` (within nginx's 900 s timeouts).", group=_UPLOADS,
        default=300)
    resumable_upload_ttl_s: int = setting(
        "RESUMABLE_UPLOAD_TTL_S", whole_number(60, 30 * 24 * 3600), "How long a resumable (tus) upload may take from "
        "its creation: after that it is aborted and its parts removed (`Upload-Expires`).", group=_UPLOADS,
        default=86400, shown_default="`86400` (24 h)")
    resumable_upload_hold_s: int = setting(
        "RESUMABLE_UPLOAD_HOLD_S", whole_number(3, 600), "How long a request sending a resumable upload's bytes holds "
        "it without a sign of life (it renews the hold every third of this): after a worker died mid-request, the "
        "client goes on this much later at most (until then: 423 `upload_busy`).", group=_UPLOADS, default=30)
    download_url_ttl_s: int = setting(
        "DOWNLOAD_URL_TTL_S", whole_number(1, WEEK_S), "Lifetime of a material's pre-signed `download_url` "
        "(signature v4 allows a week at most).", group=_UPLOADS, default=900)
    upload_orphan_age_s: int = setting(
        "UPLOAD_ORPHAN_AGE_S", whole_number(0, 52 * WEEK_S), "Age after which an unfinished S3 multipart upload is "
        "an orphan (of a worker killed hard) and aborted by the sweep.", group=_UPLOADS, default=3600)
    upload_sweep_interval_s: int = setting(
        "UPLOAD_SWEEP_INTERVAL_S", whole_number(1, WEEK_S), "Seconds between a worker's sweeps for orphaned "
        "multipart uploads (it also sweeps at start-up).", group=_UPLOADS, default=600)
    upload_shutdown_grace_s: int = setting(
        "UPLOAD_SHUTDOWN_GRACE_S", whole_number(0, MAX_UPLOAD_SHUTDOWN_GRACE_S), "Seconds uploads in progress get "
        "to finish when a worker shuts down (deploy, reload, stop); the rest are stopped and undone.",
        group=_UPLOADS, default=20)
    cors_origins: tuple[str, ...] = setting(
        "CORS_ORIGINS", _origins, "Origins allowed to call the API from a browser.", group=_HTTP, default=(),
        shown_default="unset: no CORS headers")
    log_level: str = setting(
        "LOG_LEVEL", _log_level, "The least severe level the app logs.", group=_HTTP, default="INFO")
    metrics_enabled: bool = setting(
        "METRICS_ENABLED", _switch, "Whether the app keeps its metrics and serves them at `/metrics` (off: `/metrics` "
        "is a 404 and Netdata's charts of them stay empty).", group=_HTTP, default=True,
        shown_default="`true`")
    sentry_dsn: str | None = setting(
        "SENTRY_DSN", _sentry_dsn, "Where unexpected errors (the 500s, anything logged at ERROR) and crashed workers "
        "are reported, with the request id, tenant and release, and without keys, passwords or prompts.",
        group=_ERRORS, secret=True, shown_default="unset: nothing is reported, sentry-sdk is not even imported")
    sentry_environment: str | None = setting(
        "SENTRY_ENVIRONMENT", _text, "The environment the reports are filed under.", group=_ERRORS,
        shown_default="Sentry's own (`production`)")
    telegram_bot_token: str | None = setting(
        "TELEGRAM_BOT_TOKEN", _telegram_token, "The bot that tells the operator when a tenant passes 80 % and 100 % "
        "of its monthly LLM budget (on the appliance: Netdata's bot).", group=_ALERTS, secret=True,
        shown_default="unset: no budget messages (the alerts wait in the database a day)")
    telegram_chat_id: str | None = setting(
        "TELEGRAM_CHAT_ID", _telegram_chat, "The chat the bot writes to.", group=_ALERTS)
    telegram_api_url: str = setting(
        "TELEGRAM_API_URL", _http_url, "The Telegram Bot API (a self-hosted Bot API server, say).", group=_ALERTS,
        default="https://api.telegram.org")


def encryption_keys_from_env(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """APP_ENCRYPTION_KEY on its own, required (the admin CLI's key rotation needs nothing else)."""
    spec = dataclasses.replace(_declared(Settings)["APP_ENCRYPTION_KEY"], required=True)
    return spec.read(os.environ if env is None else env)


def _declared(cls) -> dict[str, Setting]:
    return {spec.name: spec for _, spec in cls.declared()}


def all_settings() -> list[Setting]:
    """Every environment variable the app reads or checks, in declaration order."""
    return list(_declared(Settings).values())


def parse_env_file(text: str) -> dict[str, str]:
    """The variables of an environment file as the app role writes it (``NAME="value"``, with
    ``\\`` and ``"`` escaped; ``#`` comments) and systemd's EnvironmentFile reads it."""
    env = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', line)
        if not match:
            raise ValueError(f"line {number} is not NAME=\"value\"")
        env[match.group(1)] = re.sub(r"\\(.)", r"\1", match.group(2))
    return env


def main(argv: list[str] | None = None) -> int:
    """``python -m app.config ENV_FILE``: exit 0 if the app would start with it, else 1 and one line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m app.config ENV_FILE", file=sys.stderr)
        return 2
    try:
        with open(args[0], encoding="utf-8") as f:
            Settings.from_env(parse_env_file(f.read()))
    except (OSError, ValueError, ConfigError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
