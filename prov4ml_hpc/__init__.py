"""prov4ml-hpc: provenance and metrics for ML training jobs on SLURM clusters with MPI.

Every rank logs into its own crash-safe HDF5 buffer at about the cost of a list append; at the end of the job
the rank files become one merged run.h5 and ONE W3C PROV graph.  Importing this package is cheap: numpy, h5py,
MPI, NVML and codecarbon are imported only by the functions that use them.
"""

from . import _moved
from ._version import __version__
from .errors import (
    ConfigError,
    InvalidNameError,
    MergeError,
    NoActiveRunError,
    Prov4mlHpcError,
    RankFileError,
    RunAlreadyActiveError,
)
from .rank.api import (
    TESTING,
    TRAINING,
    VALIDATION,
    Run,
    active_run,
    end_run,
    log_artifact,
    log_dataset,
    log_event,
    log_metric,
    log_metrics,
    log_model,
    log_param,
    log_params,
    log_system_metrics,
    start_run,
)

__all__ = [
    "TESTING",
    "TRAINING",
    "VALIDATION",
    "ConfigError",
    "InvalidNameError",
    "MergeError",
    "NoActiveRunError",
    "Prov4mlHpcError",
    "RankFileError",
    "Run",
    "RunAlreadyActiveError",
    "__version__",
    "active_run",
    "end_run",
    "log_artifact",
    "log_dataset",
    "log_event",
    "log_metric",
    "log_metrics",
    "log_model",
    "log_param",
    "log_params",
    "log_system_metrics",
    "read_rank_file",
    "start_run",
]


def read_rank_file(path, **kwargs):  # noqa: ANN001, ANN201 - see merge.reader.read_rank_file
    """Read one rank buffer file; see :func:`prov4ml_hpc.merge.reader.read_rank_file`."""
    from .merge.reader import read_rank_file as _read

    return _read(path, **kwargs)


_moved.install()  # old module paths (prov4ml_hpc.reader, ...) still import: see _moved.py
