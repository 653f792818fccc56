"""The extreme z-only model evaluated on real files (notebooks/40_zonly_extreme.ipynb, spec section 7).

A z-only file sends no y: the decoder uses the prior's predicted means. What remains is z, 14 bits per 64x64
block of the padded image, and the container (header, section table, CRCs; an untrained model's note). The
evaluation runner writes the real `.odc` files and measures the reconstructions (PSNR, LPIPS, DISTS, ...); this
module takes each file apart so that the bpp from the file size is shown next to the 14-bits-per-block rate the
paper reports (it computes bpp arithmetically and writes no file).

    report = zonly_eval("runs/zonly/model", images="nano", out_dir="out/zonly")
    report.table(); report.summary; report.figure()
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..bitstream import atomic_write

__all__ = ["ZOnlyReport", "file_rate", "zonly_eval"]

RATE_COLUMNS = ("name", "height", "width", "blocks", "z_bits", "z_bytes", "container_bytes", "other_bytes",
                "file_bytes", "bpp", "bpp_z")


def file_rate(path) -> dict:
    """The rate of one z-only file taken apart: blocks, z bits and bytes, container bytes, other sections, bpp of
    the file and of z alone. A file with a y section, or whose z is not 14 bits per block, is refused."""
    from ..bitstream import read_container, z_num_bytes
    from ..entropy import release_format

    data = Path(path).read_bytes()
    container = read_container(data)
    sections = {s.name: len(s.payload) for s in container.sections}
    if sections.get("y"):
        raise ValueError(f"{path} has a y section of {sections['y']} bytes: not a z-only file")
    h, w = container.height, container.width
    blocks = release_format.z_count(h, w)
    if sections.get("z") != z_num_bytes(h, w):
        raise ValueError(f"{path}: z section of {sections.get('z')} bytes, expected {z_num_bytes(h, w)} "
                         f"({release_format.Z_BITS} bits x {blocks} blocks)")
    payload = sum(sections.values())
    return {"height": h, "width": w, "blocks": blocks, "z_bits": release_format.Z_BITS * blocks,
            "z_bytes": sections["z"], "container_bytes": len(data) - payload, "other_bytes": payload - sections["z"],
            "file_bytes": len(data), "bpp": 8 * len(data) / (h * w),
            "bpp_z": release_format.Z_BITS * blocks / (h * w)}


@dataclass
class ZOnlyReport:
    """Per-image rows (rate taken apart + the runner's metrics), the mean summary and where they were written."""

    rows: list[dict]
    summary: dict
    files: list[Path]
    recon_dir: Path
    images_dir: Path

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def figure(self, image: str | None = None):
        """Original and z-only reconstruction of one image (the first by default), whole and a centred crop."""
        from ..image_io import load_image
        from ..plotting import comparison_grid

        row = next((r for r in self.rows if r["name"] == image), None) if image else self.rows[0]
        if row is None:
            raise ValueError(f"no image {image!r}; images: {', '.join(r['name'] for r in self.rows)}")
        original = load_image(next(self.images_dir.glob(f"{row['name']}.*")))
        recon = load_image(self.recon_dir / Path(row["file"]).with_suffix(".png").name)
        h, w = row["height"], row["width"]
        side = max(min(h, w) // 2, 1)
        label = f"z-only {row['bpp']:.4f} bpp (z alone {row['bpp_z']:.4f})"
        return comparison_grid({"original": original, label: recon}, crop=((h - side) // 2, (w - side) // 2,
                                                                            side, side), show_crop_on_first=True)


def zonly_eval(model, images: str = "samples", out_dir="out/zonly", results_dir="results",
               metrics=("psnr", "lpips", "dists"), max_side: int = 0, max_images: int = 0, device: str = "cpu",
               smoke: bool = False) -> ZOnlyReport:
    """Runs the z-only `model` (a model folder or bundled name) over a dataset with `eval.sweep.rd_sweep` (real
    files, reconstructions, CSV + summary JSON in results_dir/<dataset>/) and writes beside them
    zonly_<tag>.csv (one row per image: rate taken apart and metrics) and zonly_<tag>.json (means). The nano
    test split's results go to the folder of the model's family (its preset's, e.g. results/nano)."""
    from ..weights import family_of, load_model
    from .runner import _csv_text
    from .sweep import dataset_folder, rd_sweep, smoke_images

    config = load_model(str(model)).config
    if not config.codec.z_only:
        raise ValueError(f"{model} is not a z-only model (codec.z_only is false)")
    images = smoke_images(images, smoke)  # once, for both calls below
    _, images_dir = dataset_folder(images, out_dir, max_side, max_images, smoke)  # the folder rd_sweep evaluates
    summaries = rd_sweep(images=images, codecs=[f"onedc:{model}"], preset=family_of(config.name),
                         out_dir=out_dir, results_dir=results_dir,
                         metrics=metrics, fid=False, max_side=max_side, max_images=max_images, device=device,
                         smoke=smoke)
    (tag, summary), = summaries.items()
    results = Path(summary["results_file"]).parent
    runs = Path(out_dir) / "runs" / results.name
    with open(results / f"{tag}.csv", newline="") as f:
        measured = list(csv.DictReader(f))
    metric_names = [m for m in metrics if m in (measured[0] if measured else {})]
    rows = []
    for row in measured:
        rate = file_rate(runs / row["file"])
        if rate["file_bytes"] != int(row["bytes"]):
            raise ValueError(f"{row['file']}: {rate['file_bytes']} bytes on disk, the runner recorded {row['bytes']}")
        rows.append({"name": row["name"], **rate, **{m: _number(row[m]) for m in metric_names},
                     "file": row["file"]})
    means = {k: _mean([r[k] for r in rows]) for k in ("bpp", "bpp_z", "file_bytes", "container_bytes",
                                                       *metric_names)}
    info = summary.get("codec_info", {}).get("models", {})
    out = {"model": str(model), "codec": tag, "images": len(rows), "mean": means, "dataset": results.name,
           "z_bits_per_block": rows[0]["z_bits"] // rows[0]["blocks"] if rows else None,
           "untrained_parts": sorted({p for m in info.values() for p in m.get("untrained_parts", [])}),
           "runner_summary": Path(summary["results_file"]).name}
    columns = [*RATE_COLUMNS, *metric_names, "file"]
    csv_path, json_path = results / f"zonly_{tag}.csv", results / f"zonly_{tag}.json"
    atomic_write(csv_path, _csv_text(columns, rows).encode())
    atomic_write(json_path, (json.dumps(out, indent=1, allow_nan=False) + "\n").encode())
    return ZOnlyReport(rows, out, [csv_path, json_path], runs / tag / "recon", Path(images_dir))


def _number(text: str) -> float | None:
    """A CSV metric: None when missing or not finite (PSNR of an identical image)."""
    value = float(text) if text not in ("", None) else math.nan
    return value if math.isfinite(value) else None


def _mean(values) -> float | None:
    """Mean over the images that have the value (None when none has it)."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
