"""Key rotation with an overlap (`key rotate`): the new key is like the old one, both work
until the overlap ends, and the two count against one rate limit and one key budget."""

from __future__ import annotations

import asyncio
import datetime
import json
import time

from tests.support.admin_cli import admin
from tests.support.llm_accounting import llm_calls


def rotate(database_url: str, key_id: str, *args: str) -> dict:
    result = admin("key", "rotate", key_id, *args, "--json", database_url=database_url)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_both_keys_work_through_the_overlap_and_share_one_limit_and_budget(client, factory, db, database_url,
                                                                                 fresh_llm):
    tenant = await factory.tenant()
    old = await factory.key(tenant["id"], scopes=("prep", "check"), check=10, prep=1000)
    await db.execute("UPDATE api_keys SET monthly_budget_usd = 1.00, label = 'LMS' WHERE id = $1", old["id"])
    started = datetime.datetime.now(datetime.timezone.utc)
    new = await asyncio.to_thread(rotate, database_url, str(old["id"]), "--overlap", "4s")
    assert new["key"].startswith("cs_test_") and new["key"] != old["key"]
    assert (new["tenant_id"], new["label"], new["scopes"], new["rate_limit_check"], new["rate_limit_prep"]) == \
        (str(tenant["id"]), "LMS", ["prep", "check"], 10, 1000)
    assert new["rotated_from"] == new["old_key_id"] == str(old["id"])
    ends = datetime.datetime.fromisoformat(new["old_key_expires_at"])
    assert datetime.timedelta(seconds=3) < ends - started < datetime.timedelta(seconds=10)
    assert new["old_key_previous_expires_at"] is None
    old_auth, new_auth = {"X-API-Key": old["key"]}, {"X-API-Key": new["key"]}

    # One limit: 6 + 6 requests of the check scope over both keys, 10 admitted.
    statuses = [(await client.get("/api/v1/courses", headers=auth)).status
                for auth in [old_auth] * 6 + [new_auth] * 6]
    assert statuses.count(200) == 10 and statuses.count(429) == 2, statuses

    # One key budget (copied): a call with the new key is spent in the account both keys show.
    resp = await client.post("/api/v1/gpt", json={"prompt": "hello", "max_tokens": 10}, headers=new_auth)
    assert resp.status == 200, await resp.text()
    [call] = await llm_calls(db, tenant["id"])
    for key_id in (old["id"], new["id"]):
        shown = await asyncio.to_thread(admin, "key", "budget", "show", str(key_id), "--json",
                                        database_url=database_url)
        figures = json.loads(shown.stdout)
        assert (figures["budget_usd"], figures["spent_usd"]) == (1.0, float(call["cost_usd"])), figures

    # After the overlap only the new key works.
    while datetime.datetime.now(datetime.timezone.utc) < ends:
        await asyncio.sleep(0.1)
    assert (await client.post("/api/v1/courses", json={"title": "After"}, headers=old_auth)).status == 401
    assert (await client.post("/api/v1/courses", json={"title": "After"}, headers=new_auth)).status == 201


async def test_a_second_rotation_stays_in_the_line_and_keeps_an_earlier_expiry(factory, database_url):
    tenant = await factory.tenant()
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    first = await factory.key(tenant["id"], expires_at=soon)
    second = await asyncio.to_thread(rotate, database_url, str(first["id"]), "--overlap", "7d")
    # The old key's own expiry came sooner than the overlap's end: it stays.
    assert datetime.datetime.fromisoformat(second["old_key_expires_at"]) == soon
    assert datetime.datetime.fromisoformat(second["expires_at"]) == soon  # the new key keeps the expiry too
    third = await asyncio.to_thread(rotate, database_url, second["id"], "--overlap", "0s")
    assert third["rotated_from"] == second["id"]
    started = time.time()
    assert datetime.datetime.fromisoformat(third["old_key_expires_at"]).timestamp() <= started + 1
