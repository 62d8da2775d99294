"""Source checks of the security review: SQL is only ever parameterised, and key
material is never compared with ``==`` (timing would leak how much of it matched).

They read the app's source with ``ast``, so a new query built from request data
or a new key comparison fails here before it can ship.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"
SOURCES = sorted(APP.rglob("*.py"))
# asyncpg's methods that take SQL text as their first argument.
SQL_METHODS = {"execute", "executemany", "fetch", "fetchrow", "fetchval", "prepare", "cursor", "copy_from_query"}
# Names of values that hold key material (the raw key, its hash, a provider key).
KEY_WORDS = ("key_hash", "digest", "api_key", "presented", "secret")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _module_constants(tree: ast.Module) -> set[str]:
    """Module-level names bound once to SQL text written in the source (UPPER_CASE by convention)."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and _fixed_text(node.value):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name) and t.id.lstrip("_").isupper()}
    return names


def _fixed_text(value: ast.expr) -> bool:
    """Text written in the source, or a table of such texts."""
    if isinstance(value, ast.Dict):
        return all(isinstance(v, ast.Constant) for v in value.values)
    return isinstance(value, (ast.Constant, ast.JoinedStr))


def _fixed(value: ast.expr, constants: set[str]) -> bool:
    """A module constant, or an entry of a constant table (an allow-list lookup)."""
    if isinstance(value, ast.Subscript):
        value = value.value
    return isinstance(value, ast.Name) and value.id in constants


def _sql_problem(arg: ast.expr, constants: set[str]) -> str | None:
    """Why this SQL argument is not a fixed text (None when it is)."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return None
    if isinstance(arg, ast.Name) and arg.id in constants:
        return None
    if isinstance(arg, ast.Attribute) and arg.attr.lstrip("_").isupper():
        return None  # a constant of another module, e.g. keycache.LOOKUP_SQL
    if isinstance(arg, ast.JoinedStr):
        for part in arg.values:
            if isinstance(part, ast.FormattedValue) and not _fixed(part.value, constants):
                return f"an f-string interpolating {ast.unparse(part.value)}"
        return None
    return f"built at run time: {ast.unparse(arg)}"


def _sql_calls():
    for path in SOURCES:
        tree = _tree(path)
        constants = _module_constants(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in SQL_METHODS and node.args
                    and not (node.func.attr == "prepare" and "conn" not in ast.unparse(node.func.value))):
                yield path, node, _sql_problem(node.args[0], constants)


def test_the_checks_see_the_app_s_queries():
    calls = list(_sql_calls())
    assert len(calls) >= 40, "the source scan found too few SQL calls to mean anything"
    assert any("LEASE_SQL" in ast.unparse(node.args[0]) for _, node, _ in calls)


def test_sql_is_only_parameterised():
    """Values travel as $n parameters; the SQL text is fixed in the source (f-strings may
    only splice in other fixed texts, such as a column list)."""
    problems = [f"{path.relative_to(APP.parent)}:{node.lineno}: {problem}"
                for path, node, problem in _sql_calls() if problem]
    assert problems == []


@pytest.mark.parametrize("snippet, ok", [
    ('conn.fetch("SELECT 1 WHERE id = $1", x)', True),
    ('conn.fetch(f"SELECT {COLUMNS} FROM t WHERE id = $1", x)', True),
    ('conn.fetch(f"SELECT {GROUPS[by]} FROM t")', True),  # a lookup in a table of fixed texts
    ('conn.fetch(f"SELECT {by} FROM t")', False),
    ('conn.fetch(f"SELECT * FROM t WHERE name = \'{name}\'")', False),
    ('conn.fetch("SELECT * FROM t WHERE name = \'%s\'" % name)', False),
    ('conn.fetch("SELECT * FROM t WHERE name = {}".format(name))', False),
    ('conn.execute(query)', False),
])
def test_the_sql_check_tells_fixed_text_from_built_text(snippet, ok):
    call = ast.parse(snippet).body[0].value
    assert (_sql_problem(call.args[0], {"COLUMNS", "GROUPS"}) is None) is ok


def _names_in(node: ast.expr) -> list[str]:
    return [n.id if isinstance(n, ast.Name) else n.attr
            for n in ast.walk(node) if isinstance(n, (ast.Name, ast.Attribute))]


def test_key_material_is_never_compared_with_equality():
    """``hmac.compare_digest`` only: an ``==`` on a key or its hash stops at the first
    differing byte, and the time that takes tells an attacker how much matched."""
    found = []
    for path in SOURCES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                operands = [node.left, *node.comparators]
                if any(any(word in name.lower() for word in KEY_WORDS)
                       for operand in operands for name in _names_in(operand)
                       if not isinstance(operand, ast.Constant)):
                    found.append(f"{path.relative_to(APP.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_the_presented_key_is_checked_with_compare_digest():
    auth = _tree(APP / "auth.py")
    calls = [ast.unparse(node.func) for node in ast.walk(auth) if isinstance(node, ast.Call)]
    assert "hmac.compare_digest" in calls
    assert "hash_key" in calls  # the raw key is hashed before anything else sees it


INJECTIONS = ["'; DROP TABLE courses; --", "\" OR 1=1 --", "$1", "\\x00\\'", "Robert'); DELETE FROM tenants;--"]


async def test_sql_metacharacters_are_stored_as_text(client, auth, db):
    """The same from the outside: hostile titles round-trip verbatim and touch nothing else."""
    tables_before = await db.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    tenants_before = await db.fetchval("SELECT count(*) FROM tenants")
    for text in INJECTIONS:
        created = await client.post("/api/v1/courses", json={"title": text, "description": text}, headers=auth)
        assert created.status == 201, await created.text()
        course = await (await client.get(f"/api/v1/courses/{(await created.json())['id']}", headers=auth)).json()
        assert (course["title"], course["description"]) == (text, text)
    assert await db.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == tables_before
    assert await db.fetchval("SELECT count(*) FROM tenants") == tenants_before
