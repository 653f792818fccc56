"""results/paper/: the published points and the main table, checked against the design files they were
transcribed from (../shared/design, read at test time; skipped where that folder is not beside the checkout)."""
import csv
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "results" / "paper"
DESIGN = REPO.parent / "shared" / "design"
SOURCE_CSV = DESIGN / "paper_rd_points.csv"
SPEC = DESIGN / "ONEDC_SPEC.md"
METRICS = {"bpp": "bpp", "LPIPS": "lpips", "DISTS": "dists", "PSNR": "psnr", "MS-SSIM": "ms_ssim", "FID": "fid"}


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(line for line in path.read_text().splitlines() if not line.startswith("#")))


@pytest.fixture(scope="module")
def source() -> list[dict]:
    if not SOURCE_CSV.is_file():
        pytest.skip(f"no {SOURCE_CSV} beside the checkout")
    return _rows(SOURCE_CSV)


def test_points_csv_is_the_source(source):
    ours = _rows(PAPER / "rd_points.csv")
    assert [list(r) for r in ours[:1]] == [list(r) for r in source[:1]]
    assert len(ours) == len(source)
    for a, b in zip(ours, source):
        assert a.keys() == b.keys()
        for key in a:
            if key in ("dataset", "metric"):
                assert a[key] == b[key]
            else:
                assert (a[key].strip() == "") == (b[key].strip() == "")
                if a[key].strip():
                    assert float(a[key]) == float(b[key])


def test_points_json_is_the_source(source):
    data = json.loads((PAPER / "rd_points.json").read_text())
    assert data["kind"] == "published_rd_points" and data["reading_error_relative"] == 0.03
    assert "3 %" in data["provenance"] and "not measured" in data["provenance"].lower()
    names = data["point_names"]
    assert names[0] == data["z_only_point"]
    expected = {}
    for row in source:
        expected.setdefault(row["dataset"], {})[METRICS[row["metric"]]] = [
            float(row[n]) if row[n].strip() else None for n in names]
    assert data["datasets"] == expected
    for dataset, metrics in data["missing"].items():  # every gap is explained, and only gaps
        for metric, points in metrics.items():
            assert all(expected[dataset][metric][names.index(p)] is None for p in points)
    gaps = sum(v is None for d in expected.values() for m in d.values() for v in m)
    assert gaps == sum(len(p) for m in data["missing"].values() for p in m.values())


def test_points_agree_with_the_kodak_points_in_the_spec(source):
    if not SPEC.is_file():
        pytest.skip(f"no {SPEC}")
    text = SPEC.read_text()
    found = re.findall(r"(\d\.\d+): \.(\d+)/\.(\d+)/(\d+\.\d)", text[text.index("Approximate released RD points"):])
    assert len(found) == 8
    kodak = json.loads((PAPER / "rd_points.json").read_text())["datasets"]["Kodak"]
    for i, (bpp, lpips, dists, psnr) in enumerate(found):
        assert (kodak["bpp"][i], kodak["lpips"][i], kodak["dists"][i], kodak["psnr"][i]) == (
            float(bpp), float("0." + lpips), float("0." + dists), float(psnr))


def test_main_table_is_the_spec():
    if not SPEC.is_file():
        pytest.skip(f"no {SPEC} beside the checkout")
    text = SPEC.read_text()
    headline = text[text.index("Paper headline"):text.index("Ablation (CLIC2020")]
    data = json.loads((PAPER / "main_table.json").read_text())
    assert data["kind"] == "published_table" and data["dataset"] == "COCO-30K" and data["anchor"] == "OneDC"
    assert "COCO-30K" in headline and "OneDC as anchor" in headline
    rows = {r["method"]: r for r in data["rows"]}
    csv_rows = {r["method"]: r for r in _rows(PAPER / "main_table.csv")}
    assert rows.keys() == csv_rows.keys() == {"OneDC", "MS-ILLM", "DiffEIC", "PerCo (SD)", "DiffC"}
    for method in ("MS-ILLM", "DiffEIC", "PerCo (SD)", "DiffC"):
        name = method.split(" (")[0]
        start = re.search(rf"(?<![A-Za-z]){re.escape(name)}\s+\+", headline).start()
        numbers = [float(n) for n in re.findall(r"\+(\d+)", headline[start:start + 60])[:3]]
        assert [rows[method][k] for k in ("bdrate_lpips", "bdrate_dists", "bdrate_fid")] == numbers, method
        assert [float(csv_rows[method][k]) for k in ("bdrate_lpips", "bdrate_dists", "bdrate_fid")] == numbers
    times = re.search(r"OneDC\s+encode\s+(\d\.\d+)\s+s,\s+decode\s+(\d\.\d+)\s+s", headline)
    assert (rows["OneDC"]["encode_s"], rows["OneDC"]["decode_s_min"]) == tuple(map(float, times.groups()))
    for method, name in (("DiffEIC", "DiffEIC"), ("PerCo (SD)", "PerCo"), ("DiffC", "DiffC")):
        stated = re.search(rf"{name}\s+(\d+\.\d)(?:-(\d+\.\d))?\s+s", headline).groups()
        low, high = float(stated[0]), float(stated[1] or stated[0])
        assert (rows[method]["decode_s_min"], rows[method]["decode_s_max"]) == (low, high)
