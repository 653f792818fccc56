"""One image compressed and decompressed with given encode and decode options, timed, with peak memory: the
measurement behind benchmarks/paper_scale.py (the release's way against the fast mode) and benchmarks/gpu_check.py.

The options are the model's (OneDC.encode_options / decode_options); they change speed and rounding only, never the
file format or its entropy path, so a file written in one mode decodes in any other (its symbols CRC checks that).
"""
from __future__ import annotations

import math
import statistics
import time
from contextlib import contextmanager

import numpy as np
import torch

from ..models.onedc import DecodeOptions, EncodeOptions
from .metrics import psnr
from .timing import PeakMemory, _synchronizer


@contextmanager
def options(model, encoding: EncodeOptions, decoding: DecodeOptions):
    """The model with these options for the duration (its own restored after)."""
    saved = model.encode_options, model.decode_options
    model.encode_options, model.decode_options = encoding, decoding
    try:
        yield model
    finally:
        model.encode_options, model.decode_options = saved


def timed(fn, device: torch.device) -> tuple[object, dict]:
    """(fn(), {"s", "cpu_s", "peak_gb", "start_gb"}): wall clock with the device synchronised, the process's CPU
    seconds (all threads; blind to other processes' load on a shared machine, where wall clock is not), and
    memory as PeakMemory measures it (CPU: the process's RSS, weights included; CUDA: torch's allocated bytes) at
    its peak and at the start (the model, on CUDA)."""
    sync = _synchronizer(device)
    with PeakMemory(device) as peak:
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        sync()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return result, {"s": seconds, "cpu_s": cpu_seconds, "peak_gb": peak.bytes / 2**30, "start_gb": peak.base / 2**30}


def round_trip(model, x: torch.Tensor, encoding: EncodeOptions, decoding: DecodeOptions) -> dict:
    """One compress and one decompress of x (on the model's device) with these options: each side's seconds and
    memory (`timed`), the file's bytes and the decoded image (a float32 CPU tensor [1, 3, H, W] in [0, 1])."""
    device = next(model.parameters()).device
    with options(model, encoding, decoding):
        compressed, encode = timed(lambda: model.compress(x.to(device)), device)
        data = compressed.to_bytes()
        image, decode = timed(lambda: model.decompress(data), device)
    return {"encode": encode, "decode": decode, "file": data, "image": image.float().cpu()}


def summary(runs: list[dict]) -> dict:
    """The JSON record of repeated round trips: median seconds (wall, CPU), highest peak of each side and of both, the
    memory at the start, the first file's bytes."""
    out = {f"{side}_{unit}": statistics.median(r[side][unit] for r in runs)
           for side in ("encode", "decode") for unit in ("s", "cpu_s")}
    for side in ("encode", "decode"):
        out[f"{side}_peak_gb"] = max(r[side]["peak_gb"] for r in runs)
    out["peak_gb"] = max(out["encode_peak_gb"], out["decode_peak_gb"])
    out["start_gb"] = min(r["encode"]["start_gb"] for r in runs)
    out["bytes"] = len(runs[0]["file"])
    out["runs"] = len(runs)
    return out


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """"768x512,2048x1408" -> [(768, 512), (2048, 1408)]: width x height, as the paper and the CLI write sizes."""
    sizes = []
    for item in text.split(","):
        try:
            width, height = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            raise ValueError(f"size {item!r} is not WIDTHxHEIGHT (e.g. 768x512)") from None
        if width <= 0 or height <= 0:
            raise ValueError(f"size {item!r}: width and height must be positive")
        sizes.append((width, height))
    return sizes


def image_psnr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """PSNR (dB) of two images in [0, 1] at 8 bits, as the evaluation scores them; None when identical (JSON has
    no infinity)."""
    value = psnr(a, b)
    return None if math.isinf(value) else value


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.abs(a.double().numpy() - b.double().numpy()).max())
