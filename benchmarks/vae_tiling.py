"""Tiled against whole VAE decoding on the same latent: PSNR, the largest difference, time and peak memory.

    python benchmarks/vae_tiling.py [--preset nano_q3] [--vae-weights FILE] [--sizes 1408x2048,2816x4096]
                                    [--tiles 64,128] [--threads 1] [--out results/speed] [--name vae_tiling_nano]

The latent is the VAE encoder's of a photograph (scikit-image's astronaut, resized to each size), so that it has
the statistics the decoder expects; --vae-weights loads trained VAE weights (a diffusers AutoencoderKL state_dict
in .safetensors) into the preset's VAE, else its seeded random weights decode. Each size is decoded whole (one
decoder call, windowed mid-block attention) and tiled at each --tiles (latent pixels, overlap one attention
window; onedc_lib.models.vae.VAE.tiled_decode), each in its own measurement of peak RSS (PeakMemory).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onedc_lib.bitstream import atomic_write  # noqa: E402
from onedc_lib.eval.timing import PeakMemory  # noqa: E402
from onedc_lib.weights import build_model  # noqa: E402


def photograph(height: int, width: int) -> torch.Tensor:
    from skimage import data

    x = torch.from_numpy(data.astronaut()).float().div(255).permute(2, 0, 1)[None]
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a - b).square().mean().item() / 4  # images in [-1, 1]
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def measured(fn):
    with PeakMemory("cpu") as peak:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return out, {"seconds": seconds, **peak.as_dict()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="nano_q3")
    parser.add_argument("--vae-weights", type=Path, help="AutoencoderKL state_dict (.safetensors) to load")
    parser.add_argument("--sizes", default="1408x2048,2816x4096")
    parser.add_argument("--tiles", default="64,128")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/speed"))
    parser.add_argument("--name", default="vae_tiling")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    vae = build_model(args.preset).vae.eval()
    if args.vae_weights:
        from safetensors.torch import load_file

        vae.autoencoder.load_state_dict(load_file(args.vae_weights), strict=True)
    report = {"preset": args.preset, "vae_weights": str(args.vae_weights) if args.vae_weights else "random (seeded)",
              "threads": args.threads, "attention_window": vae.attention_window, "results": []}
    for item in args.sizes.split(","):
        height, width = (int(v) for v in item.split("x"))
        with torch.no_grad():
            latent = vae.encode(photograph(height, width) * 2 - 1)
            largest = max(latent.shape[-2:])
            whole, whole_stats = measured(lambda: vae.decode(latent, clamp=False, tile=16 * math.ceil(largest / 16)))
            row = {"height": height, "width": width, "latent": list(latent.shape[-2:]), "whole": whole_stats,
                   "tiled": {}}
            for tile in (int(t) for t in args.tiles.split(",")):
                tiled, stats = measured(lambda: vae.tiled_decode(latent, tile))
                stats.update(psnr=psnr(tiled.clamp(-1, 1), whole.clamp(-1, 1)),
                             max_abs_diff=(tiled.clamp(-1, 1) - whole.clamp(-1, 1)).abs().max().item())
                row["tiled"][str(tile)] = stats
                print(f"{height}x{width} tile {tile}: PSNR {stats['psnr']:.2f} dB, peak {stats['peak_mb']:.0f} MB "
                      f"(whole {whole_stats['peak_mb']:.0f} MB), {stats['seconds']:.1f} s "
                      f"(whole {whole_stats['seconds']:.1f} s)", flush=True)
            del whole
        report["results"].append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / f"{args.name}.json", (json.dumps(report, indent=1) + "\n").encode())
    return report


if __name__ == "__main__":
    main()
