"""The exception hierarchy: every error prov4ml-hpc raises on purpose derives from Prov4mlHpcError."""

from __future__ import annotations


class Prov4mlHpcError(Exception):
    """Base class of all errors raised by prov4ml-hpc on purpose."""


class NoActiveRunError(Prov4mlHpcError):
    """A logging call was made while no run is active in this process."""


class RunAlreadyActiveError(Prov4mlHpcError):
    """start_run was called while another run is active in this process."""


class InvalidNameError(Prov4mlHpcError, TypeError):
    """A metric, parameter or artifact name has the wrong type (names must be str)."""


class ConfigError(Prov4mlHpcError, ValueError):
    """An option or environment variable has a value that cannot be used."""


class RankFileError(Prov4mlHpcError):
    """A rank file cannot be read: missing, corrupt, or written by an unknown schema version."""


class MergeError(Prov4mlHpcError):
    """The merge of a run directory failed (or found problems under --strict)."""


class SlurmError(Prov4mlHpcError):
    """A SLURM value cannot be parsed (hostlist, array id, time)."""


class ExportError(Prov4mlHpcError):
    """An export format cannot be produced (usually a missing optional package or binary)."""
