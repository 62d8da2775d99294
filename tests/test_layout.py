"""Where test code lives, checked on the source with ``ast`` (no servers):

- No module under tests/ imports from a test module (``test_*``) or from a conftest.py,
  absolutely (``tests.app.test_llm_features``, ``tests.conftest``) or relatively
  (``.test_admin_cli``, ``.conftest``): a helper that more than one module needs lives in
  tests/support/, and fixtures reach tests through pytest, never through an import.
- A conftest.py holds fixtures and pytest hooks (``pytest_*``); any other function or class
  it defines is private to it (a leading underscore). Shared helpers go to tests/support/.
- Courses are made in one place. Among the fixtures and helpers of tests/app (every
  function that is not a test, i.e. not named ``test*``), only the ``make_course`` fixture of
  tests/app/conftest.py makes a course; in tests/support/, only ``create_course`` of
  tests/support/courses.py does (for an app running as a real server). A function makes a
  course when it sends a POST to the courses collection: it calls a ``post`` method, or
  passes the string ``"POST"``, with an argument that ends in ``/api/v1/courses`` (a string,
  the last part of an f-string or of a ``+``, or a name bound to one in the module or the
  function). Test functions may POST there themselves: the endpoint is what many of them test.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
COURSES = "/api/v1/courses"
NOT_IMPORTABLE = re.compile(r"^(test_\w*|conftest)$")


def _sources(folder: Path | None = None) -> list[Path]:
    return sorted((folder or TESTS).rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _imported_modules(path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names of what ``node`` imports: the module, and each imported name
    under it (which may be a module itself: ``from tests.app import test_courses``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = list(path.relative_to(ROOT).parent.parts)
    base = package[:len(package) - node.level + 1] if node.level else []
    module = ".".join(base + (node.module.split(".") if node.module else []))
    return [module] + [f"{module}.{alias.name}" for alias in node.names]


def test_no_module_imports_a_test_module_or_a_conftest():
    found = []
    for path in _sources():
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = _imported_modules(path, node)
                if any(NOT_IMPORTABLE.match(part) for name in names for part in name.split(".")):
                    found.append(f"{_name(path)}:{node.lineno}: {ast.unparse(node)}")
    assert found == [], "import these from tests/support/ instead:\n" + "\n".join(found)


def _is_fixture(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if ast.unparse(target) in ("pytest.fixture", "pytest_asyncio.fixture", "fixture"):
            return True
    return False


def test_conftest_files_hold_fixtures_only():
    found = []
    for path in TESTS.rglob("conftest.py"):
        for node in _tree(path).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                allowed = _is_fixture(node) or node.name.startswith(("pytest_", "_"))
            elif isinstance(node, ast.ClassDef):
                allowed = node.name.startswith("_")
            else:
                continue
            if not allowed:
                found.append(f"{_name(path)}:{node.lineno}: {node.name}")
    assert found == [], "move these helpers to tests/support/:\n" + "\n".join(sorted(found))


def _ends_in_courses(node: ast.AST, names: set[str]) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value.endswith(COURSES)
    if isinstance(node, ast.JoinedStr):
        return bool(node.values) and _ends_in_courses(node.values[-1], names)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _ends_in_courses(node.right, names)
    return isinstance(node, ast.Name) and node.id in names


def _names_of_courses(body: list[ast.stmt] | ast.AST, names: set[str]) -> set[str]:
    """The names assigned a URL of the courses collection in ``body``."""
    nodes = ast.walk(body) if isinstance(body, ast.AST) else body
    found = set(names)
    for node in nodes:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None \
                and _ends_in_courses(node.value, found):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found |= {target.id for target in targets if isinstance(target, ast.Name)}
    return found


def _posts_a_course(function: ast.AST, module_names: set[str]) -> bool:
    names = _names_of_courses(function, module_names)
    for call in (node for node in ast.walk(function) if isinstance(node, ast.Call)):
        arguments = [*call.args, *(keyword.value for keyword in call.keywords)]
        posts = (isinstance(call.func, ast.Attribute) and call.func.attr == "post") or any(
            isinstance(argument, ast.Constant) and argument.value == "POST" for argument in arguments)
        if posts and any(_ends_in_courses(argument, names) for argument in arguments):
            return True
    return False


def course_makers(folder: Path) -> list[str]:
    """``path::function`` for every fixture or helper under ``folder`` that makes a course."""
    found = []
    for path in _sources(folder):
        module = _tree(path)
        module_names = _names_of_courses(module.body, set())
        functions = [node for node in module.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
        functions += [member for node in module.body if isinstance(node, ast.ClassDef) for member in node.body
                      if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef))]
        found += [f"{_name(path)}::{function.name}" for function in functions
                  if not function.name.startswith("test") and _posts_a_course(function, module_names)]
    return found


def test_one_fixture_makes_the_courses_of_the_app_tests():
    assert course_makers(TESTS / "app") == ["tests/app/conftest.py::make_course"]


def test_one_helper_makes_a_course_at_a_running_server():
    """Besides the load client, whose writes are the load it puts on a deploy or a failing host."""
    assert course_makers(TESTS / "support") == ["tests/support/courses.py::create_course",
                                                "tests/support/load.py::_run"]
