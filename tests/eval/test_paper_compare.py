"""Our measurements beside the published points (onedc_lib.eval.paper and the figures it feeds): pairing,
differences and BD-rate checked on curves made from the published points by hand (a 2 % offset, a 10 % rate)."""
import json
import shutil
from pathlib import Path

import pytest

from onedc_lib.eval import paper

REPO = Path(__file__).resolve().parents[2]
PAPER_DIR = REPO / "results" / "paper"


@pytest.fixture(scope="module")
def published():
    return paper.load_published(PAPER_DIR)


def _summary(published, dataset="Kodak", bpp_factor=1.0, metric_factor=None, points=None) -> dict:
    """A summary whose points are the published ones, bpp x bpp_factor and metrics x metric_factor[metric]."""
    values = published["datasets"][dataset]
    factors = metric_factor or {}
    n = len(values["bpp"])
    rows = [{"rate": f"m{i}", "bpp": values["bpp"][i] * bpp_factor, "images": 24,
             **{m: v[i] * factors.get(m, 1.0) for m, v in values.items() if m != "bpp" and v[i] is not None}}
            for i in range(n) if points is None or i in points]
    return {"codec": paper.TAG, "label": "OneDC (ours)", "kind": "onedc", "points": rows, "paper_dataset": dataset,
            "metrics": [m for m in values if m != "bpp"], "images": {"count": 24, "sha256": {"a": "0"}}}


def test_datasets_by_folder_name(published):
    assert paper.match_dataset("kodak", published) == "Kodak"
    assert paper.match_dataset("COCO_30K", published) == "COCO-30K"
    assert paper.match_dataset("clic2020", published) == "CLIC2020"
    assert paper.match_dataset("samples", published) is None
    with pytest.raises(ValueError, match="no published points"):
        paper.published_curve(published, "DIV2K")


def test_differences_per_point(published):
    kodak = published["datasets"]["Kodak"]
    rows = paper.difference_rows(_summary(published, metric_factor={"lpips": 1.02, "psnr": 0.95}), published, "Kodak")
    assert [r["paper_point"] for r in rows] == published["point_names"]
    assert {r["paired_by"] for r in rows} == {"rank"}
    for row, lpips, psnr in zip(rows, kodak["lpips"], kodak["psnr"]):
        assert row["lpips_diff"] == pytest.approx(0.02 * lpips) and row["lpips_diff_%"] == pytest.approx(2.0)
        assert row["lpips_within"] is True  # inside the 3 % reading error
        assert row["psnr_diff_%"] == pytest.approx(-5.0) and row["psnr_within"] is False
        assert row["bpp_diff"] == pytest.approx(0.0) and row["dists_within"] is True
    assert "fid_ours" not in rows[0]  # Kodak has no published FID


def test_fewer_points_pair_with_the_nearest_bpp(published):
    rows = paper.difference_rows(_summary(published, points={1, 6}), published, "Kodak")
    assert [(r["paper_point"], r["paired_by"]) for r in rows] == [("p2", "nearest bpp"), ("p7", "nearest bpp")]


def test_bdrate_against_the_published_curve(published, tmp_path):
    """Every published point at 10 % more bits: BD-rate +10 % on every metric (the log-rate shift is constant)."""
    path = tmp_path / "ours.json"
    path.write_text(json.dumps(_summary(published, "CLIC2020", bpp_factor=1.1)))
    from onedc_lib.eval.bdrate import load_curve

    (row,) = paper.bdrate_rows(load_curve(path), published, "CLIC2020")
    assert row["anchor"] == paper.PAPER_LABEL
    assert [m for m in row if m not in ("codec", "anchor")] == ["lpips", "dists", "fid", "psnr"]
    for metric in ("lpips", "dists", "fid", "psnr"):
        assert row[metric] == pytest.approx(10.0, abs=1e-9), metric
    path.write_text(json.dumps(_summary(published, "CLIC2020", points={2, 5})))
    (row,) = paper.bdrate_rows(load_curve(path), published, "CLIC2020")
    assert row["lpips"] == "n/a (2 points)"


def test_merge_keeps_every_point_and_refuses_other_images(published):
    a, b = _summary(published, points={0, 1}), _summary(published, points={5})
    for s, name in ((a, "q1"), (b, "q5")):
        s.update(spec=f"onedc:{name}", codec_info={"models": {name: {}}})
    merged = paper.merge_summaries([b, a], "Kodak")
    assert [p["rate"] for p in merged["points"]] == ["m0", "m1", "m5"]  # sorted by bpp
    assert merged["codec"] == paper.TAG and merged["paper_dataset"] == "Kodak"
    assert set(merged["codec_info"]["models"]) == {"q1", "q5"}
    b["images"] = {"count": 24, "sha256": {"a": "1"}}
    with pytest.raises(ValueError, match="different images"):
        paper.merge_summaries([a, b], "Kodak")


def test_figures_draw_the_overlay_and_tables_from_results(published, tmp_path):
    from onedc_lib.figures import regenerate

    results = tmp_path / "results"
    shutil.copytree(PAPER_DIR, results / "paper")
    (results / "kodak").mkdir()
    (results / "kodak" / f"{paper.TAG}.json").write_text(json.dumps(_summary(published, bpp_factor=1.1)))
    outputs = regenerate(results, tmp_path / "figures", dpi=60)
    name = f"kodak_{paper.TAG}"
    assert (tmp_path / "figures" / f"paper_{name}.png").read_bytes().startswith(b"\x89PNG")
    diff = (tmp_path / "figures" / "tables" / f"paper_diff_{name}.csv").read_text().splitlines()
    assert len(diff) == 1 + 8 and diff[0].startswith("model,paper_point,paired_by,bpp_ours,bpp_paper")
    bd = (tmp_path / "figures" / "tables" / f"paper_bdrate_{name}.csv").read_text().splitlines()
    assert bd[0] == "codec,anchor,lpips,dists,psnr,ms_ssim"
    assert [float(v) for v in bd[1].split(",")[2:]] == pytest.approx([10.0] * 4)
    main = {r.split(",")[0]: r.split(",")[1:4] for r in
            (tmp_path / "figures" / "tables" / "paper_main_table.csv").read_text().splitlines()}
    assert [float(v) for v in main["MS-ILLM"]] == [138.0, 253.0, 478.0]
    inputs = {e["file"]: e["inputs"] for e in outputs.entries}
    assert inputs[f"paper_{name}.png"] == [f"kodak/{paper.TAG}.json", "paper/rd_points.json"]
    assert not [n for n in outputs.notes if "paper/" in n]  # the published files are recognised, not skipped


def test_reproduce_refuses_checkpoints_of_one_name(tmp_path):
    for run in ("a", "b"):
        (tmp_path / run / "model").mkdir(parents=True)
    with pytest.raises(ValueError, match="several checkpoints named model"):
        paper.reproduce([tmp_path / "a" / "model", tmp_path / "b" / "model"], "samples", out_dir=tmp_path / "out",
                        paper_dir=PAPER_DIR)
