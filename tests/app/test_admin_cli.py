"""The admin CLI as operators run it: a subprocess, JSON output, exit codes."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal

import asyncpg
import pytest

from tests.support.admin_cli import admin
from tests.support.names import unique
from tests.support.paths import REPO_ROOT


@pytest.fixture
def cli(database_url):
    def run(*args, **kwargs):
        return admin(*args, database_url=database_url, **kwargs)
    return run


def ok_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_tenant_lifecycle(cli):
    name = unique("Acme")
    tenant = ok_json(cli("tenant", "create", name, "--json"))
    assert set(tenant) == {"id", "name", "is_active", "created_at"}
    assert tenant["name"] == name and tenant["is_active"] is True
    listed = ok_json(cli("tenant", "list", "--json"))
    assert tenant in listed
    assert ok_json(cli("tenant", "deactivate", tenant["id"], "--json"))["is_active"] is False
    # --json is accepted anywhere after the subcommand.
    assert ok_json(cli("tenant", "--json", "activate", tenant["id"]))["is_active"] is True


def test_key_lifecycle(cli, database_url):
    tenant = ok_json(cli("tenant", "create", unique("Keys"), "--json"))
    issued = ok_json(cli("key", "issue", tenant["id"], "--json", "--label", "ci", "--scopes", "prep",
                         "--env", "test", "--rate-limit-prep", "7", "--expires-at", "2099-01-01T00:00:00Z"))
    assert {"id", "key", "prefix", "tenant_id", "label", "scopes", "rate_limit_prep", "rate_limit_check",
            "expires_at", "created_at"} <= set(issued)
    assert issued["key"].startswith("cs_test_") and len(issued["key"]) == 8 + 32
    assert issued["prefix"] == issued["key"][:12]
    assert issued["scopes"] == ["prep"] and issued["rate_limit_prep"] == 7
    assert issued["rate_limit_check"] == 300  # RATE_LIMIT_CHECK_PER_MIN default
    assert issued["expires_at"].startswith("2099-01-01T00:00:00")

    defaults = ok_json(cli("key", "issue", tenant["id"], "--json", env={"RATE_LIMIT_PREP_PER_MIN": "11"}))
    assert defaults["scopes"] == ["prep", "check"] and defaults["rate_limit_prep"] == 11
    assert defaults["key"].startswith("cs_live_")

    keys = ok_json(cli("key", "list", tenant["id"], "--json"))
    assert [k["id"] for k in keys] == [issued["id"], defaults["id"]]
    assert all("key" not in k for k in keys)
    assert issued["key"] not in json.dumps(keys)

    revoked = ok_json(cli("key", "revoke", issued["id"], "--json"))
    assert revoked["is_active"] is False and "key" not in revoked

    # Only the hash is stored: the key itself is nowhere in the database.
    dump = subprocess.run(["pg_dump", "--data-only", database_url], capture_output=True, text=True, check=True).stdout
    assert issued["key"] not in dump and issued["key"][12:] not in dump


def test_text_output_shows_the_key_once(cli):
    tenant = ok_json(cli("tenant", "create", unique("Text"), "--json"))
    result = cli("key", "issue", tenant["id"])
    assert result.returncode == 0
    assert "key: cs_live_" in result.stdout and "never shown again" in result.stdout


@pytest.mark.parametrize("args", [
    ("tenant", "deactivate", str(uuid.uuid4())),
    ("key", "issue", str(uuid.uuid4())),
    ("key", "list", str(uuid.uuid4())),
    ("key", "revoke", str(uuid.uuid4())),
    ("tenant", "budget", "set", str(uuid.uuid4()), "--usd", "5"),
    ("tenant", "budget", "show", str(uuid.uuid4())),
    ("key", "budget", "clear", str(uuid.uuid4())),
    ("key", "rotate", str(uuid.uuid4())),
])
def test_unknown_ids_exit_1_with_a_message(cli, args):
    result = cli(*args, "--json")
    assert result.returncode == 1
    assert result.stdout == "" and "no " in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [
    (),
    ("tenant",),
    ("frobnicate",),
    ("tenant", "activate", "not-a-uuid"),
    ("key", "issue", str(uuid.uuid4()), "--scopes", "admin"),
    ("key", "issue", str(uuid.uuid4()), "--rate-limit-prep", "-3"),
    ("key", "issue", str(uuid.uuid4()), "--rate-limit-check", "2147483648"),  # over PostgreSQL's integer
    ("backup", "create", "--keep-days", "10000000"),
    ("key", "issue", str(uuid.uuid4()), "--expires-at", "tomorrow"),
    ("key", "issue", str(uuid.uuid4()), "--expires-at", "2001-01-01"),
    ("key", "issue", str(uuid.uuid4()), "--env", "prod"),
    # Found by probing: a key that can never be used; a label or name that rewrites the
    # operator's terminal (ESC[2J clears it) or breaks one line per row; no limit on a label;
    # an expiry past the year 9999 once in UTC and text that is not UTF-8 (both exit 1).
    ("key", "issue", str(uuid.uuid4()), "--rate-limit-prep", "0"),
    ("key", "issue", str(uuid.uuid4()), "--rate-limit-check", "0"),
    ("key", "issue", str(uuid.uuid4()), "--label", "a\tb\nc\x1b[2Jd"),
    ("key", "issue", str(uuid.uuid4()), "--label", "x" * 201),
    ("tenant", "create", "probe-\x1b[31mred"), ("tenant", "create", "two\nlines"),
    ("key", "issue", str(uuid.uuid4()), "--expires-at", "9999-12-31T23:59:59-01:00"),
    ("tenant", "create", "bad-\udcff"),
    ("tenant", "budget", "set", str(uuid.uuid4())),
    ("tenant", "budget", "set", str(uuid.uuid4()), "--usd", "-1"),
    ("tenant", "budget", "set", str(uuid.uuid4()), "--usd", "1.005"),
    ("tenant", "budget", "set", str(uuid.uuid4()), "--usd", "NaN"),
    ("key", "budget", "set", str(uuid.uuid4()), "--usd", "1000000000000"),
    ("key", "budget", "set", str(uuid.uuid4()), "--usd", "ten"),
    ("key", "rotate", str(uuid.uuid4()), "--overlap", "1w"),
    ("key", "rotate", str(uuid.uuid4()), "--overlap", "91d"),
    ("key", "rotate", str(uuid.uuid4()), "--overlap", "-1h"),
])
def test_usage_errors_exit_2(cli, args):
    result = cli(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.startswith("usage:")


def test_budgets_of_a_tenant_and_of_a_key(cli):
    """set, show and clear a monthly budget; each shows the month's spend beside it."""
    tenant = ok_json(cli("tenant", "create", unique("Budget"), "--json"))
    shown = ok_json(cli("tenant", "budget", "set", tenant["id"], "--usd", "25.00", "--json"))
    assert shown == {"tenant_id": tenant["id"], "period_start": shown["period_start"],
                     "period_end": shown["period_end"], "budget_usd": 25.0, "spent_usd": 0.0, "reserved_usd": 0.0,
                     "remaining_usd": 25.0, "calls": 0}
    assert ok_json(cli("tenant", "budget", "show", tenant["id"], "--json")) == shown
    cleared = ok_json(cli("tenant", "budget", "clear", tenant["id"], "--json"))
    assert (cleared["budget_usd"], cleared["remaining_usd"]) == (None, None)
    key = ok_json(cli("key", "issue", tenant["id"], "--json"))
    assert ok_json(cli("key", "budget", "set", key["id"], "--usd", "0.5", "--json"))["budget_usd"] == 0.5
    text = cli("key", "budget", "show", key["id"])
    assert text.returncode == 0 and f"key_id={key['id']}" in text.stdout and "budget_usd=0.5" in text.stdout
    assert ok_json(cli("key", "budget", "clear", key["id"], "--json"))["budget_usd"] is None


