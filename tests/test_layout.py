"""The package layout: folders in data-flow order, imports pointing one way, no cycles, old paths still import."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import prov4ml_hpc
from prov4ml_hpc import _moved

PKG = Path(prov4ml_hpc.__file__).resolve().parent

# the data flow, upstream first: a module may import only from its own layer or a lower one
LAYERS = {
    "base": ("_version", "_moved", "errors", "schema", "settings", "log", "h5"),
    "job": ("job", "jobscripts"),
    "rank": ("rank", "run", "hook"),
    "merge": ("merge",),
    "provenance": ("provenance",),
    "view": ("view",),
    "adapters": ("compat", "integrations"),
    "top": ("demo", "cli", "__main__", "__init__"),
}
ORDER = list(LAYERS)
# The only imports against the flow, each lazy (inside a function) and for a reason:
ALLOWED_UPWARD = {
    # the merge commits run.h5 and provenance.json together: it builds and writes the graph
    ("prov4ml_hpc.merge.core", "prov4ml_hpc.provenance.export"),
    ("prov4ml_hpc.merge.core", "prov4ml_hpc.provenance.graph"),
    # a rank's end_run runs the in-job end of job (registered at start_run only under MPI)
    ("prov4ml_hpc.rank.lifecycle", "prov4ml_hpc.merge.gather"),
}


def _layer(module: str) -> int:
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    for i, name in enumerate(ORDER):
        if head in LAYERS[name]:
            return i
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every prov4ml_hpc module this one imports (module level and inside functions)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rsplit(".", 1)[0]
    mods = _modules()
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [f"{target}.{a.name}" for a in node.names] + [target]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            while t and t not in mods and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in mods and t != name and t != "prov4ml_hpc":
                out.add(t)
    return out


def test_imports_point_one_way():
    upward = set()
    for name, path in _modules().items():
        for target in _imports(name, path):
            if _layer(target) > _layer(name):
                upward.add((name, target))
    assert upward == ALLOWED_UPWARD, sorted(upward ^ ALLOWED_UPWARD)


def test_no_import_cycles():
    graph = {name: _imports(name, path) for name, path in _modules().items()}
    graph = {
        n: {t for t in ts if not (n.startswith(t + ".") or t.startswith(n + "."))} for n, ts in graph.items()
    }
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, cycles


@pytest.mark.parametrize(("old", "new"), sorted(_moved.MOVED.items()))
def test_old_module_paths_import_the_same_module(old, new):
    assert importlib.import_module(f"prov4ml_hpc.{old}") is importlib.import_module(f"prov4ml_hpc.{new}")


def test_documented_entry_points():
    import prov4ml_hpc.report.plots

    import prov4ml_hpc.hook
    import prov4ml_hpc.rank.hook
    import prov4ml_hpc.rank.launcher
    import prov4ml_hpc.run
    import prov4ml_hpc.view.report.plots

    assert prov4ml_hpc.run is prov4ml_hpc.rank.launcher and prov4ml_hpc.hook is prov4ml_hpc.rank.hook
    assert prov4ml_hpc.report.plots is prov4ml_hpc.view.report.plots  # never a second copy of a submodule
    from prov4ml_hpc.reader import read_rank_file

    from prov4ml_hpc.hook import activate  # what the .pth line and sitecustomize import

    assert activate is prov4ml_hpc.rank.hook.activate
    assert read_rank_file is importlib.import_module("prov4ml_hpc.merge.reader").read_rank_file


def test_every_module_says_what_it_is_for():
    missing = [
        n
        for n, p in _modules().items()
        if not ast.get_docstring(ast.parse(p.read_text())) and p.stat().st_size > 0
    ]
    assert not missing, missing


def test_a_module_imported_by_its_old_name_keeps_its_own_spec():
    import subprocess
    import sys

    code = (
        "import warnings; warnings.simplefilter('error'); import prov4ml_hpc.reader as r; "
        "assert r.__spec__.name == 'prov4ml_hpc.merge.reader', r.__spec__; from prov4ml_hpc.merge import reader; "
        "import tempfile; f = tempfile.NamedTemporaryFile(suffix='.h5'); f.write(b'not hdf5'); f.flush()\n"
        "try:\n    r.read_rank_file(f.name, retries=0)\nexcept r.RankFileError as e:\n    assert 'HDF5' in str(e), e"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
