"""Values that nginx, systemd, Netdata and the app must agree on, read from the templates as
the roles render them and compared with the app's own constants: a drift fails here, in
seconds, not only in the VPS suite."""

from __future__ import annotations

import json
import math
import re

from aiohttp import web

from app import middlewares, tenants
from app.config import MAX_UPLOAD_QUEUE_WAIT_S, Settings, parse_env_file
from app.routes import setup_openapi, setup_routes
from app.serve import ACCEPT_GRACE_S, GRACEFUL_TIMEOUT_S, KEEPALIVE_S

MIB = 1 << 20


def _map(conf: str, variable: str) -> dict[str, str]:
    """An nginx ``map $x $variable { ... }`` block as {pattern: value}."""
    body = re.search(r"map \$\w+ \$" + variable + r" \{\n(.*?)\n\}", conf, re.S).group(1)
    entries = (line.strip().rstrip(";").rsplit(None, 1) for line in body.splitlines() if line.strip())
    return {pattern.strip('"'): value.strip('"') for pattern, value in entries}


def _upstream(conf: str) -> str:
    """The body of the app upstream block."""
    return re.search(r"upstream course_supporter_app \{\n(.*?)\n\}", conf, re.S).group(1)


def _upstream_servers(conf: str) -> list[str]:
    """The addresses of the app upstream's servers."""
    return re.findall(r"^\s*server (\S+)[ ;]", _upstream(conf), re.M)


def _nginx_regex(conf: str, variable: str, value: str) -> str:
    """The regex of the map entry that gives ``value`` (``~`` and anchors taken off)."""
    (pattern,) = [p for p, v in _map(conf, variable).items() if v == value and p.startswith("~")]
    return pattern.lstrip("~*").removeprefix("^").removesuffix("$")


def _directive(conf: str, name: str) -> str:
    (value,) = set(re.findall(rf"^\s*{name} ([^;]+);", conf, re.M))
    return value


def _app_methods() -> set[str]:
    """What the app's routes answer, and OPTIONS (CORS preflights)."""
    app = web.Application()
    setup_routes(app)
    setup_openapi(app)
    return {route.method for route in app.router.routes() if route.method != "*"} | {"OPTIONS"}


def test_nginx_tells_a_key_from_a_non_key_as_the_app_does(rendered):
    conf = rendered["defaults"]["course-supporter.conf"]
    assert _nginx_regex(conf, "course_supporter_unkeyed_client", "") == tenants.KEY_PATTERN.pattern


def test_nginx_keeps_the_request_ids_the_app_keeps(rendered):
    conf = rendered["defaults"]["course-supporter.conf"]
    assert _nginx_regex(conf, "course_supporter_request_id", "$http_x_request_id") == \
        middlewares.REQUEST_ID_PATTERN.pattern


def test_nginx_passes_the_content_codings_the_app_decodes(rendered):
    conf = rendered["defaults"]["course-supporter.conf"]
    passed = _nginx_regex(conf, "course_supporter_unsupported_coding", "")
    assert set(passed.strip("()").split("|")) == set(middlewares.CONTENT_CODINGS)


def test_nginx_knows_the_methods_the_app_answers(rendered):
    conf = rendered["defaults"]["course-supporter.conf"]
    known = _nginx_regex(conf, "course_supporter_unknown_method", "")
    assert set(known.strip("()").split("|")) == _app_methods()
    allow = re.search(r'add_header Allow "([^"]+)"', conf).group(1)
    assert set(allow.split(", ")) == _app_methods()


def test_nginx_body_limit_follows_the_apps_upload_limit(rendered):
    """The largest file the app takes, plus room for multipart framing, passes nginx; the role
    derives the limit from app_max_upload_bytes, so raising that raises both."""
    for scenario, max_upload in (("defaults", Settings.from_env({"DATABASE_URL": "postgresql://h/db",
                                                                  "S3_BUCKET": "b"}).max_upload_bytes),
                                 ("operator_choices", 2 * 2**30 + 1)):
        conf = rendered[scenario]["course-supporter.conf"]
        limit = _directive(conf, "client_max_body_size")
        assert limit == f"{math.ceil(max_upload / MIB) + 1}m", scenario
        env = parse_env_file(rendered[scenario]["app.env"])
        assert int(env["MAX_UPLOAD_BYTES"]) == max_upload
        assert f"({limit})" in conf  # nginx's own 413 names it


def test_nginx_waits_longer_than_an_upload_may_queue(rendered):
    conf = rendered["defaults"]["course-supporter.conf"]
    for name in ("client_body_timeout", "send_timeout", "proxy_send_timeout", "proxy_read_timeout"):
        assert int(_directive(conf, name).removesuffix("s")) > MAX_UPLOAD_QUEUE_WAIT_S, name