async def _account_calls(database_url: str, tenant_id: str, costs: list[str], days_ago: int = 0) -> None:
    """llm_calls rows as the app writes them (each settling into the month's spend)."""
    conn = await asyncpg.connect(database_url)
    try:
        for cost in costs:
            await conn.execute(
                """WITH call AS (INSERT INTO llm_calls (tenant_id, endpoint, provider, model, input_tokens,
                                                        output_tokens, cost_usd, latency_ms, attempts, outcome,
                                                        created_at)
                                 VALUES ($1, 'gpt', 'default', 'gpt-4o-mini', 10, 20, $2, 5, 1, 'ok',
                                         now() - make_interval(days => $3)))
                   SELECT llm_settle($1, NULL, CASE WHEN $3 = 0 THEN $2 ELSE 0 END, NULL)""",
                uuid.UUID(tenant_id), Decimal(cost), days_ago)
    finally:
        await conn.close()


def test_usage_across_tenants(cli, database_url):
    """Per tenant with calls in the days asked (default: this month) or with a budget: calls,
    tokens, cost, dearest first, and the share of the budget this month's spend used."""
    budgeted = ok_json(cli("tenant", "create", unique("Usage A"), "--json"))
    earlier = ok_json(cli("tenant", "create", unique("Usage B"), "--json"))
    ok_json(cli("tenant", "budget", "set", budgeted["id"], "--usd", "10", "--json"))
    asyncio.run(_account_calls(database_url, budgeted["id"], ["1.5", "0.5"]))
    asyncio.run(_account_calls(database_url, earlier["id"], ["0.25"], days_ago=40))
    rows = {row["tenant_id"]: row for row in ok_json(cli("usage", "--json"))}
    assert rows[budgeted["id"]] == {"tenant_id": budgeted["id"], "name": budgeted["name"], "calls": 2,
                                    "input_tokens": 20, "output_tokens": 40, "cost_usd": 2.0, "budget_usd": 10.0,
                                    "month_spent_usd": 2.0, "budget_share_used": 0.2}
    assert earlier["id"] not in rows
    since = (datetime.date.today() - datetime.timedelta(days=60)).isoformat()
    rows = {row["tenant_id"]: row for row in ok_json(cli("usage", "--from", since, "--json"))}
    assert (rows[earlier["id"]]["calls"], rows[earlier["id"]]["cost_usd"]) == (1, 0.25)
    assert rows[earlier["id"]]["budget_usd"] is None and rows[earlier["id"]]["budget_share_used"] is None
    assert cli("usage", "--from", "2026-12-02", "--to", "2026-12-01").returncode == 1
    assert cli("usage", "--from", "2020-01-01", "--to", "2026-01-01").returncode == 1
    assert cli("usage", "--from", "yesterday").returncode == 2


