"""System samplers: host (psutil), GPU (NVML) and energy (codecarbon, RAPL), driven by one SamplerThread.

Imports here are light: psutil is loaded with the host source, pynvml and codecarbon only when set up.
"""

from __future__ import annotations

from .base import MemorySink, SampleSink, Source
from .thread import SamplerThread

__all__ = ["MemorySink", "SampleSink", "SamplerThread", "Source"]
