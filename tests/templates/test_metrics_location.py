"""nginx keeps the app's metrics inside the host unless the operator enables a scraper, and
then only with its credentials."""

from __future__ import annotations

import re


def _metrics_location(conf: str) -> str:
    return re.search(r"location = /metrics \{\n(.*?)\n    \}", conf, re.S).group(1)


def test_by_default_nginx_answers_metrics_with_a_404(rendered):
    location = _metrics_location(rendered["defaults"]["course-supporter.conf"])
    assert "return 404" in location and '"code": "not_found"' in location
    assert "proxy_pass" not in location


def test_an_enabled_scraper_needs_its_credentials(rendered):
    location = _metrics_location(rendered["operator_choices"]["course-supporter.conf"])
    assert "auth_basic_user_file /etc/nginx/metrics.htpasswd;" in location
    assert "proxy_pass http://course_supporter_app;" in location
