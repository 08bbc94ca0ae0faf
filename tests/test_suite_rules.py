"""Rules the test suite keeps, checked on its own source."""
from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _is_pytest_raises(func: ast.expr) -> bool:
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "raises"
        and isinstance(func.value, ast.Name)
        and func.value.id == "pytest"
    )


def raises_without_match(source: str, filename: str = "<test>") -> list[int]:
    """Line numbers of ``pytest.raises(...)`` calls in ``source`` that lack ``match=``."""
    lines = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Call) and _is_pytest_raises(node.func):
            if not any(k.arg == "match" for k in node.keywords):
                lines.append(node.lineno)
    return sorted(lines)


def test_the_rule_finds_a_raises_without_match():
    source = (
        "import pytest\n"
        "def test_a():\n"
        "    with pytest.raises(ValueError, match='bad'):\n"
        "        pass\n"
        "    with pytest.raises(\n"
        "        KeyError,\n"
        "    ):\n"
        "        pass\n"
        "    pytest.raises(OSError, open, 'x')\n"
    )
    assert raises_without_match(source) == [5, 9]


def test_every_pytest_raises_names_its_reason_with_match():
    files = sorted(TESTS.glob("*.py"))
    assert Path(__file__) in files
    offenders = [
        f"{path.name}:{line}"
        for path in files
        for line in raises_without_match(path.read_text(encoding="utf-8"), str(path))
    ]
    assert not offenders, (
        "pytest.raises without match= (name a distinctive part of the message): "
        + ", ".join(offenders)
    )
