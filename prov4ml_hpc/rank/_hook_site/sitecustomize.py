"""prov4ml-hpc's import hook entry: on PYTHONPATH (set by the job templates), it runs at interpreter start.

It first runs the ``sitecustomize`` it shadows (the next one on sys.path, if any), then, only when
PROV4ML_HPC_HOOK is set, :func:`prov4ml_hpc.hook.activate`.  An interpreter that cannot import prov4ml_hpc
(another Python of the job) is left alone.
"""

import os
import sys


def _chain() -> None:
    import importlib.util
    from importlib.machinery import PathFinder

    here = os.path.dirname(os.path.realpath(__file__))
    rest = [p for p in sys.path if os.path.realpath(p or ".") != here]
    spec = PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


try:
    _chain()
except Exception as exc:  # noqa: BLE001 - as site.py does: report and go on
    sys.stderr.write(f"Error in the sitecustomize chained by prov4ml-hpc: {type(exc).__name__}: {exc}\n")

if os.environ.get("PROV4ML_HPC_HOOK", "").strip().lower() not in ("", "0", "false", "no", "off"):
    try:
        from prov4ml_hpc.rank.hook import activate
    except ImportError:
        pass
    else:
        activate()
