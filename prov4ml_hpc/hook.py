"""``python -m prov4ml_hpc.hook ...`` and ``from prov4ml_hpc.hook import activate`` (the documented hook entry
points, used by the .pth file and sitecustomize): the hook is :mod:`prov4ml_hpc.rank.hook`."""

import sys

from .rank import hook as _hook

if __name__ == "__main__":
    raise SystemExit(_hook.main())
sys.modules[__name__] = _hook  # `import prov4ml_hpc.hook` gives the hook module itself