def test_nginx_netdata_and_the_socket_name_the_apps_address(rendered):
    for scenario in ("defaults", "production"):
        files = rendered[scenario]
        listen = re.search(r"^ListenStream=(\S+)$", files["course-supporter.socket"], re.M).group(1)
        assert f"--bind {listen} " in files["course-supporter.service"]
        assert _upstream_servers(files["course-supporter.conf"]) == [listen]
        assert f"url: http://{listen}/health" in files["netdata.course_supporter.conf"]
        netdata = re.search(r"bind to = (\S+)", files["netdata.netdata.conf"]).group(1)
        assert f"proxy_pass http://{netdata}/;" in files["course-supporter.conf"]


def test_systemd_gives_the_app_longer_to_stop_than_gunicorn_takes(rendered):
    service = rendered["defaults"]["course-supporter.service"]
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", service, re.M).group(1))
    assert stop > GRACEFUL_TIMEOUT_S


def test_nginx_balances_over_every_app_host_at_its_own_address(rendered):
    """A web host in front of two app hosts (tests/templates/cluster.yml) sends requests to
    both, each at the address and port its app listens on."""
    conf = rendered["cluster_web1"]["course-supporter.conf"]
    assert _upstream_servers(conf) == ["10.78.0.11:8000", "10.78.0.12:8001"]


def test_a_failing_app_host_is_left_out_and_no_post_is_sent_twice(rendered):
    """Passive health checks on every server; a request goes to the next host only after a
    connection error or timeout, and never when it is a POST or PATCH already sent (nginx
    retries those only with non_idempotent, which must not appear)."""
    conf = rendered["cluster_web1"]["course-supporter.conf"]
    servers = [line for line in _upstream(conf).splitlines() if line.strip().startswith("server ")]
    assert len(servers) == 2 and all("max_fails=2 fail_timeout=10s;" in line for line in servers)
    assert "proxy_next_upstream error timeout;" in conf
    assert "non_idempotent" not in conf


def test_nginx_lets_go_of_idle_app_connections_before_the_app_closes_them(rendered):
    """nginx keeps idle upstream connections for less time than the app keeps them, and than
    a shutting-down app keeps serving them: an idle connection is always closed by nginx
    first, so no request (a POST nginx could not retry) is sent on one the app is closing."""
    for scenario in ("defaults", "production", "cluster_web1"):
        body = _upstream(rendered[scenario]["course-supporter.conf"])
        idle = int(re.search(r"^\s*keepalive_timeout (\d+)s;", body, re.M).group(1))
        assert int(re.search(r"^\s*keepalive (\d+);", body, re.M).group(1)) > 0
        assert idle < ACCEPT_GRACE_S < KEEPALIVE_S, scenario


# --- the cluster's private network (tests/templates/cluster.yml) ------------------------------

def _admitted(nftables: str) -> dict[str, set[str]]:
    """port -> the source addresses the firewall admits to it (besides the ports open to all)."""
    admitted = {}
    for sources, port in re.findall(r"^\s*ip6? saddr \{ ([^}]*) \} tcp dport (\d+) accept$", nftables, re.M):
        admitted.setdefault(port, set()).update(a.strip() for a in sources.split(","))
    return admitted


def test_each_host_admits_only_its_peers_to_its_private_ports(rendered):
    """The app's port admits the web host only; PostgreSQL's port admits the app hosts only; the
    web host opens nothing to the private network. The single VPS opens no private port at all."""
    assert _admitted(rendered["cluster_app1"]["base.nftables.conf"]) == {"8000": {"10.78.0.10"}}
    assert _admitted(rendered["cluster_app2"]["base.nftables.conf"]) == {"8001": {"10.78.0.10"}}
    assert _admitted(rendered["cluster_db1"]["base.nftables.conf"]) == {"5432": {"10.78.0.11", "10.78.0.12"}}
    assert _admitted(rendered["cluster_web1"]["base.nftables.conf"]) == {}
    assert _admitted(rendered["defaults"]["base.nftables.conf"]) == {}


def test_app_hosts_listen_on_their_private_address_and_the_single_vps_on_loopback(rendered):
    assert "ListenStream=10.78.0.11:8000" in rendered["cluster_app1"]["course-supporter.socket"]
    assert "ListenStream=10.78.0.12:8001" in rendered["cluster_app2"]["course-supporter.socket"]
    assert "ListenStream=127.0.0.1:8000" in rendered["defaults"]["course-supporter.socket"]


