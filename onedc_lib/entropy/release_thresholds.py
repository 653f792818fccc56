"""Writes release_format.CPU_THRESHOLDS: the release's CPU scale -> index thresholds, searched under torch's log as
the release computes it, which holds only in a process started with MKL_CBWR=COMPATIBLE (MKL's vendor-neutral log;
release_format explains why). `python -m onedc_lib.entropy.release_thresholds` refuses otherwise."""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np

from ..bitstream import atomic_write
from .release_format import CPU_THRESHOLDS, search_thresholds


def write_cpu_thresholds() -> Path:
    if os.environ.get("MKL_CBWR") != "COMPATIBLE":
        raise SystemExit("run with MKL_CBWR=COMPATIBLE in the environment: torch's float32 log must be the release's")
    buffer = io.BytesIO()
    np.save(buffer, search_thresholds("cpu"))
    atomic_write(CPU_THRESHOLDS, buffer.getvalue())
    return CPU_THRESHOLDS


if __name__ == "__main__":
    print(f"wrote {write_cpu_thresholds()}", file=sys.stderr)
