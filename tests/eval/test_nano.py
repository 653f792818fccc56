"""The nano results command: the test split is checked against the manifest, OneDC curves come from trained
weights only (one curve for y models, one for z-only, by lambda), and one call writes results/nano/ and the
figures with the OneDC-vs-baselines BD-rate table. Tiny: two 64x64 'test photographs', PSNR only, model folders
with random weights written here (never results)."""
import hashlib
import json
import shutil
import warnings

import pytest
import torch

from onedc_lib.config import load_config
from onedc_lib.data import prepare
from onedc_lib.experiments import nano
from onedc_lib.eval.sweep import nano_test_folder
from onedc_lib.image_io import save_image
from onedc_lib import weights
from onedc_lib.weights import WeightsError, build_model, save_model


@pytest.fixture
def data(tmp_path, monkeypatch):
    """A prepared-data folder with two test photographs and the manifest that lists them."""
    root = tmp_path / "nano_data"
    (root / "test").mkdir(parents=True)
    files = []
    for i in range(2):
        path = root / "test" / f"img{i}.png"
        save_image(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)), path)
        files.append({"file": f"test/img{i}.png", "split": "test",
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    files.append({"file": "train/other.png", "split": "train", "sha256": "0" * 64})
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"files": files}))
    monkeypatch.setattr(prepare, "REFERENCE_MANIFEST", manifest)
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Four y models (written in mixed order) and one z-only model, as model folders (random weights)."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed, preset in enumerate(("nano_q2", "nano_q5", "nano_q1", "nano_q4", "nano_zonly")):
            out[preset] = str(save_model(build_model(preset, seed=seed), root / preset))
    return out


def test_the_test_split_is_checked(data):
    assert nano_test_folder(data) == data / "test"
    (data / "test" / "extra.png").write_bytes((data / "test" / "img0.png").read_bytes())
    with pytest.raises(ValueError, match="extra.png.*onedc prepare --out"):
        nano_test_folder(data)
    (data / "test" / "extra.png").unlink()
    (data / "test" / "img1.png").write_bytes(b"changed")
    with pytest.raises(ValueError, match="img1.png"):
        nano_test_folder(data)
    with pytest.raises(FileNotFoundError, match="onedc prepare"):
        nano_test_folder(data.parent / "nowhere")


def test_curves_from_trained_weights_only(folders, tmp_path, monkeypatch):
    specs = nano.nano_codecs(list(folders.values()))
    y_models = sorted(("nano_q1", "nano_q2", "nano_q4", "nano_q5"), key=lambda n: -load_config(n).loss.lmbda)
    assert specs == ["onedc:" + ",".join(folders[n] for n in y_models), "onedc:" + folders["nano_zonly"]]
    with pytest.raises(WeightsError, match="trained weights only"):
        nano.nano_codecs(["nano_q3"])  # a preset: random weights
    monkeypatch.setenv("ONEDC_BUNDLED_DIR", str(tmp_path / "none"))
    assert nano.nano_codecs() == []


def test_one_call_writes_results_and_figures(data, folders, tmp_path):
    models = [folders[n] for n in ("nano_q1", "nano_q2", "nano_q4", "nano_q5")]
    result = nano.nano_results(data, tmp_path / "results", tmp_path / "figures", tmp_path / "out",
                               baselines=["jpeg"], models=models, metrics=["psnr"], progress=False, family="nano")
    assert set(result["summaries"]) == {"onedc-nano_q1-nano_q5", "jpeg"}
    jpeg = json.loads((tmp_path / "results" / "nano" / "jpeg.json").read_text())
    assert jpeg["images"]["count"] == 2 and len(jpeg["points"]) == 13
    assert jpeg["points"][0]["fid"] is None and "192" in jpeg["points"][0]["fid_kid"]["fid_missing"]
    onedc = json.loads((tmp_path / "results" / "nano" / "onedc-nano_q1-nano_q5.json").read_text())
    assert [p["rate"] for p in onedc["points"]] == ["nano_q1", "nano_q2", "nano_q4", "nano_q5"]
    assert "figures/rd_nano.png" not in result["figures"] and "rd_nano.png" in result["figures"]
    table = (tmp_path / "figures" / "tables" / "bdrate_onedc_nano.md").read_text()
    assert "| onedc-nano_q1-nano_q5 | jpeg |" in table
    assert (tmp_path / "figures" / "tables" / "bdrate_onedc_nano.csv").read_text().startswith("codec,anchor,psnr")


def test_the_family_picks_the_bundled_models_and_the_results_folder(data, folders, tmp_path, monkeypatch):
    """Bundled nano and nano_sr models side by side: each family is its own rate points (nano_sr_* are not nano's),
    the default is the default model's family, and its results go to results/<family>/."""
    bundled = tmp_path / "bundled"
    for name, source in (("nano_q1", "nano_q1"), ("nano_zonly", "nano_zonly"), ("nano_sr_q2", "nano_q2"),
                         ("nano_sr_zonly", "nano_zonly")):
        shutil.copytree(folders[source], bundled / name)
    monkeypatch.setenv("ONEDC_BUNDLED_DIR", str(bundled))
    assert nano.nano_codecs(family="nano") == ["onedc:nano_q1", "onedc:nano_zonly"]
    assert nano.nano_codecs(family="nano_sr") == ["onedc:nano_sr_q2", "onedc:nano_sr_zonly"]
    monkeypatch.setattr(weights, "DEFAULT_MODEL", "nano_sr_q3")
    assert nano.nano_codecs() == ["onedc:nano_sr_q2", "onedc:nano_sr_zonly"]
    nano.nano_results(data, tmp_path / "results", out_dir=tmp_path / "out", baselines=["jpeg"], onedc=False,
                      figures=False, metrics=["psnr"], progress=False)
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["nano_sr"]
    assert (tmp_path / "results" / "nano_sr" / "jpeg.json").is_file()
