"""Each of the app-level alarms, end to end on the local VPS: the fault is injected for
real, Netdata's python.d check sees it in the app's metrics (or through nginx and TLS),
the alarm's message reaches the fake Telegram Bot API, and once the fault is removed its
recovery message follows. No test-only route or switch in the product."""

from __future__ import annotations

import datetime
import json
import threading
import time
from pathlib import Path

import pytest

from tests.localvps import pki
from tests.localvps.layout import HOST_ADDRESS, LLM_FALLBACK_PORT, LLM_PORT, S3_BUCKET
from tests.support import llm_server
from tests.support.telegram_log import ALERT_WAIT_S, alarm_messages, count_messages
from tests.support.vps import s3_client, wait_for

PRIMARY = f"http://{HOST_ADDRESS}:{LLM_PORT}/v1"
FALLBACK = f"http://{HOST_ADDRESS}:{LLM_FALLBACK_PORT}/v1"
# The alarms judge windows of up to a minute, then clear: a recovery takes longer than a raise.
RECOVERY_WAIT_S = ALERT_WAIT_S + 90


class Alarms:
    """The Telegram log from the moment the test started."""

    def __init__(self, log: Path) -> None:
        self.log, self.start = log, count_messages(log)

    def wait(self, alarm: str, *levels: str, timeout: float = ALERT_WAIT_S) -> dict:
        found = wait_for(lambda: [m for level in levels for m in alarm_messages(self.log, self.start, alarm, level)],
                         timeout)
        assert found, f"no {'/'.join(levels)} message for {alarm} within {timeout}s"
        return found[0]


@pytest.fixture
def alarms(vps) -> Alarms:
    return Alarms(Path(vps["telegram_log"]))


