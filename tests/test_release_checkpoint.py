"""Release checkpoint folders (weights.load_release_folder, release_checkpoint.py) and release files from the
command line (release_cli.py): `--model FOLDER` with its VAE, `onedc import-release`, `compress --format release`,
`decompress` of release files, and the errors for a wrong folder, a missing VAE and a truncated safetensors file.
The model is the release's architecture at reduced width (about the compat 4.3 codec widths, a two-level UNet, the
9.1 VAE widths): the sd15 classes and key names, small enough to build in a test."""
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from onedc_lib.cli import main
from onedc_lib.models import release as release_files
from onedc_lib.paths import RELEASE_PRESET_ENV as PRESET_ENV
from onedc_lib.paths import RELEASE_VAE_ENV as VAE_ENV
from onedc_lib.release_checkpoint import import_release, load_release_folder
from onedc_lib.weights import WeightsError, build_model, load_model

TINY = """base: sd15
codec: {ctrl_ch: 64, internal_ch: 64, bottleneck_ch: 24, unet_ch: [32, 32, 32], semantic_ch: 32}
generator:
  unet: {sample_size: 8, block_out_channels: [32, 32], layers_per_block: 1, cross_attention_dim: 32,
         down_block_types: [CrossAttnDownBlock2D, DownBlock2D], up_block_types: [UpBlock2D, CrossAttnUpBlock2D]}
  lora_rank: 8
vae:
  autoencoder: {block_out_channels: [16, 16, 32, 32], layers_per_block: 1, norm_num_groups: 8, sample_size: 256}
"""


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """(release folder, VAE folder, preset YAML, the model they were written from)."""
    root = tmp_path_factory.mktemp("release")
    preset = root / "tiny_release.yaml"
    preset.write_text(TINY)
    model = build_model(str(preset), seed=3)
    folder = root / "checkpoint"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.generator.unet.state_dict().items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    save_file({k: v.contiguous() for k, v in model.codec.state_dict().items()}, folder / "model_1.safetensors",
              metadata={"format": "pt"})
    model.vae.autoencoder.save_pretrained(root / "vae")
    return folder, root / "vae", preset, model


@pytest.fixture
def env(release, monkeypatch):
    """The release's VAE and preset in the environment, as --vae / --release-preset set them."""
    folder, vae, preset, _ = release
    monkeypatch.setenv(VAE_ENV, str(vae))
    monkeypatch.setenv(PRESET_ENV, str(preset))


def image(h=72, w=88):
    y, x = np.mgrid[0:h, 0:w]
    return torch.from_numpy(np.stack([x / w, y / h, 0.5 + 0.3 * np.sin(x / 5)]).astype(np.float32))[None]


def test_a_release_folder_loads_strictly_with_its_vae(release):
    folder, vae, preset, original = release
    model = load_release_folder(folder, vae, str(preset))
    assert model.untrained_parts == ()
    mine, theirs = model.state_dict(), original.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_release_folder_as_model_name_and_its_errors(release, env, monkeypatch, tmp_path):
    folder, vae, preset, original = release
    assert load_model(str(folder)).model_id == load_release_folder(folder, vae, str(preset)).model_id
    monkeypatch.delenv(VAE_ENV)
    with pytest.raises(WeightsError, match="needs the SD-2.1 VAE.*--vae DIR"):
        load_model(str(folder))
    with pytest.raises(WeightsError, match="no VAE at"):
        load_release_folder(folder, tmp_path / "nowhere", str(preset))
    (tmp_path / "notavae").mkdir()
    with pytest.raises(WeightsError, match="does not load as"):
        load_release_folder(folder, tmp_path / "notavae", str(preset))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="nor a release checkpoint folder"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(WeightsError, match="model_1.safetensors missing"):
        load_release_folder(tmp_path / "empty", vae, str(preset))
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    whole = (folder / "model_1.safetensors").read_bytes()
    (cut / "model_1.safetensors").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(WeightsError, match=f"truncated: {len(whole) // 2} bytes, its header describes {len(whole)}"):
        load_release_folder(cut, vae, str(preset))


