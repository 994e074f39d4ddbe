"""The package logger `prov4ml_hpc`: lines prefixed ``[rank@host]``, level from PROV4ML_HPC_LOG_LEVEL (settings.LOG_LEVEL)."""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "prov4ml_hpc"

logger = logging.getLogger(LOGGER_NAME)


class _RankPrefix(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.prefix = ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank_prefix = self.prefix
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the call (redirections and test captures work)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


_prefix_filter = _RankPrefix()
_configured = False


def configure(rank: int | None = None, node: str | None = None) -> None:
    """Install the stderr handler once and set the ``[rank@host]`` prefix (called by start_run)."""
    global _configured
    if rank is not None:
        _prefix_filter.prefix = f"[{rank}@{node or '?'}] "
    if _configured:
        return
    _configured = True
    from . import settings

    logger.setLevel(logging.getLevelName(settings.get(settings.LOG_LEVEL).upper()))
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("prov4ml-hpc %(rank_prefix)s%(levelname)s: %(message)s"))
        handler.addFilter(_prefix_filter)
        logger.addHandler(handler)
        logger.propagate = False