def _requests(curl, key: str, count: int, path: str = "/api/v1/courses", body: dict | None = None) -> list[int]:
    args = ["-H", f"X-API-Key: {key}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
    return [curl(path, *args, max_time=60)[0] for _ in range(count)]


def test_a_burst_of_5xx_raises_the_5xx_ratio_and_clears(host, vps, curl, alarms):
    """PostgreSQL stopped: keyed requests answer 503 until it is back."""
    host.run_expect([0], "systemctl stop postgresql")
    try:
        deadline = time.monotonic() + ALERT_WAIT_S
        while not alarm_messages(alarms.log, alarms.start, "course_supporter_5xx_ratio", "CRITICAL"):
            assert time.monotonic() < deadline, "no critical 5xx ratio alarm"
            assert set(_requests(curl, vps["api_key"], 20)) <= {200, 503}  # 200: before it was down
            time.sleep(2)
    finally:
        host.run_expect([0], "systemctl start postgresql")
    assert wait_for(lambda: curl("/health")[0] == 200, 60)
    alarms.wait("course_supporter_5xx_ratio", "CLEAR", timeout=RECOVERY_WAIT_S)


def test_requests_stuck_on_a_lock_raise_p99_latency_and_pool_saturation_and_clear(host, vps, curl, alarms):
    """A session holds the courses table locked: every listing waits on it for its whole
    statement timeout, holding a pooled connection, and more wait for one."""
    locker = host.run("systemd-run --unit cs-test-lock --collect --setenv=PGAPPNAME=cs-test-lock "
                      "runuser -u postgres -- psql -d course_supporter "
                      "-c 'BEGIN' -c 'LOCK TABLE courses IN ACCESS EXCLUSIVE MODE' "
                      "-c 'SELECT pg_sleep(90)' -c 'COMMIT'")
    assert locker.rc == 0, locker.stderr
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            _requests(curl, vps["api_key"], 1)

    clients = [threading.Thread(target=keep_asking, daemon=True) for _ in range(30)]  # the pools hold 2 x 10
    for client in clients:
        client.start()
    try:
        alarms.wait("course_supporter_db_pool_saturation", "WARNING", "CRITICAL")
        alarms.wait("course_supporter_p99_latency", "WARNING", "CRITICAL")
    finally:
        stop.set()
        # The session's backend sleeps on with the lock after psql is gone: end it.
        host.run("systemctl stop cs-test-lock; runuser -u postgres -- psql -d postgres -Atc "
                 "\"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'cs-test-lock'\"")
        for client in clients:
            client.join(timeout=90)
    assert wait_for(lambda: curl("/api/v1/courses", "-H", f"X-API-Key: {vps['api_key']}")[0] == 200, 60)
    alarms.wait("course_supporter_db_pool_saturation", "CLEAR", timeout=RECOVERY_WAIT_S)
    alarms.wait("course_supporter_p99_latency", "CLEAR", timeout=RECOVERY_WAIT_S)


def test_llm_failover_warns_failing_outright_is_critical_and_both_clear(host, vps, curl, alarms):
    if f'OPENAI_BASE_URL="{PRIMARY}"' not in host.check_output("cat /etc/course-supporter/env"):
        pytest.skip("the VPS's LLM provider is not the test server (make vps ran with OPENAI_API_KEY)")
    attempts = 1 + int(host.check_output("sed -n 's/^LLM_MAX_RETRIES=\"\\?\\([0-9]*\\).*/\\1/p' "
                                         "/etc/course-supporter/env") or 3)
    prompt = {"prompt": "Say hello.", "max_tokens": 10}
    try:
        # The provider fails every attempt; the fallback answers.
        llm_server.script(PRIMARY, *[{"status": 500}] * (3 * attempts))
        assert _requests(curl, vps["api_key"], 3, "/api/v1/gpt", prompt) == [200] * 3
        alarms.wait("course_supporter_llm_fallbacks", "WARNING")
        alarms.wait("course_supporter_llm_failures", "WARNING")
        # Both fail: the calls fail outright.
        llm_server.script(PRIMARY, *[{"status": 500}] * (3 * attempts))
        llm_server.script(FALLBACK, *[{"status": 500}] * (3 * attempts))
        assert _requests(curl, vps["api_key"], 3, "/api/v1/gpt", prompt) == [502] * 3
        alarms.wait("course_supporter_llm_failures", "CRITICAL")
    finally:
        for server in (PRIMARY, FALLBACK):
            llm_server.control(server, "DELETE", "/_control/requests")
    assert _requests(curl, vps["api_key"], 1, "/api/v1/gpt", prompt) == [200]
    alarms.wait("course_supporter_llm_failures", "CLEAR", timeout=RECOVERY_WAIT_S)
    alarms.wait("course_supporter_llm_fallbacks", "CLEAR", timeout=RECOVERY_WAIT_S)


def test_a_certificate_about_to_expire_is_critical_and_clears_when_renewed(host, vps, alarms):
    """The site serves a certificate for its name that expires in two days (from a CA the
    VPS trusts, so the public URL keeps answering); then certbot's again."""
    tls = f"/etc/nginx/tls/{vps['domain']}"
    cert, key = pki.issue_server_cert(dns=[vps["domain"]], validity=datetime.timedelta(days=2))
    links = host.check_output(f"readlink {tls}/fullchain.pem {tls}/privkey.pem").split()
    host.run_expect([0], "install -d -m 0700 /root/short-lived")
    for name, pem in (("fullchain.pem", cert), ("privkey.pem", key)):
        host.run_expect([0], f"printf '%s' '{pem.decode()}' > /root/short-lived/{name}")
    try:
        host.run_expect([0], f"ln -sfn /root/short-lived/fullchain.pem {tls}/fullchain.pem && "
                             f"ln -sfn /root/short-lived/privkey.pem {tls}/privkey.pem && "
                             "nginx -t -q && systemctl reload nginx")
        message = alarms.wait("course_supporter_certificate_expiry", "CRITICAL")
        assert vps["domain"] in message["text"] or "certificate" in message["text"]
    finally:
        host.run_expect([0], f"ln -sfn {links[0]} {tls}/fullchain.pem && ln -sfn {links[1]} {tls}/privkey.pem && "
                             "nginx -t -q && systemctl reload nginx && rm -rf /root/short-lived")
    alarms.wait("course_supporter_certificate_expiry", "CLEAR", timeout=RECOVERY_WAIT_S)
    assert not alarm_messages(alarms.log, alarms.start, "course_supporter_public_url", "CRITICAL")


def test_nginx_stopped_while_the_app_runs_is_a_failing_public_url(host, alarms):
    host.run_expect([0], "systemctl stop nginx")
    try:
        alarms.wait("course_supporter_public_url", "CRITICAL")
        assert host.run("curl -sf http://127.0.0.1:8000/health").rc == 0  # the app itself answers
    finally:
        host.run_expect([0], "systemctl start nginx")
    alarms.wait("course_supporter_public_url", "CLEAR", timeout=RECOVERY_WAIT_S)
    assert not alarm_messages(alarms.log, alarms.start, "course_supporter_down", "CRITICAL")


def test_a_backup_27_hours_old_warns_until_a_new_one_is_taken(host, alarms):
    """The bucket's newest backup is 27 hours old (the others are set aside), as when the
    timer stopped a day ago; then the backup service runs."""
    s3 = s3_client()
    kept = [o["Key"] for o in s3.list_objects_v2(Bucket=S3_BUCKET, Prefix="backups/").get("Contents", [])]
    for name in kept:
        s3.copy_object(Bucket=S3_BUCKET, Key="set-aside/" + name, CopySource={"Bucket": S3_BUCKET, "Key": name})
        s3.delete_object(Bucket=S3_BUCKET, Key=name)
    stale = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=27)).strftime("%Y%m%dT%H%M%SZ")
    old = f"backups/course-supporter-{stale}.dump"
    s3.put_object(Bucket=S3_BUCKET, Key=old, Body=b"a backup taken 27 hours ago")
    try:
        host.run_expect([0], "systemctl restart course-supporter")  # the workers look at the bucket at start
        alarms.wait("course_supporter_backup_age", "WARNING")
    finally:
        s3.delete_object(Bucket=S3_BUCKET, Key=old)
        for name in kept:
            s3.copy_object(Bucket=S3_BUCKET, Key=name, CopySource={"Bucket": S3_BUCKET, "Key": "set-aside/" + name})
            s3.delete_object(Bucket=S3_BUCKET, Key="set-aside/" + name)
    host.run_expect([0], "systemctl start course-supporter-backup.service")
    host.run_expect([0], "systemctl restart course-supporter")
    alarms.wait("course_supporter_backup_age", "CLEAR", timeout=RECOVERY_WAIT_S)