def test_import_release_references_the_files(release, tmp_path):
    folder, vae, preset, original = release
    out = import_release(folder, vae, tmp_path / "imported", str(preset))
    meta = json.loads((out / "config.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # nothing copied
    for entry in meta["release"]["files"]:
        data = open(entry["path"], "rb").read()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert {e["path"] for e in meta["release"]["files"]} >= {str(folder / "model_1.safetensors"),
                                                             str(vae / "config.json")}
    model = load_model(str(out))
    assert model.model_id.hex() == meta["model_id"]
    assert torch.equal(model.codec.state_dict()["hyper_dec.feat_in.0.weight"],
                       original.codec.state_dict()["hyper_dec.feat_in.0.weight"])
    meta["release"]["files"][1]["bytes"] += 1  # as if model_1.safetensors had been replaced by another
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="which has changed"):
        load_model(str(out))


def test_command_line_release_files_in_and_out(release, tmp_path, monkeypatch, capsys):
    """import-release, then compress --format release and decompress with the imported model; the release file
    decodes (float32-cpu numerics) to the image our own container gives, within float rounding."""
    folder, vae, preset, _ = release
    monkeypatch.setenv(VAE_ENV, "")  # restored after the test: --vae sets it for the process
    monkeypatch.setenv(PRESET_ENV, "")
    Image.fromarray((image()[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / "a.png")
    assert main(["import-release", str(folder), "--vae", str(vae), "--release-preset", str(preset),
                 "-o", str(tmp_path / "model")]) == 0
    model = ["--model", str(tmp_path / "model")]
    assert main(["compress", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.bin"), "--format", "release",
                 *model]) == 0
    data = (tmp_path / "a.bin").read_bytes()
    assert int.from_bytes(data[:4], "big") == 72 and int.from_bytes(data[4:8], "big") == 88  # the release header
    assert main(["decompress", str(tmp_path / "a.bin"), "-o", str(tmp_path / "a_release.png"), *model]) == 0
    assert "decoded with the release's float32-cpu numerics" in capsys.readouterr().err
    assert main(["compress", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.odc"), *model]) == 0
    assert main(["decompress", str(tmp_path / "a.odc"), "-o", str(tmp_path / "a_odc.png"), *model]) == 0
    ours, theirs = (np.asarray(Image.open(tmp_path / f"a_{n}.png")).astype(int) for n in ("odc", "release"))
    assert ours.shape == theirs.shape == (72, 88, 3) and np.abs(ours - theirs).max() <= 1

    # the release checkpoint folder itself as --model, its VAE given on the command line
    assert main(["decompress", str(tmp_path / "a.bin"), "-o", str(tmp_path / "b.png"), "--model", str(folder),
                 "--vae", str(vae), "--release-preset", str(preset), "--numerics", "float32-cpu"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), theirs.astype(np.uint8))
    decoded = release_files.decompress(load_model(str(tmp_path / "model")), data)[0]  # the library's call
    assert np.array_equal((decoded[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8), theirs)
    damaged = bytearray(data)
    damaged[40] ^= 0x55
    (tmp_path / "bad.bin").write_bytes(bytes(damaged))
    assert main(["decompress", str(tmp_path / "bad.bin"), "-o", str(tmp_path / "bad.png"), *model]) == 1
    err = capsys.readouterr().err
    assert "bad.bin" in err and ("final state" in err or "cannot be decoded" in err)
    assert not (tmp_path / "bad.png").exists()


def test_the_z_only_release_model(release, tmp_path):
    """The z-only model's files look like the others: its architecture comes from the preset. It sends z alone
    (14 bits per 64 x 64 block) and has no release-format files (the release writes none for it)."""
    from onedc_lib.bitstream import BitstreamError

    folder, vae, preset, _ = release
    zonly = tmp_path / "tiny_zonly.yaml"
    zonly.write_text(f"base: {preset}\ncodec: {{z_only: true}}\n")
    model = load_release_folder(folder, vae, str(zonly))
    compressed = model.compress(image())
    assert model.config.codec.z_only and compressed.container.section_names == ("z",)
    assert len(compressed.container.section("z").payload) == 7  # 2 x 2 blocks of 14 bits
    assert model.decompress(compressed.to_bytes()).shape == (1, 3, 72, 88)
    with pytest.raises(BitstreamError, match="z-only"):
        release_files.compress(model, image())
