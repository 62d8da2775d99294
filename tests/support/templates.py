"""The appliance's templates rendered by Ansible on this machine, without a VPS
(tests/templates/render.yml: every role's defaults and vars, as a play has them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "tests" / "templates" / "render.yml"

# name -> template, for every template the roles render.
TEMPLATES = {
    "course-supporter.conf": ROOT / "nginx" / "course-supporter.conf.j2",
    **{path.name.removesuffix(".j2"): path for path in sorted((ROOT / "systemd").glob("*.j2"))},
    **{f"{path.parts[-3]}.{path.name.removesuffix('.j2')}": path
       for path in sorted((ROOT / "roles").glob("*/templates/*.j2"))},
}

# The values the roles' tasks use, rendered as "values.json" with the templates.
VALUES = {"name": "values.json", "src": str(ROOT / "tests" / "templates" / "values.json.j2")}

# What a site needs besides the role defaults (each role asserts these are set).
REQUIRED = {
    "app_database_url": "postgresql://course_supporter:app-password-0000@127.0.0.1:5432/course_supporter",
    "app_s3_bucket": "course-supporter-materials",
    "nginx_server_name": "api.example.com",
    "nginx_netdata_password": "dashboard-password-0000",
    "postgresql_app_password": "app-password-0000",
}
# Paths the roles take from the playbook's directory (playbooks/ in a real run).
PATHS = {"app_source_dir": str(ROOT), "nginx_site_template": str(TEMPLATES["course-supporter.conf"])}


def start(*ansible_args: str, tags: str = "render") -> subprocess.Popen:
    """Start rendering every template; ``finish`` waits for the result."""
    render = {"render_templates": [*({"name": n, "src": str(p)} for n, p in TEMPLATES.items()), VALUES], **PATHS}
    command = [str(Path(sys.executable).parent / "ansible-playbook"), str(PLAYBOOK), "--tags", tags,
               *ansible_args, "-e", json.dumps(render)]
    env = {**os.environ, "ANSIBLE_STDOUT_CALLBACK": "json", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
           "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str, dict[str, str]]:
    """The playbook's exit status, the first failure's message (or ""), and the rendered files by name
    (of the one host rendered)."""
    status, failure, by_host = finish_hosts(process, timeout)
    return status, failure, next(iter(by_host.values()), {})


def finish_hosts(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str, dict[str, dict[str, str]]]:
    """As ``finish``, with the rendered files of every host rendered: host -> name -> text."""
    output, errors = process.communicate(timeout=timeout)
    try:
        report = json.loads(output)
    except ValueError:
        return process.returncode, f"{output[-2000:]}\n{errors[-2000:]}", {}
    rendered, failures = {}, []
    for task in (task for play in report["plays"] for task in play["tasks"]):
        for host, result in task["hosts"].items():
            for item in result.get("results", [result]):
                if item.get("failed"):
                    failures.append(f"{task['task']['name']}: {item.get('msg')}")
                elif isinstance(item.get("item"), dict) and "src" in item["item"]:
                    rendered.setdefault(host, {})[item["item"]["name"]] = item["msg"]
    return process.returncode, "\n".join(failures) or errors[-2000:], rendered


def extra_vars(values: dict) -> tuple[str, str]:
    return "-e", json.dumps(values)
