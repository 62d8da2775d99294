"""A configuration the app would refuse never goes live: the deploy stops before it writes the
environment file, naming the variable, and the live release keeps serving with its file."""

from __future__ import annotations

from tests.localvps.playbook import SITE, ansible_playbook

ENV_FILE = "/etc/course-supporter/env"


def _deploy(*extra: str) -> tuple[int, str]:
    """The playbook's exit status and its output, whitespace folded (the YAML callback wraps lines)."""
    result = ansible_playbook(*SITE, *extra, capture=True, timeout=900)
    return result.returncode, " ".join(result.stdout.split())


def test_a_value_the_app_refuses_stops_the_deploy_and_changes_nothing(host, curl):
    before = host.check_output(f"sha256sum {ENV_FILE}")
    started = host.check_output("systemctl show -p ActiveEnterTimestamp --value course-supporter")
    status, output = _deploy("-e", "app_llm_max_retries=lots")
    assert status != 0
    assert "The new release refuses its configuration: configuration error: LLM_MAX_RETRIES must be an integer, " \
           "got 'lots'" in output, output[-3000:]
    assert host.check_output(f"sha256sum {ENV_FILE}") == before
    assert host.check_output("systemctl show -p ActiveEnterTimestamp --value course-supporter") == started
    status, body = curl.json("/health")
    assert (status, body["status"]) == (200, "ok")


def test_app_extra_env_cannot_shadow_a_role_variable(host):
    before = host.check_output(f"sha256sum {ENV_FILE}")
    status, output = _deploy("-e", '{"app_extra_env": {"MAX_UPLOAD_BYTES": "1024"}}')
    assert status != 0
    assert "app_extra_env sets MAX_UPLOAD_BYTES, which the role sets from its own variables" in output, output[-3000:]
    assert host.check_output(f"sha256sum {ENV_FILE}") == before
