"""The main job: compress and decompress the sample photographs with a model, write the files, the
reconstructions and a results table (bpp from the real files, PSNR; more metrics arrive with evaluation)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .bitstream import atomic_write
from .data.samples import SAMPLES, sample_image
from .image_io import save_image


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR on 8-bit values, as the evaluation protocol."""
    a8, b8 = (a.clamp(0, 1) * 255).round(), (b.clamp(0, 1) * 255).round()
    mse = torch.mean((a8 - b8) ** 2).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(255.0**2 / mse)).item()


def run_demo(model, out_dir: str | Path, names=tuple(SAMPLES)) -> list[dict]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        image = sample_image(name)
        save_image(image, out_dir / f"{name}.png")
        start = time.perf_counter()
        compressed = model.compress_file(out_dir / f"{name}.png", out_dir / f"{name}.odc")
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        reconstruction = model.decompress_file(out_dir / f"{name}.odc", out_dir / f"{name}_decoded.png")[0]
        decode_s = time.perf_counter() - start
        file_bytes = (out_dir / f"{name}.odc").stat().st_size
        rows.append({
            "name": name, "height": image.shape[1], "width": image.shape[2], "bytes": file_bytes,
            "bpp": 8 * file_bytes / (image.shape[1] * image.shape[2]), "psnr": psnr(image, reconstruction),
            "enc_s": encode_s, "dec_s": decode_s, "licence": SAMPLES[name],
        })
        assert file_bytes == compressed.num_bytes
    summary = {"model": model.config.name, "model_id": model.model_id.hex(),
               "untrained_parts": list(model.untrained_parts), "images": rows}
    atomic_write(out_dir / "results.json", json.dumps(summary, indent=1).encode())
    return rows
