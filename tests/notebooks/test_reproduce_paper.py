"""notebooks/60_reproduce_paper in smoke mode (nano models, a crop of a sample photograph, compared with the Kodak
points), then notebooks/50_figures_tables drawing the overlay and difference tables from those results. Self-
contained: its own output folders, no other notebook's results."""
import csv
import json
import math
import os
import shutil
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
MODELS = ["nano_q1", "nano_q5"]  # whatever weights these names have (bundled or seeded random)


def _run(name: str, executed: Path, parameters: dict):
    import papermill

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the kernel inherits them
    try:
        papermill.execute_notebook(str(REPO / "notebooks" / f"{name}.ipynb"), str(executed), kernel_name="python3",
                                   progress_bar=False, cwd=str(REPO), execution_timeout=300,
                                   parameters={"smoke": True, "threads": 1, **parameters})
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    nb = nbformat.read(executed, as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    return nb


def _outputs(nb, mime: str) -> list:
    return [o["data"][mime] for c in nb.cells for o in c.get("outputs", []) if mime in o.get("data", {})]


def _snapshot(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_reproduce_then_figures(tmp_path):
    committed = _snapshot(REPO / "results")
    out = tmp_path / "60"
    nb = _run("60_reproduce_paper", tmp_path / "60.ipynb",
              {"out_dir": str(out), "checkpoints": MODELS, "zonly": "nano_zonly", "images": "samples",
               "paper_dataset": "Kodak"})
    assert _snapshot(REPO / "results") == committed  # smoke runs never write into results/
    summary = json.loads((out / "results" / "samples" / "onedc-paper.json").read_text())
    assert summary["paper_dataset"] == "Kodak" and summary["protocol"]["name"] == "release"
    assert sorted(p["rate"] for p in summary["points"]) == sorted(["nano_zonly", *MODELS])
    bpps = [p["bpp"] for p in summary["points"]]
    assert bpps == sorted(bpps)
    zonly = next(p for p in summary["points"] if p["rate"] == "nano_zonly")
    assert zonly["bpp"] == pytest.approx(14 * 2 / (64 * 96))  # the release's z-only rate: one 64x96 crop, 2 blocks
    with open(out / "results" / "samples" / "onedc-paper.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {r["rate"] for r in rows} == {"nano_zonly", *MODELS}
    assert len(_outputs(nb, "image/png")) == 1 and len(_outputs(nb, "text/html")) >= 3  # figure, 3 tables

    # the figures notebook, from a results folder holding the published points and this run
    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "paper", results / "paper")
    shutil.copytree(out / "results" / "samples", results / "samples")
    figures = tmp_path / "50"
    _run("50_figures_tables", tmp_path / "50.ipynb", {"out_dir": str(figures), "results_dir": str(results)})
    assert (figures / "paper_samples_onedc-paper.png").read_bytes().startswith(PNG)
    with open(figures / "tables" / "paper_diff_samples_onedc-paper.csv", newline="") as f:
        diff = list(csv.DictReader(f))
    published = json.loads((REPO / "results" / "paper" / "rd_points.json").read_text())
    kodak = published["datasets"]["Kodak"]["bpp"]
    nearest = [published["point_names"][min(range(8), key=lambda i: abs(math.log(p["bpp"] / kodak[i])))]
               for p in summary["points"]]
    assert [r["paper_point"] for r in diff] == nearest  # 3 points of ours for 8 published: the nearest in log bpp
    for row, point in zip(diff, summary["points"]):  # the tables hold 6 decimals
        assert float(row["bpp_ours"]) == pytest.approx(point["bpp"], abs=1e-6)
        assert float(row["psnr_diff"]) == pytest.approx(point["psnr"] - float(row["psnr_paper"]), abs=1e-5)
    bd = (figures / "tables" / "paper_bdrate_samples_onedc-paper.md").read_text()
    assert "n/a (3 points)" in bd  # BD-rate needs 4 points of ours
