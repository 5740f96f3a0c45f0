"""The package's layers, read off the code itself: what the method imports, that imports run one
way, that each module stays readable, and that every runtime import is a declared dependency."""
import ast
import importlib.metadata
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ncawss
import ncawss.data
import ncawss.method

PACKAGE = Path(ncawss.__file__).parent
ROOT = PACKAGE.parent.parent
PURE_LAYERS = (ncawss.data, ncawss.method)  # must import neither Ray nor MLflow
MAX_LINES = 300


def modules_of(package) -> list[str]:
    return [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]


def package_modules() -> dict[str, Path]:
    """Every module of ncawss by dotted name, packages by their __init__.py."""
    found = {"ncawss": PACKAGE / "__init__.py"}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The ncawss modules `name` imports anywhere in its file (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from pkg import name` imports pkg, or pkg.name where that is a module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_method_and_data_layers_import_neither_ray_nor_mlflow():
    modules = ["ncawss"] + [m for layer in PURE_LAYERS for m in modules_of(layer)]
    assert "ncawss.method.train" in modules and "ncawss.data.parquet" in modules  # the walk finds them
    code = ("import sys, importlib\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted({k.split('.')[0] for k in sys.modules} & {'ray', 'mlflow'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "ncawss.method.scoring.evaluation" in graph["ncawss.method.train"]  # the graph sees imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_lower_layers_never_import_higher_ones():
    order = ["ncawss.data", "ncawss.method", "ncawss.tracking", "ncawss.sweep"]

    def layer(module: str) -> int | None:
        return next((i for i, prefix in enumerate(order) if module == prefix or module.startswith(prefix + ".")),
                    None)

    upward = [(a, b) for a, targets in import_graph().items() for b in targets
              if layer(a) is not None and layer(b) is not None and layer(b) > layer(a)]
    assert upward == []


# The method layer's rooms, each importing only rooms before it (method/__init__.py draws them).
METHOD_ROOMS = ["config", "baselines", "images", "nca", "readout", "training", "scoring", "prepared", "train",
                "inference"]


def test_the_method_rooms_import_only_rooms_before_them():
    def room(module: str) -> int | None:
        parts = module.split(".")
        return METHOD_ROOMS.index(parts[2]) if parts[:2] == ["ncawss", "method"] and len(parts) > 2 else None

    graph = import_graph()
    rooms = {room(m) for m in graph} - {None}
    assert rooms == set(range(len(METHOD_ROOMS)))  # every room exists and no module lies outside them
    backward = [(a, b) for a, targets in graph.items() for b in targets
                if room(a) is not None and room(b) is not None and room(b) > room(a)]
    assert backward == []
    assert "ncawss.method.training.cnn" in graph["ncawss.method.scoring.folds"]  # an import the walk must see


@pytest.mark.parametrize("name", sorted(package_modules()))
def test_every_module_is_short_enough_to_read(name):
    lines = len(package_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines"


def runtime_imports() -> set[str]:
    """Top-level names of the third-party modules the package and the jobs import."""
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "jobs").glob("*.py")]
    names = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "ncawss"}


def test_every_runtime_import_is_a_declared_dependency():
    declared = {re.split(r"[\s<>=!\[;]", r, maxsplit=1)[0].lower().replace("_", "-")
                for r in importlib.metadata.requires("ncawss") if "extra ==" not in r}
    providers = importlib.metadata.packages_distributions()
    imports = runtime_imports()
    assert {"torch", "ray", "mlflow", "psutil", "matplotlib"} <= imports
    missing = {name: providers.get(name) for name in imports
               if not {d.lower().replace("_", "-") for d in providers.get(name, [name])} & declared}
    assert missing == {}


def test_platform_folder_does_not_shadow_the_standard_platform_module():
    code = "import ncawss, platform, sysconfig; print(platform.__file__.startswith(sysconfig.get_paths()['stdlib']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
