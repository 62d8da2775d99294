"""Netdata tells Telegram (the host's fake Bot API) when the app goes down, and when it is back."""

from __future__ import annotations

from pathlib import Path

from tests.support.telegram_log import ALERT_WAIT_S, count_messages, messages_since
from tests.support.vps import wait_for


def test_stopping_the_app_alerts_telegram_and_recovers(host, vps, curl):
    """Stopped as the runbook stops it, socket and service: with the socket left listening,
    the next request (Netdata's check of the public URL, every 10 s) starts it again."""
    log = Path(vps["telegram_log"])
    before = count_messages(log)
    host.run_expect([0], "systemctl stop course-supporter.socket course-supporter.service")
    try:
        critical = wait_for(lambda: [m for m in messages_since(log, before)
                                     if "course-supporter" in m["text"] and "critical" in m["text"].lower()],
                            ALERT_WAIT_S)
        assert critical, f"no critical alert naming course-supporter within {ALERT_WAIT_S}s"
        assert critical[0]["chat_id"] and critical[0]["parse_mode"] == "HTML"
    finally:
        host.run_expect([0], "systemctl start course-supporter.socket course-supporter.service")
    assert wait_for(lambda: curl("/health")[0] == 200, 60)
    recovered = wait_for(lambda: [m for m in messages_since(log, before)
                                  if "course-supporter" in m["text"] and "recovered" in m["text"].lower()],
                         ALERT_WAIT_S)
    assert recovered, f"no recovery message within {ALERT_WAIT_S}s"


def test_test_alarms_reach_telegram_with_the_token_never_on_a_command_line(host, vps):
    """Found by probing: Netdata's own Telegram sender put the bot token in curl's command
    line, which any local user can read in /proc while an alert goes out. Netdata's test
    alarms run here with a `curl` first on PATH that records its command line."""
    log = Path(vps["telegram_log"])
    before = count_messages(log)
    token = host.check_output("sed -n 's/^TELEGRAM_BOT_TOKEN=\"\\(.*\\)\"$/\\1/p' /etc/netdata/health_alarm_notify.conf")
    assert ":" in token  # a bot token: "<bot id>:<secret>"
    recorder = host.check_output("mktemp -d")
    try:
        host.run_expect([0], f"printf '%s\\n' '#!/bin/sh' 'printf \"%s\\\\n\" \"$*\" >> {recorder}/argv' "
                             f"'exec /usr/bin/curl \"$@\"' > {recorder}/curl && chmod 755 {recorder}/curl && chown netdata {recorder}")
        sent = host.run(f"runuser -u netdata -- env PATH={recorder}:/usr/bin:/bin "
                        "/usr/lib/netdata/plugins.d/alarm-notify.sh test")
        assert sent.rc == 0, sent.stderr
        command_lines = host.check_output(f"cat {recorder}/argv")
    finally:
        host.run(f"rm -rf {recorder}")
    assert token not in command_lines and "/bot" not in command_lines
    assert "--config -" in command_lines
    messages = wait_for(lambda: [m for m in messages_since(log, before) if "test alarm" in m["text"]], 30)
    assert messages and len(messages) >= 3, messages_since(log, before)
    assert all(m["parse_mode"] == "HTML" and m["chat_id"] for m in messages)
