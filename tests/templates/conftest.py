"""The templates rendered once per session, in the scenarios the tests read (in parallel)."""

from __future__ import annotations

import pytest
from pathlib import Path

from tests.support import templates
from tests.support.paths import REPO_ROOT

PRODUCTION = Path(REPO_ROOT) / "inventory" / "production.example"
CLUSTER = Path(__file__).parent / "cluster.yml"
MANAGED = Path(__file__).parent / "managed.yml"

SCENARIOS = {
    # The role defaults, and what a site must set.
    "defaults": ("-i", "localhost,", *templates.extra_vars(templates.REQUIRED)),
    # inventory/production.example with its vault's example values.
    "production": ("-i", str(PRODUCTION), "-e", f"@{PRODUCTION / 'group_vars/all/vault.yml.example'}"),
    # What an operator may choose: a larger upload limit, a variable through app_extra_env, a
    # metrics scraper from outside.
    "operator_choices": ("-i", "localhost,", *templates.extra_vars(
        {**templates.REQUIRED, "app_max_upload_bytes": 2 * 2**30 + 1, "app_extra_env": {"UPLOADS_PER_WORKER": "16"},
         "nginx_metrics_password": "scraper-password-0000"})),
    # One server running nginx and the app, its database a managed PostgreSQL
    # (tests/templates/managed.yml), with the app role's variable checks.
    "managed": ("-i", str(MANAGED), "--tags", "variables", *templates.extra_vars(
        {**{k: v for k, v in templates.REQUIRED.items() if k != "app_database_url"},
         "render_host": "solo", "render_topology": "course_supporter"})),
}
# A web host in front of two app hosts, and a database host (tests/templates/cluster.yml):
# every host rendered, as scenario "cluster_<host>".
CLUSTER_SCENARIO = ("-i", str(CLUSTER), *templates.extra_vars(
    {**{k: v for k, v in templates.REQUIRED.items() if k != "app_database_url"},
     "render_host": "course_supporter", "render_topology": "course_supporter"}))


@pytest.fixture(scope="session")
def rendered() -> dict[str, dict[str, str]]:
    """scenario -> template name -> rendered text."""
    started = {name: templates.start(*args) for name, args in SCENARIOS.items()}
    cluster = templates.start(*CLUSTER_SCENARIO)
    results = {}
    for name, run in started.items():
        status, output, files = templates.finish(run)
        assert status == 0, f"{name}:\n{output[-4000:]}"
        results[name] = files
    status, output, hosts = templates.finish_hosts(cluster)
    assert status == 0, f"cluster:\n{output[-4000:]}"
    results.update({f"cluster_{host}": files for host, files in hosts.items()})
    return results
