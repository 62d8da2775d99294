"""One source of truth per setting: app/config.py declares each environment variable once;
docs/configuration.md is generated from it; the app role sets each one from a role variable
whose default is the app's own, or lets it through app_extra_env; the environment file the
role writes is one the app accepts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app.config import Settings, all_settings, parse_env_file
from tests.support import configuration_doc, templates
from tests.support.paths import REPO_ROOT

ROLES = Path(REPO_ROOT) / "roles"
APP_DEFAULTS = yaml.safe_load((ROLES / "app" / "defaults" / "main.yml").read_text())
REQUIRED_ENV = {"DATABASE_URL": "postgresql://u:p@127.0.0.1:5432/db", "S3_BUCKET": "b"}


def test_the_configuration_doc_is_generated_from_the_declarations():
    assert configuration_doc.DOC.read_text() == configuration_doc.render(), "run `make docs`"


def test_every_setting_is_documented_with_what_sets_it_on_the_appliance():
    doc = configuration_doc.DOC.read_text()
    roles = configuration_doc.role_variables()
    for spec in all_settings():
        section = doc.split(f"### `{spec.name}`\n", 1)[1].split("\n### ", 1)[0]
        assert spec.doc in section and f"- Accepts: {spec.parse.accepts}" in section
        assert f"- Set on the appliance by: `{roles.get(spec.name, 'app_extra_env')}`" in section


def test_the_role_sets_only_variables_the_app_declares():
    declared = {spec.name for spec in all_settings()}
    assert set(configuration_doc.role_variables()) <= declared


@pytest.mark.parametrize("name, role_variable", sorted(configuration_doc.role_variables().items()))
def test_role_defaults_equal_the_apps_defaults(name, role_variable):
    """A role default is the app's default (read by the app's own parser), or empty when the app
    has none (the variable is left unset); a required variable has no default in either."""
    spec = {s.name: s for s in all_settings()}[name]
    role_default = APP_DEFAULTS[role_variable]
    if spec.required or spec.default in (None, (), {}, ""):
        assert role_default == "", f"{role_variable} should be empty: the app has no default for {name}"
    else:
        assert spec.parse(str(role_default)) == spec.default, f"{role_variable}: {role_default!r} vs {spec.default!r}"


def test_the_environment_the_role_writes_is_the_one_the_app_reads(rendered):
    """The defaults plus the required values, and app_extra_env: all read back by the app."""
    env = parse_env_file(rendered["operator_choices"]["app.env"])
    settings = Settings.from_env(env)
    assert settings.max_upload_bytes == 2 * 2**30 + 1 and settings.uploads_per_worker == 16
    assert settings.llm_model == "gpt-4o-mini" and settings.openai_base_url == "https://api.openai.com/v1"
    # Empty role variables leave their variables unset.
    assert "OPENAI_API_KEY" not in env and "CORS_ORIGINS" not in env


def test_values_with_quotes_and_backslashes_survive_the_environment_file():
    tricky = 'a "quoted" \\ value with $HOME and `ticks`'
    run = templates.start("-i", "localhost,", *templates.extra_vars(
        {**templates.REQUIRED, "app_llm_model": tricky}))
    status, failure, files = templates.finish(run)
    assert status == 0, failure
    assert parse_env_file(files["app.env"])["LLM_MODEL"] == tricky


def _check_env_file(path: Path) -> subprocess.CompletedProcess:
    """What the app role runs before it writes the file (its template's validate)."""
    return subprocess.run([sys.executable, "-m", "app.config", str(path)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)


def test_the_release_checks_the_environment_file_before_it_is_written(rendered, tmp_path):
    good = tmp_path / "good.env"
    good.write_text(rendered["operator_choices"]["app.env"])
    assert _check_env_file(good).returncode == 0
    bad = tmp_path / "bad.env"
    bad.write_text(rendered["operator_choices"]["app.env"] + 'LLM_MAX_RETRIES="lots"\n')
    result = _check_env_file(bad)
    assert result.returncode == 1
    assert result.stderr.strip() == "configuration error: LLM_MAX_RETRIES must be an integer, got 'lots'"
    # The production template's vault placeholders stop a deploy before anything goes live.
    placeholder = tmp_path / "placeholder.env"
    placeholder.write_text(rendered["production"]["app.env"])
    result = _check_env_file(placeholder)
    assert result.returncode == 1 and result.stderr.startswith("configuration error: APP_ENCRYPTION_KEY ")
    assert "CHANGE-ME" not in result.stderr  # the checker names the variable, never its value's secret


def test_the_app_role_refuses_app_extra_env_for_a_variable_it_sets():
    run = templates.start("-i", "localhost,", *templates.extra_vars(
        {**templates.REQUIRED, "app_extra_env": {"MAX_UPLOAD_BYTES": "5", "UPLOADS_PER_WORKER": "16"}}),
        tags="variables")
    status, failure, _ = templates.finish(run)
    assert status != 0
    assert "app_extra_env sets MAX_UPLOAD_BYTES, which the role sets from its own variables" in failure


def _derived(role: str, default) -> bool:
    """A default that is another role's variable (or made from one), or the topology's
    (the inventory's groups, or playbooks/tasks/topology.yml's course_supporter_*)."""
    others = [r.name for r in ROLES.iterdir() if r.is_dir() and r.name != role] + ["course_supporter"]
    return bool(re.search(r"\{\{.*(\b(" + "|".join(others) + r")_\w+|\bgroups\[)", str(default), re.S))


# Left to their defaults by the production template, which says so in its header.
NOT_IN_THE_PRODUCTION_TEMPLATE = {"app_source_dir", "app_restore_backup", "nginx_site_template"}


def test_the_production_template_sets_every_role_variable_but_the_derived_and_the_named():
    text = (Path(REPO_ROOT) / "inventory/production.example/group_vars/all/main.yml").read_text()
    production = set(yaml.safe_load(text))
    header = "".join(text.splitlines(keepends=True)[:10])
    for defaults in ROLES.glob("*/defaults/main.yml"):
        role = defaults.parts[-3]
        for name, default in (yaml.safe_load(defaults.read_text()) or {}).items():
            if _derived(role, default):
                assert name not in production, f"{name} is derived by its role: copying it lets it drift"
                assert name in header
            elif name in NOT_IN_THE_PRODUCTION_TEMPLATE:
                assert name not in production and name in header
            else:
                assert name in production, f"the production template should set {name}"
