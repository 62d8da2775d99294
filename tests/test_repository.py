"""The repository explains itself: it refers to nothing outside it, its README stays short,
its docs say what is true now (no history), their links resolve, and every role has a README."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

ROOT = Path(REPO_ROOT)
TRACKED = [ROOT / name for name in subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                                    check=True, text=True).stdout.split("\0") if name]
MARKDOWN = [path for path in TRACKED if path.suffix == ".md" and path.exists()]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 10 * 1024

# The first draft of the interface, and the places beside this checkout that a clone lacks.
OUTSIDE = re.compile(r"CONTRACT\.md|CONTRACT section|\.\./shared|\.\./\.library|/work/")


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except (UnicodeDecodeError, FileNotFoundError):
        return ""


def test_no_tracked_file_refers_to_anything_outside_the_repository():
    offenders = [f"{path.relative_to(ROOT)}: {match.group(0)}" for path in TRACKED
                 for match in [OUTSIDE.search(_text(path))] if match and path.name != "test_repository.py"]
    assert offenders == []


def test_the_readme_is_short():
    assert (ROOT / "README.md").stat().st_size <= README_LIMIT


def _prose(markdown: str) -> str:
    """The text outside code blocks and inline code."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M), re.M)
    return {_slug(h) for h in headings}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_docs_say_what_is_true_now_not_its_history(path):
    prose = _prose(path.read_text())
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b(?!T\d)", prose), "dated history belongs to git"
    assert not re.findall(r"\b[Ii]ssues? #?\d+|(?<![\w/&(])#\d{1,4}\b", prose), "issue numbers belong to git"
    assert not re.findall(r"\bcommit [0-9a-f]{7,40}\b|`(?=[0-9]*[a-f])[0-9a-f]{7,12}`", path.read_text()), "so do commits"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_links_resolve_inside_the_repository(path):
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose_links(path.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{target} in {path.relative_to(ROOT)}"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"#{anchor} in {path.relative_to(ROOT)}"


def _prose_links(markdown: str) -> str:
    return re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)


def test_every_procedure_of_the_runbook_has_its_heading_and_a_check():
    procedures = re.split(r"^## ", (ROOT / "docs" / "operations.md").read_text(), flags=re.M)[1:]
    assert len(procedures) >= 12
    for procedure in procedures:
        assert "**Check that it worked:**" in procedure, procedure.splitlines()[0]


def test_every_alarm_has_a_heading_in_the_runbook():
    alarms = re.findall(r"^\s*(?:alarm|template): (\w+)$",
                        (ROOT / "roles" / "netdata" / "templates" / "health.conf.j2").read_text(), re.M)
    headings = re.findall(r"^### `(\w+)`$", (ROOT / "docs" / "operations.md").read_text(), re.M)
    assert alarms and set(alarms) <= set(headings)


# Defaults of error classes that every raise overrides with a code of its own (app/auth.py, app/db.py),
# and statuses of _HTTP_CODES that no aiohttp exception of this app carries.
NEVER_ANSWERED = {"unauthorized", "forbidden", "service_unavailable", "error"}


def test_every_error_code_the_app_or_nginx_answers_is_in_the_api_contract():
    app_code = "\n".join(path.read_text() for path in (ROOT / "app").rglob("*.py"))
    codes = set(re.findall(r'\bcode ?= ?"([a-z_]+)"', app_code))
    codes |= set(re.findall(r'status, code = \d{3}, "([a-z_]+)"', app_code))
    codes |= set(re.findall(r'error_response\(\d{3}, "([a-z_]+)"', app_code))
    codes |= set(re.findall(r'^\s+\d{3}: "([a-z_]+)",$', app_code, re.M))  # aiohttp's own exceptions
    codes |= set(re.findall(r'json_error\(\d{3}, "([a-z_]+)"', (ROOT / "nginx" / "course-supporter.conf.j2").read_text()))
    table = set(re.findall(r"^\| \d{3} \| `([a-z_]+)` \|", (ROOT / "docs" / "api.md").read_text(), re.M))
    assert codes - NEVER_ANSWERED - table == set()
    assert table - codes == set()  # the table names no code that nothing answers


def _test_names() -> set[str]:
    """The test functions and modules there are."""
    names = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        names.add(path.stem)
        names.update(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.M))
    return names


@pytest.mark.parametrize("path", [*DOCS, *sorted((ROOT / "roles").glob("*/README.md"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_tests_docs_name_exist(path):
    named = set(re.findall(r"`(?:[\w/.]*/)?(test_\w+?)(?:\.py)?(?:::\w+)?`", path.read_text()))
    assert named - _test_names() == set()


@pytest.mark.parametrize("role", sorted(p.name for p in (ROOT / "roles").iterdir() if p.is_dir()))
def test_every_role_has_a_readme(role):
    readme = ROOT / "roles" / role / "README.md"
    assert readme.exists(), f"roles/{role} has no README.md"
    text = readme.read_text()
    for section in ("Requirements", "Role Variables", "Example Playbook"):
        assert re.search(rf"^#+ {section}", text, re.M), f"{role}: {section}"