def test_a_revoked_key_is_not_rotated_and_the_new_key_is_shown_once(cli):
    tenant = ok_json(cli("tenant", "create", unique("Rotate"), "--json"))
    key = ok_json(cli("key", "issue", tenant["id"], "--json"))
    text = cli("key", "rotate", key["id"], "--overlap", "1h")
    assert text.returncode == 0
    assert text.stdout.startswith("key: cs_live_") and "(store it now: it is never shown again)" in text.stdout
    assert f"rotated_from={key['id']}" in text.stdout
    ok_json(cli("key", "revoke", key["id"], "--json"))
    refused = cli("key", "rotate", key["id"])
    assert refused.returncode == 1 and "is revoked: issue a new one instead" in refused.stderr


def test_names_and_labels_are_kept_as_given_when_printable(cli):
    tenant = ok_json(cli("tenant", "create", "  Школа № 1 — ☀  ", "--json"))
    assert tenant["name"] == "Школа № 1 — ☀"
    key = ok_json(cli("key", "issue", tenant["id"], "--label", "CI runner (ünïcode)", "--json"))
    assert key["label"] == "CI runner (ünïcode)"
    assert ok_json(cli("key", "issue", tenant["id"], "--json"))["label"] == ""


def test_text_output_escapes_control_characters_stored_before_they_were_refused(cli, database_url):
    import asyncio

    import asyncpg

    async def store():
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetchval("INSERT INTO tenants (name) VALUES ($1) RETURNING id::text",
                                       unique("old") + "\x1b[2J\n")
        finally:
            await conn.close()

    tenant_id = asyncio.run(store())
    line = next(line for line in cli("tenant", "list").stdout.splitlines() if tenant_id in line)
    assert "\x1b" not in line and "\\x1b[2J\\n" in line


def test_a_key_for_an_inactive_tenant_is_issued_with_a_warning(cli):
    tenant = ok_json(cli("tenant", "create", unique("dormant"), "--json"))
    ok_json(cli("tenant", "deactivate", tenant["id"], "--json"))
    result = cli("key", "issue", tenant["id"], "--json")
    assert json.loads(result.stdout)["is_active"] is True and result.returncode == 0
    assert result.stderr.startswith("warning: the tenant is inactive")


def test_the_largest_rate_limit_is_stored(cli):
    tenant = ok_json(cli("tenant", "create", unique("big"), "--json"))
    key = ok_json(cli("key", "issue", tenant["id"], "--rate-limit-prep", "2147483647", "--json"))
    assert key["rate_limit_prep"] == 2147483647


def test_a_database_without_the_schema_exits_1_with_a_hint(pg):
    url = pg.create_database(unique("unmigrated").replace("-", "_"))
    result = admin("tenant", "list", database_url=url)
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: the database has no schema yet") and "run `migrate` first" in result.stderr


def test_missing_database_url_is_one_clear_line():
    result = admin("tenant", "list")
    assert result.returncode == 1
    assert result.stderr.strip() == "configuration error: DATABASE_URL is required but not set"


