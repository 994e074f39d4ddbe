"""``python -m prov4ml_hpc.jobscripts [DIR]``: rewrite the rendered examples (default ./jobscripts)."""

import sys

from .render import write_examples

for written in write_examples(sys.argv[1] if len(sys.argv) > 1 else "jobscripts"):
    print(written)
