"""The library functions behind the notebooks, without a kernel: rate ladders, the demo explorer, the bitstream
anatomy, figures from results files, smoke outputs kept out of results/ and figures/."""
import json
from pathlib import Path

import pytest
import torch

from onedc_lib.anatomy import bitstream_anatomy
from onedc_lib.figures import markdown_table, regenerate
from onedc_lib.paths import output_dir
from onedc_lib.data.samples import load_demo_image
from onedc_lib.weights import available_models
from onedc_lib.widgets import RateExplorer


def test_rate_ladder_orders_zonly_then_q1_up_and_marks_untrained():
    ladder = available_models("nano")
    names = [c.name for c in ladder]
    assert names[0] == "nano_zonly" and names[1:] == sorted(names[1:], key=lambda n: int(n.split("_q")[1]))
    assert all(not c.trained and "UNTRAINED" in c.label for c in ladder)
    assert [c.name for c in available_models("nano", ["nano_q2"])] == ["nano_q2"]
    with pytest.raises(ValueError, match="no models of family"):
        available_models("nope")
    with pytest.raises(ValueError, match="unknown model"):
        available_models("nano", ["not_a_model"])


def test_demo_image_is_shrunk_and_8_bit(tmp_path):
    name, x = load_demo_image("coffee", 100)
    assert name == "coffee" and max(x.shape[-2:]) == 100
    assert torch.equal(x, (x * 255).round() / 255)
    from onedc_lib.image_io import save_image

    save_image(x, tmp_path / "c.png")
    assert load_demo_image(str(tmp_path / "c.png"))[0] == "c"
    with pytest.raises(FileNotFoundError, match="neither a sample"):
        load_demo_image(str(tmp_path / "missing.png"))


def test_explorer_caches_and_spots_identical_models(tmp_path):
    explorer = RateExplorer("chelsea", models=["nano_q1", "nano_q2"], max_side=48, out_dir=tmp_path,
                            metrics=("psnr",))
    first = explorer.result("nano_q1")
    assert explorer.result("nano_q1") is first  # cached
    second = explorer.result("nano_q2")
    # the nano presets differ in lambda only: untrained, they are one model and write one file
    assert second["same_model_as"] == "nano_q1" and second["bytes"] == first["bytes"]
    from onedc_lib.bitstream import read_file

    a, b = read_file(tmp_path / "chelsea_nano_q1.odc"), read_file(tmp_path / "chelsea_nano_q2.odc")
    assert a.model_id == b.model_id
    assert [a.section(n).payload for n in ("z", "y")] == [b.section(n).payload for n in ("z", "y")]
    assert "same model (same id) as nano_q1" in explorer.summary_text("nano_q2")
    with pytest.raises(ValueError, match="not one of this explorer's models"):
        explorer.result("nano_q5")


def test_explorer_takes_model_folders(tmp_path):
    from onedc_lib.weights import build_model, save_model

    folder = save_model(build_model("nano_zonly"), tmp_path / "my_model")
    ladder = available_models("nano", [str(folder)])
    assert ladder[0].trained and ladder[0].label == "my_model"
    with pytest.raises(ValueError, match="overrides apply to models built from presets"):
        RateExplorer("chelsea", models=[str(folder)], overrides={"codec.internal_ch": 32})
    explorer = RateExplorer("chelsea", models=[str(folder)], max_side=40, out_dir=tmp_path, metrics=("psnr",))
    row = explorer.compress_all()[0]
    assert row["trained"] and row["sections"] == {"z": 2} and row["notes"] == []


def test_anatomy_of_a_release_file(compat_dir):
    anatomy = bitstream_anatomy(compat_dir / "codec_small_e2e.bin")
    assert anatomy.format == "release" and anatomy.header_bytes == 16
    assert [s["name"] for s in anatomy.sections] == ["y", "z"]
    assert anatomy.total_bytes == (compat_dir / "codec_small_e2e.bin").stat().st_size
    assert anatomy.steps == [] and "release model" in anatomy.notes[0]
    anatomy.figure()


def test_anatomy_without_the_writing_model(tmp_path):
    from onedc_lib.anatomy import file_anatomy

    anatomy = file_anatomy(image="chelsea", model="nano_q3", out_dir=tmp_path, smoke=True)
    assert len(anatomy.steps) == 4
    other = bitstream_anatomy(tmp_path / "chelsea.odc", "nano_zonly")
    assert other.steps == [] and "not by the given" in other.notes[-1]
    bare = bitstream_anatomy((tmp_path / "chelsea.odc").read_bytes())
    assert bare.steps == [] and bare.path is None and bare.bpp == anatomy.bpp


