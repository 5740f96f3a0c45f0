"""The public API is listed once: the package's import table, `__all__`, what type checkers see
and the README's list name the same things, and each name imports."""
import ast
import re
from pathlib import Path

import pytest

import ncawss

ROOT = Path(__file__).resolve().parent.parent


def type_checking_names() -> set[str]:
    """Names imported under `if TYPE_CHECKING:` in ncawss/__init__.py."""
    tree = ast.parse(Path(ncawss.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") ==
                 "TYPE_CHECKING")
    return {alias.name for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}


def readme_names() -> set[str]:
    """The backticked names of the README's 'Public API' paragraph (after its heading line)."""
    text = (ROOT / "README.md").read_text()
    paragraph = text[text.index("Public API (`ncawss.<name>`"):].split("\n\n")[0]
    return set(re.findall(r"`([A-Za-z_]+)`", paragraph.split(":\n", 1)[1]))


def test_the_public_api_is_the_same_list_everywhere():
    table = set(ncawss._MODULE_OF)
    assert len(ncawss.__all__) == len(table) and set(ncawss.__all__) == table
    assert type_checking_names() == table
    assert readme_names() == table


def test_every_public_name_imports_from_its_module():
    for name in ncawss.__all__:
        value = getattr(ncawss, name)
        assert value.__module__.startswith("ncawss.") and getattr(value, "__name__", name) == name


def test_an_unknown_name_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="'FoldsHooks'"):
        getattr(ncawss, "FoldsHooks")