def test_the_database_host_speaks_tls_on_its_private_address_to_the_app_hosts_only(rendered):
    """PostgreSQL listens on loopback and its private address with TLS on; pg_hba admits each app
    host to the app's databases as the app's role over TLS with scram-sha-256, nothing else from
    the network; the app hosts connect with verify-full against the db host's CA."""
    conf = rendered["cluster_db1"]["postgresql.course-supporter.conf"]
    assert "listen_addresses = 'localhost,10.78.0.13'" in conf and "\nssl = on\n" in conf
    hba = [line.split() for line in rendered["cluster_db1"]["postgresql.pg_hba.conf"].splitlines()
           if line.startswith(("host", "hostssl", "hostnossl"))]
    remote = [rule for rule in hba if not rule[3].startswith(("127.", "::1"))]
    assert remote == [["hostssl", "course_supporter,course_supporter_restore,course_supporter_drill",
                       "course_supporter", f"{address}/32", "scram-sha-256"]
                      for address in ("10.78.0.11", "10.78.0.12")]
    env = rendered["cluster_app1"]["app.env"]
    assert ("@10.78.0.13:5432/course_supporter?sslmode=verify-full"
            "&sslrootcert=/etc/course-supporter/postgresql-ca.pem\"") in env
    single = rendered["defaults"]["postgresql.course-supporter.conf"]
    assert "listen_addresses = 'localhost'" in single and "ssl = on" not in single


def test_netdata_watches_what_each_host_runs_and_backups_run_on_one_app_host(rendered):
    """The app on the app hosts, the backups on the first app host only, the public URL on the
    web host; the restore drill on an app host makes its scratch database with the app's login."""
    def watched(host: str) -> dict[str, str]:
        conf = rendered[f"cluster_{host}"]["netdata.course_supporter.conf"]
        return {key: re.search(rf"^  {key}: '([^']*)'$", conf, re.M).group(1)
                for key in ("unit", "backup_unit", "public_url")}
    assert watched("web1") == {"unit": "", "backup_unit": "", "public_url": "https://api.example.com/health"}
    assert watched("app1") == {"unit": "course-supporter.service", "backup_unit": "course-supporter-backup.service",
                               "public_url": ""}
    assert watched("app2")["unit"] == "course-supporter.service" and watched("app2")["backup_unit"] == ""
    assert watched("db1") == {"unit": "", "backup_unit": "", "public_url": ""}
    drill = rendered["cluster_app1"]["course-supporter-restore-drill.service"]
    assert "--create" in drill and "runuser -u postgres" not in drill
    assert "--create" not in rendered["defaults"]["course-supporter-restore-drill.service"]


def test_without_a_db_host_the_app_verifies_the_managed_database_with_the_providers_ca(rendered):
    """No db host (tests/templates/managed.yml): the app's URL is the operator's, untouched; the
    provider's CA is what the app host writes for its sslrootcert; nothing admits PostgreSQL, and
    the restore drill makes its scratch database with the app's login (no local superuser)."""
    solo = rendered["managed"]
    values = json.loads(solo["values.json"])
    assert values["course_supporter_database_address"] == ""
    assert values["app_database_ca_certificate"].startswith("-----BEGIN CERTIFICATE-----\n")
    assert values["app_database_ca_file"] == "/etc/course-supporter/postgresql-ca.pem"
    assert values["app_takes_backups"] is True
    assert ('DATABASE_URL="postgresql://course_supporter:app-password-0000@db.provider.example:25060/'
            'course_supporter?sslmode=verify-full&sslrootcert=/etc/course-supporter/postgresql-ca.pem"') in solo["app.env"]
    assert "ListenStream=127.0.0.1:8000" in solo["course-supporter.socket"]
    assert _admitted(solo["base.nftables.conf"]) == {}
    drill = solo["course-supporter-restore-drill.service"]
    assert "--create" in drill and "runuser -u postgres" not in drill


def test_a_db_host_in_the_inventory_gives_the_app_hosts_its_ca_and_keeps_its_own_loopback(rendered):
    """With a db host, the app hosts take its CA (made by the postgresql role) and the db host
    itself needs none; the single VPS reaches its database over loopback, without a CA."""
    for host in ("app1", "app2"):
        assert json.loads(rendered[f"cluster_{host}"]["values.json"])["course_supporter_database_address"] == "10.78.0.13"
    assert json.loads(rendered["cluster_db1"]["values.json"])["course_supporter_database_address"] == "127.0.0.1"
    single = json.loads(rendered["defaults"]["values.json"])
    assert single["course_supporter_database_address"] == "127.0.0.1"
    assert single["app_database_ca_certificate"] == "" and single["app_takes_backups"] is True