def test_smoke_output_never_goes_to_committed_folders(tmp_path):
    assert output_dir(tmp_path / "results", tmp_path / "scratch", smoke=True) == tmp_path / "scratch"
    assert output_dir(tmp_path / "results", tmp_path / "scratch", smoke=False) == tmp_path / "results"
    assert output_dir("", tmp_path / "scratch", smoke=False) == tmp_path / "scratch"


def test_figures_from_nothing_and_from_unknown_files(tmp_path):
    outputs = regenerate(tmp_path / "missing", tmp_path / "figs")
    assert outputs.entries == [] and "no results folder" in outputs.notes[0]
    results = tmp_path / "results"
    results.mkdir()
    (results / "other.json").write_text(json.dumps({"hello": 1}))
    (results / "list.json").write_text("[1, 2]")
    outputs = regenerate(results, tmp_path / "figs")
    assert outputs.entries == [] and len(outputs.notes) == 2
    outputs.preview()
    with pytest.raises(ValueError, match="unknown options"):
        regenerate(results, tmp_path / "figs", options={"colour": "red"})


def test_rd_figures_tables_and_bdrate_from_summaries(tmp_path):
    results = tmp_path / "results" / "kodak"
    results.mkdir(parents=True)
    for codec, shift in (("hevc", 0.0), ("jpeg", 0.3), ("onedc-nano_q1+nano_q2", 0.0)):
        points = [{"rate": q, "bpp": b * (1 + shift), "psnr": 25 + 10 * b, "lpips": 0.4 - 0.2 * b}
                  for q, b in enumerate((0.1, 0.2, 0.4, 0.8) if "onedc" not in codec else (0.05, 0.1))]
        summary = {"codec": codec, "label": codec, "points": points, "metrics": ["psnr", "lpips"],
                   "kind": "onedc" if "onedc" in codec else "baseline",
                   "images": {"count": 3, "sha256": {"a": "1", "b": "2", "c": "3"}},
                   "codec_info": {"models": {"nano_q1": {"untrained_parts": ["codec"]}}} if "onedc" in codec
                   else {}}
        (results / f"{codec}.json").write_text(json.dumps(summary))
    figs = tmp_path / "figs"
    outputs = regenerate(tmp_path / "results", figs, anchor="hevc")
    assert {p.name for p in outputs.figures} == {"rd_kodak.png"}
    bd = (figs / "tables" / "bdrate_kodak.csv").read_text().splitlines()
    assert bd[0] == "codec,anchor,psnr,lpips"
    jpeg = next(line for line in bd if line.startswith("jpeg,hevc,"))
    assert float(jpeg.split(",")[2]) == pytest.approx(30.0, abs=0.01)  # 30% more bits at equal quality
    assert "n/a (2 points)" in next(line for line in bd if line.startswith("onedc"))
    rd = (figs / "tables" / "rd_kodak.md").read_text()
    assert "| onedc-nano_q1+nano_q2 | 0 | 0.0500 |" in rd and "yes |" in rd  # untrained marked
    # another folder on the same images: its own figure, and one with both folders' codecs
    (tmp_path / "results" / "more").mkdir()
    (tmp_path / "results" / "more" / "webp.json").write_text(
        (results / "jpeg.json").read_text().replace('"jpeg"', '"webp"'))
    outputs = regenerate(tmp_path / "results", figs, anchor="hevc")
    assert {p.name for p in outputs.figures} == {"rd_kodak.png", "rd_more.png", "rd_kodak_more.png"}
    both = (figs / "tables" / "rd_kodak_more.csv").read_text()
    assert "\nwebp," in both and "\nhevc," in both
    (tmp_path / "results" / "more" / "webp.json").unlink()
    (figs / "old.png").write_bytes(b"x")
    stale = regenerate(tmp_path / "results", figs, anchor="hevc").stale
    assert "old.png" in stale and "rd_more.png" in stale and "tables/rd_kodak_more.md" in stale
    assert regenerate(tmp_path / "results", figs, anchor="hevc", prune=True).stale == stale
    assert not (figs / "old.png").exists() and not (figs / "rd_more.png").exists()


def test_markdown_table_escapes_and_formats():
    text = markdown_table([{"a": "x|y", "b": 1.23456, "c": None, "d": float("inf")}], ["a", "b", "c", "d"], "T")
    assert text.splitlines()[0] == "### T"
    assert "| x\\|y | 1.2346 |  | inf |" in text


def test_contract_tool_strips_in_place(tmp_path):
    from onedc_lib.nbcontract import main

    repo = Path(__file__).resolve().parents[2]
    nb = json.loads((repo / "notebooks" / "01_bitstream_anatomy.ipynb").read_text())
    nb["cells"][2]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "hi"}]
    nb["cells"][2]["execution_count"] = 1
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(nb))
    assert main(["check", str(path)]) == 1
    assert main(["strip", str(path)]) == 0
    assert main(["check", str(path)]) == 0
