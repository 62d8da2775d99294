"""Admin CLI: ``python -m app.admin`` (``course-supporter-admin`` on the VPS).

Exit codes: 0 success, 1 error (message on stderr), 2 usage error.
Every command takes ``--json`` for machine-readable output on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import re
import sys
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Sequence

import asyncpg
from botocore.exceptions import BotoCoreError, ClientError
from cryptography.fernet import Fernet

from . import backup, tenants
from .config import (MAX_RATE_LIMIT_PER_MIN, ConfigError, DatabaseSettings, Settings, encryption_keys_from_env,
                     whole_number)
from .keycache import change_in_force
from .llm import accounting, budgets, byok
from .llm.byok import EncryptionUnavailable, KeyBox
from .jsonutil import dumps
from .migrate import apply_migrations


class CommandError(Exception):
    """A failure to report on stderr with exit code 1."""


# --- argument types (a bad value is a usage error: exit 2) ---------------------

def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a valid id (UUID): {value!r}") from None


def _scopes(value: str) -> list[str]:
    scopes = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in scopes if s not in tenants.SCOPES]
    if not scopes or bad:
        raise argparse.ArgumentTypeError(f"scopes must be a comma-separated subset of {','.join(tenants.SCOPES)}")
    return sorted(set(scopes), key=tenants.SCOPES.index)


def _whole_number(minimum: int, maximum: int) -> Callable[[str], int]:
    """The configuration's integer parser, its complaint as argparse's usage error."""
    parse = whole_number(minimum, maximum)

    def argument(value: str) -> int:
        try:
            return parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return argument


MAX_KEEP_DAYS = 36_500


MAX_OVERLAP = datetime.timedelta(days=90)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: str) -> datetime.timedelta:
    """``30m``, ``24h``, ``7d``, ``0s``: at most 90 days."""
    match = re.fullmatch(r"(\d{1,9})([smhd])", value.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration such as 30m, 24h or 7d: {value!r}")
    duration = datetime.timedelta(seconds=int(match[1]) * _DURATION_UNITS[match[2]])
    if duration > MAX_OVERLAP:
        raise argparse.ArgumentTypeError(f"at most {MAX_OVERLAP.days}d: {value!r}")
    return duration


MAX_BUDGET_USD = Decimal("999999999999.99")  # numeric(14, 2)


def _usd(value: str) -> Decimal:
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount of USD: {value!r}") from None
    if not amount.is_finite() or not 0 <= amount <= MAX_BUDGET_USD or amount != amount.quantize(Decimal("0.01")):
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_BUDGET_USD} USD in whole cents: {value!r}")
    return amount.quantize(Decimal("0.01"))


def _future_timestamp(value: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 timestamp: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    try:
        moment = moment.astimezone(datetime.timezone.utc)
    except OverflowError:  # 9999-12-31T23:00-01:00 is in the year 10000
        raise argparse.ArgumentTypeError(f"must be before the year 10000 in UTC: {value!r}") from None
    if moment <= datetime.datetime.now(datetime.timezone.utc):
        raise argparse.ArgumentTypeError(f"must be in the future: {value!r}")
    return moment


MAX_NAME_CHARS = 200


def _printable_text(value: str) -> str:
    """Text an operator's terminal shows as it is: UTF-8, no control characters, at most
    200 characters (a tenant's name is stored so; a key's label the same)."""
    value = value.strip()
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("must be UTF-8 text") from None
    if not value.isprintable() or len(value) > MAX_NAME_CHARS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_NAME_CHARS} printable characters "
                                         "(no tabs, newlines or other control characters)")
    return value


def _non_blank(value: str) -> str:
    value = _printable_text(value)
    if not value:
        raise argparse.ArgumentTypeError("must not be blank")
    return value


# --- commands ------------------------------------------------------------------

async def _with_connection(settings: DatabaseSettings, work: Callable) -> Any:
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError, ValueError) as exc:
        # ValueError: asyncpg refusing one of the URL's options (sslmode=...) or its host name.
        raise CommandError(f"cannot connect to the database: {exc}") from None
    try:
        return await work(conn)
    except (tenants.UnknownTenant, tenants.UnknownKey) as exc:
        raise CommandError(str(exc)) from None
    except asyncpg.UndefinedTableError as exc:
        raise CommandError(f"the database has no schema yet ({exc}): run `migrate` first") from None
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise CommandError(f"the database refused the command: {exc}") from None
    finally:
        await conn.close()


def cmd_migrate(args, settings: DatabaseSettings) -> Any:
    try:
        return {"applied": apply_migrations(settings.database_url)}
    except Exception as exc:  # psycopg/yoyo errors: report them, no traceback
        raise CommandError(f"migration failed: {exc}") from None


def cmd_tenant_create(args, settings):
    return asyncio.run(_with_connection(settings, lambda c: tenants.create_tenant(c, args.name)))


def cmd_tenant_list(args, settings):
    return asyncio.run(_with_connection(settings, tenants.list_tenants))


def cmd_tenant_activate(args, settings):
    return asyncio.run(_with_connection(settings, lambda c: tenants.set_tenant_active(c, args.id, True)))


def cmd_tenant_deactivate(args, settings):
    return asyncio.run(_with_connection(settings, lambda c: tenants.set_tenant_active(c, args.id, False)))


def cmd_key_issue(args, settings: DatabaseSettings):
    limit_prep = settings.rate_limit_prep_per_min if args.rate_limit_prep is None else args.rate_limit_prep
    limit_check = settings.rate_limit_check_per_min if args.rate_limit_check is None else args.rate_limit_check

    async def issue(conn):
        key = await tenants.issue_key(conn, args.tenant_id, scopes=args.scopes, label=args.label, env=args.env,
                                      rate_limit_prep=limit_prep, rate_limit_check=limit_check,
                                      expires_at=args.expires_at)
        if not await tenants.tenant_is_active(conn, args.tenant_id):
            _tell("warning: the tenant is inactive; the key is refused until `tenant activate`")
        return key

    return asyncio.run(_with_connection(settings, issue))


def _undo_key_issue(result, settings: DatabaseSettings) -> str:
    asyncio.run(_with_connection(settings, lambda c: tenants.revoke_key(c, result["id"])))
    return f"the new key could not be shown (the output was closed), so it was revoked: {result['prefix']}"


def cmd_key_rotate(args, settings):
    async def rotate(conn):
        try:
            return await tenants.rotate_key(conn, args.key_id, args.overlap)
        except tenants.KeyNotRotatable as exc:
            raise CommandError(str(exc)) from None

    return asyncio.run(_with_connection(settings, rotate))


def _undo_key_rotate(result, settings: DatabaseSettings) -> str:
    asyncio.run(_with_connection(settings, lambda c: tenants.undo_rotation(c, result)))
    return (f"the new key could not be shown (the output was closed), so it was revoked: {result['prefix']}; "
            f"the old key keeps its expiry")


def _undo_new_encryption_key(result, settings) -> str:
    return "the new key could not be shown (the output was closed); nothing was stored"


def cmd_key_list(args, settings):
    return asyncio.run(_with_connection(settings, lambda c: tenants.list_keys(c, args.tenant_id)))


def cmd_key_revoke(args, settings):
    return asyncio.run(_with_connection(settings, lambda c: tenants.revoke_key(c, args.key_id)))


def cmd_encryption_new_key(args, settings):
    return {"key": Fernet.generate_key().decode()}


def cmd_encryption_rotate(args, settings):
    box = KeyBox(encryption_keys_from_env())

    async def rotate(conn):
        try:
            return {"rotated": await byok.rotate_all(conn, box)}
        except EncryptionUnavailable as exc:
            raise CommandError(exc.message) from None

    return asyncio.run(_with_connection(settings, rotate))


_UNKNOWN = {"tenant": (tenants.UnknownTenant, "no tenant with id {}"), "key": (tenants.UnknownKey, "no API key with id {}")}


def cmd_budget(kind: str, action: str) -> Callable:
    """`tenant budget set|show|clear` and `key budget set|show|clear`: the budget and this
    month's spend; a change returns once every worker acts on it."""
    def command(args, settings):
        async def work(conn):
            ident = args.id
            found = True
            if action != "show":
                found = await budgets.set_budget(conn, kind, ident, args.usd if action == "set" else None)
                if found:
                    await change_in_force()
            found = found and await budgets.statement(conn, kind, ident)
            if not found:
                error, message = _UNKNOWN[kind]
                raise error(message.format(ident))
            return {f"{kind}_id": ident, **found}
        return asyncio.run(_with_connection(settings, work))
    command.__name__ = f"cmd_{kind}_budget_{action}"
    return command


