import json

import pytest

from onedc_lib.data.samples import SAMPLES, sample_image
from onedc_lib.demo import run_demo
from onedc_lib.eval.baselines import BASELINES
from onedc_lib.eval.metrics import ImageMetrics
from onedc_lib.weights import build_model


def _u8(image):
    return (image.permute(1, 2, 0) * 255).round().byte().numpy()


def test_samples_are_photographs_with_licences():
    for name, licence in SAMPLES.items():
        image = sample_image(name)
        assert image.shape[0] == 3 and min(image.shape[1:]) >= 300
        assert 0 <= image.min() and image.max() <= 1
        assert "public domain" in licence or "CC0" in licence
    with pytest.raises(ValueError, match="unknown sample"):
        sample_image("nope")


def test_demo_writes_files_reconstructions_and_results(tmp_path):
    model = build_model("nano_q3")
    rows = run_demo(model, tmp_path, names=("chelsea",), metrics=ImageMetrics(("psnr", "ms_ssim")))
    assert {p.name for p in tmp_path.iterdir()} == {"chelsea.png", "chelsea.odc", "chelsea_decoded.png",
                                                     "chelsea.avif", "chelsea_avif.png", "results.json"}
    row = rows[0]
    # the AVIF beside it: of the whole AVIF sweep, the file nearest in size to the model's
    avif_sizes = {q: len(BASELINES["avif"].encode(_u8(sample_image("chelsea")), q))
                  for q in BASELINES["avif"].qualities}
    assert row["avif_bytes"] == (tmp_path / "chelsea.avif").stat().st_size == avif_sizes[row["avif_quality"]]
    assert abs(row["avif_bytes"] - row["bytes"]) == min(abs(s - row["bytes"]) for s in avif_sizes.values())
    assert 5 < row["avif_psnr"] < 60
    assert row["bytes"] == (tmp_path / "chelsea.odc").stat().st_size
    assert row["bpp"] == pytest.approx(8 * row["bytes"] / (300 * 451))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["model_id"] == model.model_id.hex() and results["images"] == rows
    assert results["untrained_parts"] == ["codec", "generator", "vae"]
    assert 5 < row["psnr"] < 60 and 0 < row["ms_ssim"] <= 1


def test_demo_measures_lpips_and_dists_where_provisioned(tmp_path):
    from onedc_lib.demo import demo_metrics

    metrics, note = demo_metrics()
    if note is not None:
        pytest.skip(note)
    rows = run_demo(build_model("nano_q3"), tmp_path, names=("coffee",), metrics=metrics)
    assert 0 <= rows[0]["lpips"] <= 1.5 and 0 <= rows[0]["dists"] <= 1


def test_expected_quality_line_reads_the_results(tmp_path):
    from onedc_lib.demo import expected_quality

    summary = {"points": [{"rate": "nano_q1", "bpp": 0.0286, "psnr": 16.28, "lpips": 0.4978, "dists": 0.3451,
                           "images": 6}, {"rate": "nano_q3", "bpp": 0.04312, "psnr": 17.123, "lpips": 0.48508,
                                          "dists": 0.3472, "images": 6}]}
    (tmp_path / "onedc-nano_q1-nano_q5.json").write_text(json.dumps(summary))
    line = expected_quality("nano_q3", tmp_path)
    assert line.startswith("nano_q3 measured 0.043 bpp, PSNR 17.12, LPIPS 0.485, DISTS 0.347 on 6 test photographs")
    assert expected_quality("nano_q9", tmp_path) is None and expected_quality("nano_q3", tmp_path / "no") is None


def test_expected_quality_reads_the_folder_of_the_models_family(tmp_path, monkeypatch):
    from onedc_lib.demo import expected_quality, results_folder

    monkeypatch.chdir(tmp_path)
    for family, bpp in (("nano", 0.043), ("nano_sr", 0.041)):
        (tmp_path / "results" / family).mkdir(parents=True)
        point = {"rate": f"{family}_q3", "bpp": bpp, "psnr": 18.0, "images": 12}
        (tmp_path / "results" / family / "onedc-x.json").write_text(json.dumps({"points": [point]}))
    assert expected_quality("nano_sr_q3").startswith("nano_sr_q3 measured 0.041 bpp, PSNR 18.00 on 12 test")
    assert expected_quality("nano_q3").startswith("nano_q3 measured 0.043 bpp")
    assert results_folder("nano_sr_zonly").as_posix() == "results/nano_sr"
    assert results_folder("runs/q3/model") is None and expected_quality("runs/q3/model") is None
