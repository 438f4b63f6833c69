"""The shape of the code, held over ``training/``, ``indexing/`` and ``service/``: no function over 80 lines, no file
over 700 lines, and imports that go one way only: ``service -> training -> indexing`` (``service`` may import both;
``indexing`` imports no other package of ours; nothing imports ``service``). Imports are read with ``ast``, so the
ones inside functions (the heavy, lazy ones) count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "indexing", "service")
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 700
# What each package may import of ours (besides itself).
MAY_IMPORT = {"service": {"training", "indexing"}, "training": {"indexing"}, "indexing": set()}
# "path:function" or "path" -> why it may stay longer; an entry that no longer applies fails the test.
ALLOWED_LONG: dict[str, str] = {}


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _long_things() -> dict[str, int]:
    """Every function over MAX_FUNCTION_LINES and every file over MAX_FILE_LINES, with its length."""
    long = {}
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        if (n := len(text.splitlines())) > MAX_FILE_LINES:
            long[_rel(path)] = n
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                    long[f"{_rel(path)}:{node.name}"] = n
    return long


def _imported_packages(path: Path) -> set[str]:
    """The top-level names ``path`` imports (absolute imports; a relative one stays in its package)."""
    names = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_function_over_80_lines_and_no_file_over_700() -> None:
    """Split a longer function or file along a seam; if one must stay long, say why in ALLOWED_LONG."""
    long = _long_things()
    over = [f"{name} ({n} lines)" for name, n in long.items() if name not in ALLOWED_LONG]
    assert not over, over
    stale = sorted(set(ALLOWED_LONG) - set(long))
    assert not stale, f"no longer long, remove from ALLOWED_LONG: {stale}"


def test_imports_go_service_to_training_to_indexing() -> None:
    wrong = []
    for path in _sources():
        pkg = _rel(path).split("/")[0]
        for name in _imported_packages(path) & set(PACKAGES):
            if name != pkg and name not in MAY_IMPORT[pkg]:
                wrong.append(f"{_rel(path)} imports {name}")
    assert not wrong, wrong


@pytest.mark.parametrize(
    ("source", "package"),
    [
        ("import service.app\n", "service"),
        ("from training.config import TrainConfig\n", "training"),
        ("def f():\n    from service import settings\n", "service"),
    ],
)
def test_the_import_check_sees_lazy_and_from_imports(tmp_path: Path, source: str, package: str) -> None:
    """The checker itself: an upward import, at module level or inside a function, is found; a relative one is not
    another package."""
    path = tmp_path / "m.py"
    path.write_text(source + "from . import sibling\n")
    assert _imported_packages(path) == {package}
