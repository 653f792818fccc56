"""RD curves from results files, comparison grids of crops, atomic figure files; headless, no pyplot."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from onedc_lib.eval.bdrate import load_curve
from onedc_lib.plotting import comparison_grid, rd_curves, save_figure

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def results(tmp_path) -> list[Path]:
    a = tmp_path / "onedc.json"
    a.write_text(json.dumps({"codec": "onedc", "points": [
        {"bpp": r, "psnr": 20 + 10 * r, "ms_ssim": 0.8 + 0.1 * r, "lpips": 0.3 - 0.2 * r, "dists": 0.2 - 0.1 * r}
        for r in (0.01, 0.03, 0.1, 0.3)]}))
    b = tmp_path / "jpeg.csv"
    b.write_text("codec,quality,bpp,psnr,ms_ssim\n" + "".join(
        f"jpeg,{q},{0.2 * q / 10 + d},{25 + q / 5 + 10 * d},{0.85 + q / 1000}\n" for q in (10, 30, 50, 70)
        for d in (-0.01, 0.01)))
    return [a, b]


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def test_rd_curves(results):
    fig = rd_curves(results)
    axes = visible_axes(fig)
    assert [ax.get_ylabel().split()[0] for ax in axes] == ["PSNR", "MS-SSIM", "LPIPS", "DISTS"]
    assert [len(ax.lines) for ax in axes] == [2, 2, 1, 1]  # the CSV has no LPIPS / DISTS
    assert "↓" in axes[2].get_ylabel() and "↑" in axes[0].get_ylabel()
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"onedc", "jpeg"}
    jpeg = next(line for line in axes[0].lines if line.get_label() == "jpeg")
    np.testing.assert_allclose(jpeg.get_xdata(), [0.2, 0.6, 1.0, 1.4])  # per-image rows averaged per quality
    assert all(ax.get_xscale() == "linear" for ax in axes)

    fig = rd_curves(results, metrics=("lpips", "fid"), log_x=True)
    axes = visible_axes(fig)
    assert len(axes) == 1 and axes[0].get_xscale() == "log"  # fid is in no file: no panel
    with pytest.raises(ValueError, match="none of the metrics fid"):
        rd_curves(results, metrics=("fid",))
    fig = rd_curves([load_curve(results[0])], metrics="psnr", labels={"onedc": "OneDC (ours)"})
    assert visible_axes(fig)[0].lines[0].get_label() == "OneDC (ours)"


def test_save_figure_is_atomic_and_reproducible(results, tmp_path):
    fig = rd_curves(results)
    out = tmp_path / "figures" / "rd.png"
    assert save_figure(fig, out) == out
    first = out.read_bytes()
    assert first.startswith(PNG_MAGIC)
    save_figure(rd_curves(results), out)  # overwrites
    assert out.read_bytes() == first  # no dates or versions in the file: regenerating changes nothing
    assert sorted(p.name for p in out.parent.iterdir()) == ["rd.png"]  # no temp files left
    save_figure(fig, tmp_path / "rd.pdf")
    assert (tmp_path / "rd.pdf").read_bytes().startswith(b"%PDF")
    save_figure(fig, tmp_path / "rd.svg")
    assert b"<svg" in (tmp_path / "rd.svg").read_bytes()[:2000]


def test_failed_save_leaves_the_old_file(results, tmp_path):
    out = tmp_path / "rd.png"
    out.write_bytes(b"old")
    with pytest.raises(ValueError):
        save_figure(rd_curves(results), tmp_path / "rd.notaformat")
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "jpeg.csv", "onedc.json", "rd.png"]


def test_comparison_grid(tmp_path):
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    images = {"original": original,
              "tensor [3, H, W]": torch.from_numpy(original).permute(2, 0, 1).float() / 255,
              "batch [1, 3, H, W]": torch.from_numpy(original).permute(2, 0, 1)[None].float() / 255,
              "float HWC": original / 255.0,
              "gray": original[..., 0]}
    fig = comparison_grid(images, crop=(10, 20, 32, 48))
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == list(images)
    for ax in axes[:4]:
        shown = ax.images[0].get_array()
        assert shown.shape == (32, 48, 3)
        np.testing.assert_allclose(shown, original[10:42, 20:68] / 255.0, atol=1e-6)
    fig = comparison_grid(images, crop=(10, 20, 32, 48), show_crop_on_first=True, ncols=3)
    axes = visible_axes(fig)
    assert len(axes) == 6 and axes[0].get_title() == "original (full)" and len(axes[0].patches) == 1
    assert axes[0].images[0].get_array().shape == (64, 96, 3)
    save_figure(fig, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes().startswith(PNG_MAGIC)

    assert len(visible_axes(comparison_grid({"a": original, "b": original}))) == 2  # no crop: whole images
    with pytest.raises(ValueError, match="outside"):
        comparison_grid(images, crop=(40, 0, 32, 32))
    with pytest.raises(ValueError, match="different sizes"):
        comparison_grid({"a": original, "b": original[:32]})
    with pytest.raises(ValueError, match="shape"):
        comparison_grid({"a": np.zeros((4, 5, 6, 7))})


def test_headless_without_pyplot(tmp_path, results):
    """Works with no display and an interactive backend requested, and never imports pyplot."""
    code = ("import sys; from onedc_lib.plotting import rd_curves, save_figure; "
            f"save_figure(rd_curves([{str(results[0])!r}]), {str(tmp_path / 'x.png')!r}); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env.update(PYTHONPATH=str(REPO), MPLBACKEND="TkAgg")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "x.png").read_bytes().startswith(PNG_MAGIC)
