"""Figures from results: RD curves (bpp vs each metric) and comparison grids of crops.

Figures are built as `matplotlib.figure.Figure` objects, without pyplot: no global state, no GUI backend
needed (headless, Agg when saved), and a notebook shows the returned figure as usual.

    fig = rd_curves(["results/kodak/onedc.json", "results/kodak/hevc.json"], metrics=("psnr", "dists"))
    save_figure(fig, "figures/rd_kodak.png")
    fig = comparison_grid({"original": x, "OneDC 0.02 bpp": y, "HEVC 0.05 bpp": z}, crop=(128, 256, 192, 192))
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

__all__ = ["comparison_grid", "rd_curves", "save_figure"]

METRIC_LABELS = {"psnr": "PSNR (dB)", "ms_ssim": "MS-SSIM", "lpips": "LPIPS", "dists": "DISTS", "fid": "FID",
                 "kid": "KID", "ssim": "SSIM"}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _metric_label(metric: str) -> str:
    from onedc_lib.eval.bdrate import _key, higher_is_better

    label = METRIC_LABELS.get(_key(metric), metric)
    return f"{label} {'↑' if higher_is_better(metric) else '↓'}"


def rd_curves(results_paths, metrics=("psnr", "ms_ssim", "lpips", "dists"), log_x: bool = False,
              labels: dict | None = None, ncols: int | None = None, reference=None, reference_error: float = 0.0,
              reference_label: str = ""):
    """One panel per metric (bpp on x), one line per results file (summary JSON or CSV, or RDCurve).

    A file without a metric is left out of that panel; a metric that no file has is left out, and a
    ValueError is raised when none of the metrics is found anywhere. reference: an RDCurve of published points,
    drawn as black markers with error bars of +-reference_error (relative) on both axes.
    """
    from onedc_lib.eval.bdrate import RDCurve, load_curve

    if isinstance(results_paths, (str, os.PathLike, RDCurve)):
        results_paths = [results_paths]
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    curves = [p if isinstance(p, RDCurve) else load_curve(p) for p in results_paths]
    if not curves and reference is None:
        raise ValueError("no results to plot")
    metrics = [m for m in ([metrics] if isinstance(metrics, str) else metrics)]
    present = [m for m in metrics if any(_has(c, m) for c in curves + [reference] if c is not None)]
    if not present:
        have = sorted({m for c in curves for m in c.metrics})
        raise ValueError(f"none of the metrics {', '.join(metrics)} is in the results (they have: {', '.join(have)})")
    ncols = ncols or min(len(present), 4)
    nrows = -(-len(present) // ncols)
    fig = _figure(4.0 * ncols, 3.4 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, metric in zip(axes, present):
        for curve in curves:
            if not _has(curve, metric):
                continue
            x, y = curve.points(metric)
            label = (labels or {}).get(curve.name, curve.name)
            ax.plot(x, y, marker="o", markersize=3.5, linewidth=1.4, label=label)
        if reference is not None and _has(reference, metric):
            x, y = reference.points(metric)
            ax.errorbar(x, y, xerr=reference_error * x, yerr=reference_error * np.abs(y), fmt="s", color="black",
                        markersize=3.5, capsize=2, linewidth=0.8, label=reference_label or reference.name)
        if log_x:
            ax.set_xscale("log")
            # labels at 1, 2 and 5 x 10^k (a range within one decade has no power of ten to label), none between
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bpp")
        ax.set_ylabel(_metric_label(metric))
        ax.grid(True, which="both" if log_x else "major", alpha=0.3)
    for ax in axes[len(present):]:
        ax.set_visible(False)
    handles, names = axes[0].get_legend_handles_labels()
    if len(curves) + (reference is not None) > 1 or names:  # below the panels: inside one it hides points
        fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 3), fontsize="small")
    return fig


def _has(curve, metric: str) -> bool:
    try:
        return curve.points(metric)[0].size > 0
    except ValueError:
        return False


def _as_hwc(image) -> np.ndarray:
    """float [H, W, 3] in [0, 1] from a tensor ([3, H, W] or [1, 3, H, W], [0, 1]) or an array (uint8 or
    float, [H, W, 3], [H, W] or [3, H, W])."""
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().float().cpu().numpy()
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = np.moveaxis(image, 0, -1)
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected an image [H, W, 3], [3, H, W] or [H, W], got shape {list(image.shape)}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def comparison_grid(images: dict, crop: tuple[int, int, int, int] | None = None, ncols: int | None = None,
                    panel_size: float = 3.0, show_crop_on_first: bool = False):
    """The same crop (top, left, height, width) of each image side by side, titled with the dict's keys.

    With show_crop_on_first, the first image is shown whole with the crop outlined, before the crops.
    """
    if not images:
        raise ValueError("no images to show")
    arrays = {name: _as_hwc(image) for name, image in images.items()}
    sizes = {a.shape[:2] for a in arrays.values()}
    if crop is not None:
        top, left, h, w = (int(v) for v in crop)
        for name, a in arrays.items():
            if top < 0 or left < 0 or h < 1 or w < 1 or top + h > a.shape[0] or left + w > a.shape[1]:
                raise ValueError(f"crop {crop} (top, left, height, width) is outside {name!r} of size "
                                 f"{a.shape[0]} x {a.shape[1]}")
    elif len(sizes) > 1:
        raise ValueError(f"images of different sizes {sorted(sizes)}; give a crop")
    panels = []
    if show_crop_on_first and crop is not None:
        first = next(iter(arrays))
        panels.append((f"{first} (full)", arrays[first], True))
    for name, a in arrays.items():
        panels.append((name, a if crop is None else a[top:top + h, left:left + w], False))
    ncols = ncols or len(panels)
    nrows = -(-len(panels) // ncols)
    ph, pw = panels[-1][1].shape[:2]
    fig = _figure(panel_size * ncols, panel_size * nrows * ph / pw + 0.35 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, a, outline) in zip(axes, panels):
        ax.imshow(a, interpolation="nearest")
        ax.set_title(title, fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
        if outline:
            from matplotlib.patches import Rectangle

            ax.add_patch(Rectangle((left - 0.5, top - 0.5), w, h, fill=False, edgecolor="red", linewidth=1.5))
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return fig


def save_figure(fig, path, dpi: int = 150) -> Path:
    """Renders fig (format from the suffix: png, pdf, svg, ...) and writes it atomically (temp file + rename)."""
    from onedc_lib.bitstream import atomic_write

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi, metadata=_metadata(fmt))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())
    return path


def _metadata(fmt: str) -> dict | None:
    """No creation dates in the files, so that regenerated figures only differ when their content does."""
    if fmt == "pdf":
        return {"CreationDate": None, "ModDate": None}
    if fmt == "svg":
        return {"Date": None}
    if fmt == "png":
        return {"Software": None}
    return None
