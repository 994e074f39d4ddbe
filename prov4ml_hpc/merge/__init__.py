"""The merge: rank files -> run.h5 (every series, metadata, per-step aggregates) + provenance.json (one graph).

``merge_run(run_dir)`` is what the post-job ``prov4ml-hpc merge`` command and the in-job gather call; see
docs/merge.md.  Reading is tolerant (partial, missing and corrupt ranks are recorded, the others merged),
memory is bounded by blocks of rows, outputs appear atomically, and the same inputs give the same outputs.
"""

from __future__ import annotations

from ..errors import MergeError
from .core import BLOCK_ROWS, MergeResult, merge_run

__all__ = ["BLOCK_ROWS", "MergeError", "MergeResult", "merge_run"]
