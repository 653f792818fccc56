"""The main job: compress and decompress the sample photographs with a model, write the files, the
reconstructions and a results table (bpp from the real files; PSNR, MS-SSIM, and LPIPS / DISTS where their
weights are provisioned: `python -m onedc_lib.eval.backbones`, which `make setup` runs), and beside each an AVIF
file of about the same bytes (the smallest AVIF can make when it cannot go as low) to compare by eye."""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch

from .bitstream import atomic_write
from .data.samples import SAMPLES, sample_image
from .eval.baselines import BASELINES
from .image_io import save_image
from .weights import family_of


def demo_metrics():
    """The evaluation's ImageMetrics: all four metrics, or PSNR and MS-SSIM (with a warning) when the LPIPS /
    DISTS backbones are not provisioned. Returns (metrics, note on what is missing or None)."""
    from .eval.metrics import ImageMetrics
    from .eval.backbones import MetricWeightsError

    try:
        return ImageMetrics(), None
    except MetricWeightsError as error:
        note = f"LPIPS and DISTS skipped: {error}"
        warnings.warn(note, stacklevel=2)
        return ImageMetrics(("psnr", "ms_ssim")), note


def results_folder(model_name: str, results_dir="results") -> Path | None:
    """results_dir/<family of the model>, where `onedc eval-nano` writes its family's results on the nano test
    photographs; None for a model that is no rate point of a family (a model folder named otherwise)."""
    family = family_of(model_name)
    return Path(results_dir) / family if family else None


def expected_quality(model_name: str, results_dir=None) -> str | None:
    """One line: what `model_name` measured on the nano test photographs (default: in results_folder), or None
    when results_dir holds no point of it."""
    results_dir = results_dir or results_folder(model_name)
    if results_dir is None:
        return None
    for path in sorted(Path(results_dir).glob("onedc*.json")):
        summary = json.loads(path.read_text())
        for point in summary.get("points", []):
            if point.get("rate") == model_name:
                scores = ", ".join(f"{k.upper()} {point[k]:.{2 if k == 'psnr' else 3}f}"
                                   for k in ("psnr", "lpips", "dists") if point.get(k) is not None)
                return (f"{model_name} measured {point['bpp']:.3f} bpp, {scores} on {point.get('images', '?')} "
                        f"test photographs ({path})")
    return None


def avif_near(image_u8, target_bytes: int) -> tuple[int, bytes]:
    """(quality, file) of the AVIF sweep whose file size is nearest to target_bytes."""
    from .eval.baselines import BASELINES

    avif = BASELINES["avif"]
    files = [(q, avif.encode(image_u8, q)) for q in avif.qualities]
    return min(files, key=lambda f: abs(len(f[1]) - target_bytes))


def run_demo(model, out_dir: str | Path, names=tuple(SAMPLES), metrics=None) -> list[dict]:
    """metrics: an ImageMetrics (default: `demo_metrics()`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    note = None
    if metrics is None:
        metrics, note = demo_metrics()
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
        scores = {k: v for k, v in metrics(image, reconstruction).items() if k in metrics.metrics}
        pixels = image.shape[1] * image.shape[2]
        image_u8 = (image.permute(1, 2, 0) * 255).round().byte().numpy()
        avif_quality, avif_file = avif_near(image_u8, file_bytes)
        atomic_write(out_dir / f"{name}.avif", avif_file)
        avif_image = torch.tensor(BASELINES["avif"].decode(avif_file)).permute(2, 0, 1).float() / 255
        save_image(avif_image, out_dir / f"{name}_avif.png")
        avif_scores = {f"avif_{k}": v for k, v in metrics(image, avif_image).items() if k in metrics.metrics}
        rows.append({
            "name": name, "height": image.shape[1], "width": image.shape[2], "bytes": file_bytes,
            "bpp": 8 * file_bytes / pixels, **scores,
            "enc_s": encode_s, "dec_s": decode_s, "licence": SAMPLES[name],
            "avif_quality": avif_quality, "avif_bytes": len(avif_file), "avif_bpp": 8 * len(avif_file) / pixels,
            **avif_scores,
        })
        assert file_bytes == compressed.num_bytes
    summary = {"model": model.config.name, "model_id": model.model_id.hex(),
               "untrained_parts": list(model.untrained_parts), "metrics_note": note, "images": rows}
    atomic_write(out_dir / "results.json", json.dumps(summary, indent=1).encode())
    return rows
