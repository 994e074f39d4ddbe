"""Old import paths of modules that moved into the package's folders keep working: ``prov4ml_hpc.reader`` is
the module ``prov4ml_hpc.merge.reader`` (the same object, so patches and isinstance checks agree).

A finder placed first on ``sys.meta_path`` answers only for the names below (before the path finder, which
would otherwise load a second copy of ``prov4ml_hpc.report.plots`` from the aliased folder).  ``run.py`` and
``hook.py`` stay real files: ``python -m prov4ml_hpc.run`` must find code to run.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

PACKAGE = "prov4ml_hpc"

# old module (relative to the package) -> its home now; a folder maps its submodules too
MOVED = {
    "api": "rank.api",
    "recorder": "rank.recorder",
    "rankfile": "rank.rankfile",
    "artifacts": "rank.artifacts",
    "extensions": "rank.lifecycle",
    "signals": "rank.signals",
    "samplers": "rank.samplers",
    "environment": "job.environment",
    "runs": "job.location",
    "slurm": "job.slurm",
    "capture": "job.capture",
    "record": "merge.model",
    "reader": "merge.reader",
    "runfile": "merge.runfile",
    "gather": "merge.gather",
    "crate": "provenance.crate",
    "summary": "view.inspect",
    "report": "view.report",
    "compare": "view.compare",
    "importer": "compat.importer",
    "integrations.torch_dist": "job.agreement",
}


def new_name(fullname: str) -> str | None:
    """The module that an old name ``prov4ml_hpc.X[.Y]`` now refers to, or None."""
    if not fullname.startswith(PACKAGE + "."):
        return None
    rest = fullname[len(PACKAGE) + 1 :]
    if rest in MOVED:
        return f"{PACKAGE}.{MOVED[rest]}"
    head, _, tail = rest.partition(".")
    if head in MOVED and tail:
        return f"{PACKAGE}.{MOVED[head]}.{tail}"
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec) -> ModuleType:  # noqa: ANN001 - importlib's protocol
        module = importlib.import_module(self.target)
        self.own_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # already executed under its new name; importlib has just set __spec__ to the alias's spec: give the
        # module its own back, or its relative imports would resolve against the old package
        module.__spec__ = self.own_spec


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201 - importlib's protocol
        new = new_name(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder first on sys.meta_path (once)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