def _day(value: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def cmd_usage(args, settings):
    today = datetime.datetime.now(datetime.timezone.utc).date()
    last = args.date_to or today
    first = args.date_from or min(today.replace(day=1), last)
    if first > last:
        raise CommandError(f"--from {first} is after --to {last}")
    if (last - first).days >= accounting.MAX_REPORT_DAYS:
        raise CommandError(f"at most {accounting.MAX_REPORT_DAYS} days at a time")
    return asyncio.run(_with_connection(settings, lambda c: accounting.usage_report(c, first, last)))


def _backup_call(failure: str, work: Callable, *args, **kwargs):
    """``work(settings, *args, **kwargs)`` of app.backup, its failures as one-line errors."""
    try:
        return work(Settings.from_env(), *args, **kwargs)
    except backup.BackupFailed as exc:
        raise CommandError(str(exc)) from None
    except (BotoCoreError, ClientError) as exc:
        raise CommandError(f"{failure}: {exc}") from None


def cmd_backup_create(args, settings):
    return _backup_call("the backup could not be stored", backup.create, args.keep_days)


def cmd_backup_list(args, settings):
    return _backup_call("the backups could not be listed", backup.list_backups)


def cmd_backup_show(args, settings):
    return _backup_call("the backups could not be listed", backup.find, args.backup)


def cmd_backup_restore(args, settings):
    return _backup_call("the backup could not be read", backup.restore, args.backup, args.database)


def cmd_backup_drill(args, settings):
    return _backup_call("the backup could not be read", backup.drill, args.backup, args.database,
                        create=args.create)


NEEDS_NO_DATABASE = (cmd_encryption_new_key,)
# Commands that print their result and exit 1 when it says it failed ("ok": false).
FAIL_WHEN_NOT_OK = (cmd_backup_drill,)


# --- output --------------------------------------------------------------------

def _text(value: Any) -> str:
    if isinstance(value, str) and not value.isprintable():  # stored before names were checked
        return value.encode("unicode_escape").decode("ascii")
    if isinstance(value, datetime.datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "-" if value is None else str(value)


def render_text(result: Any, secret: bool = False) -> str:
    """Text output: a row's fields as name=value; a new secret (``secret``: the row's ``key``) on
    a line of its own, with the warning that it is never shown again."""
    if isinstance(result, dict) and set(result) == {"applied"}:
        names = result["applied"]
        return "\n".join(f"applied {n}" for n in names) if names else "nothing to apply: the schema is up to date"
    rows = result if isinstance(result, list) else [result]
    lines = []
    for row in rows:
        if secret and "key" in row:
            lines.append(f"key: {row['key']}\n(store it now: it is never shown again)")
        fields = "  ".join(f"{k}={_text(v)}" for k, v in row.items() if not (secret and k == "key"))
        if fields:
            lines.append(fields)
    return "\n".join(lines) if lines else "(none)"


# --- parser --------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse, whose help or usage error into a closed pipe (`--help | true`) is no
    traceback: it is written out here, not left for the exit's flush."""

    def _print_message(self, message: str, file=None) -> None:
        stream = file or sys.stderr
        try:
            super()._print_message(message, stream)
            stream.flush()
        except BrokenPipeError:
            _quiet(stream)


def build_parser() -> argparse.ArgumentParser:
    json_flag = _Parser(add_help=False)
    json_flag.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                           help="machine-readable JSON on stdout")

    parser = _Parser(prog="course-supporter-admin", description=__doc__.split("\n")[0], parents=[json_flag])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("migrate", parents=[json_flag], help="apply pending database migrations") \
        .set_defaults(func=cmd_migrate)

    tenant = commands.add_parser("tenant", parents=[json_flag], help="manage tenants") \
        .add_subparsers(dest="action", required=True, metavar="ACTION")
    create = tenant.add_parser("create", parents=[json_flag], help="create a tenant")
    create.add_argument("name", type=_non_blank)
    create.set_defaults(func=cmd_tenant_create)
    tenant.add_parser("list", parents=[json_flag], help="list tenants").set_defaults(func=cmd_tenant_list)
    for action, func in (("activate", cmd_tenant_activate), ("deactivate", cmd_tenant_deactivate)):
        sub = tenant.add_parser(action, parents=[json_flag], help=f"{action} a tenant")
        sub.add_argument("id", type=_uuid)
        sub.set_defaults(func=func)
    _budget_parsers(tenant, "tenant", json_flag)

    key = commands.add_parser("key", parents=[json_flag], help="manage API keys") \
        .add_subparsers(dest="action", required=True, metavar="ACTION")
    issue = key.add_parser("issue", parents=[json_flag], help="issue a key (shown once)")
    issue.add_argument("tenant_id", type=_uuid)
    issue.add_argument("--scopes", type=_scopes, default=list(tenants.SCOPES), help="comma-separated: prep,check")
    issue.add_argument("--label", type=_printable_text, default="",
                       help=f"text to recognise the key by (at most {MAX_NAME_CHARS} characters)")
    issue.add_argument("--env", choices=tenants.KEY_ENVS, default="live")
    issue.add_argument("--rate-limit-prep", type=_whole_number(1, MAX_RATE_LIMIT_PER_MIN),
                       help="prep requests per minute")
    issue.add_argument("--rate-limit-check", type=_whole_number(1, MAX_RATE_LIMIT_PER_MIN),
                       help="check requests per minute")
    issue.add_argument("--expires-at", type=_future_timestamp, help="ISO 8601 expiry (UTC if no offset)")
    issue.set_defaults(func=cmd_key_issue)
    listing = key.add_parser("list", parents=[json_flag], help="list a tenant's keys")
    listing.add_argument("tenant_id", type=_uuid)
    listing.set_defaults(func=cmd_key_list)
    revoke = key.add_parser("revoke", parents=[json_flag], help="revoke a key")
    revoke.add_argument("key_id", type=_uuid)
    revoke.set_defaults(func=cmd_key_revoke)
    rotate = key.add_parser("rotate", parents=[json_flag],
                            help="issue a key like this one (shown once); this one expires after the overlap")
    rotate.add_argument("key_id", type=_uuid)
    rotate.add_argument("--overlap", type=_duration, default=datetime.timedelta(hours=24),
                        help="how long both keys work, e.g. 30m, 24h (the default), 7d; at most 90d")
    rotate.set_defaults(func=cmd_key_rotate)
    _budget_parsers(key, "key", json_flag)

    usage = commands.add_parser("usage", parents=[json_flag],
                                help="LLM calls, tokens and cost per tenant, with each one's budget and its share used")
    usage.add_argument("--from", dest="date_from", type=_day,
                       help="first UTC day (YYYY-MM-DD), included; default: the first of this month")
    usage.add_argument("--to", dest="date_to", type=_day, help="last UTC day, included; default: today")
    usage.set_defaults(func=cmd_usage)

    encryption = commands.add_parser("encryption", parents=[json_flag],
                                     help="APP_ENCRYPTION_KEY: tenants' provider keys at rest") \
        .add_subparsers(dest="action", required=True, metavar="ACTION")
    encryption.add_parser("new-key", parents=[json_flag], help="print a new key for APP_ENCRYPTION_KEY") \
        .set_defaults(func=cmd_encryption_new_key)
    encryption.add_parser("rotate", parents=[json_flag],
                          help="re-encrypt every stored provider key with the first APP_ENCRYPTION_KEY") \
        .set_defaults(func=cmd_encryption_rotate)

    backups = commands.add_parser("backup", parents=[json_flag], help="database backups in the S3 bucket") \
        .add_subparsers(dest="action", required=True, metavar="ACTION")
    create_backup = backups.add_parser("create", parents=[json_flag],
                                       help="pg_dump the database into the bucket under backups/")
    create_backup.add_argument("--keep-days", type=_whole_number(0, MAX_KEEP_DAYS), default=14,
                               help="then delete backups older than this many days (default 14)")
    create_backup.set_defaults(func=cmd_backup_create)
    backups.add_parser("list", parents=[json_flag], help="the backups in the bucket") \
        .set_defaults(func=cmd_backup_list)
    show = backups.add_parser("show", parents=[json_flag], help="one backup: its key, size and time")
    show.add_argument("backup", help='"latest" or an object key (backups/course-supporter-<UTC>.dump)')
    show.set_defaults(func=cmd_backup_show)
    restore = backups.add_parser("restore", parents=[json_flag],
                                 help="load a backup into an empty database (playbooks/restore.yml swaps it in)")
    restore.add_argument("backup", help='"latest" or an object key (backups/course-supporter-<UTC>.dump)')
    restore.add_argument("--database", required=True,
                         help="the empty database to load it into (same server and login as DATABASE_URL)")
    restore.set_defaults(func=cmd_backup_restore)
    drill = backups.add_parser("drill", parents=[json_flag],
                               help="restore a backup into an empty scratch database and compare it with the "
                                    "fingerprint taken with it (exit 1 if it differs or fails)")
    drill.add_argument("backup", nargs="?", default="latest",
                       help='"latest" (the default) or an object key (backups/course-supporter-<UTC>.dump)')
    drill.add_argument("--database", required=True,
                       help="the empty scratch database to restore into (same server and login as DATABASE_URL)")
    drill.add_argument("--create", action="store_true",
                       help="create the scratch database first (dropping one left over) and drop it afterwards, "
                            "with DATABASE_URL's login: it needs the CREATEDB privilege")
    drill.set_defaults(func=cmd_backup_drill)
    return parser


def _budget_parsers(commands, kind: str, json_flag) -> None:
    whose = "a tenant's" if kind == "tenant" else "an API key's"
    actions = commands.add_parser("budget", parents=[json_flag], help=f"{whose} monthly LLM budget (USD, UTC months)") \
        .add_subparsers(dest="budget_action", required=True, metavar="ACTION")
    for action, text in (("set", "set it (calls whose worst case does not fit are refused: 402)"),
                         ("show", "show it and this month's spend"), ("clear", "remove it (no limit)")):
        sub = actions.add_parser(action, parents=[json_flag], help=text)
        sub.add_argument("id", type=_uuid, metavar=f"{kind.upper()}_ID")
        if action == "set":
            sub.add_argument("--usd", type=_usd, required=True, help="the monthly limit in USD, e.g. 25.00")
        sub.set_defaults(func=cmd_budget(kind, action))


# Commands whose output is the only copy of a secret: if it cannot be written, this
# undoes what can be undone and says what happened (exit 1).
UNSEEN_SECRET = {cmd_key_issue: _undo_key_issue, cmd_key_rotate: _undo_key_rotate,
                 cmd_encryption_new_key: _undo_new_encryption_key}


def _tell(message: str) -> None:
    """A line on stderr, if anyone still reads it."""
    try:
        print(message, file=sys.stderr, flush=True)
    except OSError:
        pass


def _quiet(stream=sys.stdout) -> None:
    # The reader went away (`… | head -1`). As the Python docs advise, the stream now points
    # at /dev/null, so that flushing it at exit raises no second error.
    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on a usage error, 0 after --help
    try:
        settings = None if args.func in NEEDS_NO_DATABASE else DatabaseSettings.from_env()
        result = args.func(args, settings)
    except (ConfigError, CommandError) as exc:
        _tell(f"error: {exc}" if isinstance(exc, CommandError) else str(exc))
        return 1
    try:
        print(dumps(result) if getattr(args, "json", False) else render_text(result, args.func in UNSEEN_SECRET),
              flush=True)
    except BrokenPipeError:
        _quiet()
        undo = UNSEEN_SECRET.get(args.func)
        if undo is None:
            return 0  # what was done stays done
        try:
            _tell(f"error: {undo(result, settings)}")
        except CommandError as exc:
            _tell(f"error: the new key could not be shown (the output was closed), nor revoked: {exc}")
        return 1
    return 1 if args.func in FAIL_WHEN_NOT_OK and not result["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