def test_unreachable_database_exits_1(tmp_path):
    from tests.support.net import free_port

    result = admin("tenant", "list", database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    assert result.returncode == 1 and "cannot connect" in result.stderr and "Traceback" not in result.stderr


def test_a_database_url_option_asyncpg_refuses_exits_1(database_url):
    """An sslmode libpq does not know is a configuration error; a CA file that is not there, a
    connection error: one line each, exit 1."""
    result = admin("tenant", "list", database_url=database_url + "?sslmode=bogus")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "configuration error: DATABASE_URL has sslmode 'bogus'" in result.stderr
    result = admin("tenant", "list", database_url=database_url + "?sslmode=verify-full&sslrootcert=/nonexistent.pem")
    assert result.returncode == 1 and "cannot connect" in result.stderr and "Traceback" not in result.stderr


def test_migrate_is_idempotent_and_safe_concurrently(pg):
    url = pg.create_database(unique("migrations").replace("-", "_"))
    runs = [subprocess.Popen([sys.executable, "-m", "app.admin", "migrate", "--json"], cwd=REPO_ROOT,
                             env={**os.environ, "DATABASE_URL": url}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(60), *p.communicate()) for p in runs]
    assert [code for code, _, _ in results] == [0, 0], results
    applied = [json.loads(out)["applied"] for _, out, _ in results]
    # One run applied everything, the other found nothing left.
    assert sorted(applied, key=len) == [[], sorted(p[:-4] for p in os.listdir(os.path.join(REPO_ROOT, "migrations"))
                                              if p.endswith(".sql") and not p.endswith(".rollback.sql"))]
    again = admin("migrate", "--json", database_url=url)
    assert json.loads(again.stdout) == {"applied": []}
    assert admin("migrate", database_url=url).stdout.strip() == "nothing to apply: the schema is up to date"


def test_a_reader_that_stops_early_gets_no_traceback(cli, database_url):
    """`course-supporter-admin tenant list | head -1`: the pipe closes before the output is written."""
    for _ in range(3):
        ok_json(cli("tenant", "create", unique("many"), "--json"))
    environment = {**os.environ, "DATABASE_URL": database_url}
    run = subprocess.Popen([sys.executable, "-m", "app.admin", "tenant", "list"], cwd=REPO_ROOT, env=environment,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run.stdout.close()  # the reader is gone before anything is written
    assert run.wait(60) == 0
    assert b"Traceback" not in run.stderr.read()


def _into_a_closed_pipe(*args: str, database_url: str | None = None) -> tuple[int, str]:
    environment = {**os.environ, **({"DATABASE_URL": database_url} if database_url else {})}
    environment.pop("PYTHONUNBUFFERED", None)  # as on the VPS: stdout into a pipe is block-buffered
    run = subprocess.Popen([sys.executable, "-m", "app.admin", *args], cwd=REPO_ROOT, env=environment,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run.stdout.close()
    return run.wait(60), run.stderr.read()


@pytest.mark.parametrize("args", [("--help",), ("key", "issue", "--help")])
def test_help_into_a_closed_pipe_gets_no_traceback(args):
    """Found by probing: `course-supporter-admin --help | true` ended in a BrokenPipeError (exit 120)."""
    code, errors = _into_a_closed_pipe(*args)
    assert (code, errors) == (0, "")


def test_a_usage_error_into_a_closed_pipe_still_exits_2():
    """`course-supporter-admin key issue 2>&1 | true`: exit 2, not the 120 of a failed flush at exit."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    run = subprocess.Popen([sys.executable, "-m", "app.admin", "key", "issue"], cwd=REPO_ROOT, env=environment,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run.stdout.close()
    run.stderr.close()
    assert run.wait(60) == 2


def test_a_new_key_nobody_could_see_is_revoked_and_exits_1(cli, database_url):
    """Found by probing: `key issue … | true` left an active key that nobody ever saw, and exited 0."""
    tenant = ok_json(cli("tenant", "create", unique("unseen"), "--json"))
    code, errors = _into_a_closed_pipe("key", "issue", tenant["id"], "--json", database_url=database_url)
    assert code == 1 and errors.startswith("error: the new key could not be shown") and "revoked" in errors
    [key] = ok_json(cli("key", "list", tenant["id"], "--json"))
    assert key["is_active"] is False and key["prefix"] in errors
    code, errors = _into_a_closed_pipe("encryption", "new-key")
    assert code == 1 and errors.startswith("error: the new key could not be shown")
