"""The shape of the code: no import cycles, each package importing only what it may, private Ray
APIs in one module, and the driver loading no pandas until it analyses."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pruning_core", "sweeps", "analysis", "benchmarks")


def _module_name(file: Path) -> str:
    parts = list(file.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(file: Path) -> set[str]:
    """Every module ``file`` imports anywhere (top level, in functions, under TYPE_CHECKING), absolute."""
    name = _module_name(file)
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import x` names a module
    return found


def import_graph() -> dict[str, set[str]]:
    files = [f for p in PACKAGES for f in (ROOT / p).rglob("*.py")]
    modules = {_module_name(f): f for f in files}
    return {name: {m for m in _imports(file) if m in modules and m != name} for name, file in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40 and "sweeps.plan" in graph
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package, forbidden", [
    ("pruning_core", ("ray", "pandas", "sweeps", "analysis")),
    ("analysis", ("torch", "ray", "sweeps", "pruning_core")),
])
def test_packages_import_only_what_they_may(package, forbidden):
    for file in (ROOT / package).rglob("*.py"):
        bad = sorted(m for m in _imports(file) if m.split(".")[0] in forbidden)
        assert not bad, f"{file.relative_to(ROOT)} imports {bad}"


def test_private_ray_apis_only_in_ray_private():
    for file in (ROOT / "sweeps").rglob("*.py"):
        if file.name == "ray_private.py":
            continue
        text = file.read_text()
        for private in ("ray._private", "_local_tuner", "_tune_config", "._finished"):
            assert private not in text, f"{file.relative_to(ROOT)} uses {private}: go through sweeps.ray_private"


def test_the_driver_loads_no_pandas_before_it_analyses():
    """Validating a config and preparing a run load neither pandas nor matplotlib (Ray Tune itself
    imports pandas once the Tuner is built)."""
    code = ("import sys, sweeps.cli, sweeps.runner, sweeps.experiment, sweeps.preflight, sweeps.tuning, "
            "sweeps.ray_connection\n"
            "from sweeps.cli import main\n"
            "assert main(['validate', 'quickstart']) == 0\n"
            "loaded = [m for m in ('pandas', 'matplotlib') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

