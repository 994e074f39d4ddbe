"""``python -m prov4ml_hpc.run`` (the documented launcher command): the launcher is :mod:`prov4ml_hpc.rank.launcher`."""

import sys

from .rank import launcher as _launcher

if __name__ == "__main__":
    _launcher.main()
else:  # `import prov4ml_hpc.run` gives the launcher module itself
    sys.modules[__name__] = _launcher
