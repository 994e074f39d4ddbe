"""Moved to prov4ml_hpc.compat.importer; this old name gives that same module."""

import sys

from .compat import importer

sys.modules[__name__] = importer
