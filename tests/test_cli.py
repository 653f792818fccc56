"""The `onedc` command line: help, info on valid and invalid files, compress and decompress of files and folders
(nano model), exit codes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import onedc_lib
from onedc_lib import bitstream
from onedc_lib.cli import main

REPO = Path(__file__).resolve().parents[1]
MODEL_ID = bytes.fromhex("00112233445566778899aabbccddeeff")


@pytest.fixture
def odc_file(tmp_path) -> Path:
    path = tmp_path / "image.odc"
    bitstream.write_file(path, bitstream.Container(MODEL_ID, bytes(range(8)), 120, 180, (
        bitstream.Section("z", bytes(11)), bitstream.Section("y", b"\x01abc", symbols_crc=0x1234))))
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv", [[], ["info"], ["compress"], ["decompress"]])
def test_help(capsys, argv):
    code, out, _ = run(capsys, *argv, "--help")
    assert code == 0 and out.startswith("usage: onedc")
    for word in {(): ["info", "compress", "decompress", "models", "bundle"], ("info",): ["FILE", "--json"],
                 ("compress",): ["IN", "-o OUT", "--model NAME", "onedc models"],
                 ("decompress",): ["IN", "-o OUT", "--model NAME", "onedc models"]}[tuple(argv)]:
        assert word in out


def test_usage_errors(capsys):
    assert run(capsys)[0] == 2
    assert run(capsys, "frobnicate")[0] == 2
    code, _, err = run(capsys, "compress", "in.png")
    assert code == 2 and "-o/--output" in err
    assert run(capsys, "--version")[1] == f"onedc {onedc_lib.__version__}\n"


def test_info_on_our_container(capsys, odc_file):
    code, out, err = run(capsys, "info", str(odc_file))
    assert code == 0 and err == ""
    assert f"OneDC container, version {bitstream.VERSION}" in out
    assert MODEL_ID.hex() in out and "0001020304050607" in out
    assert "180 x 120 (W x H), padded to 192 x 128" in out
    assert "symbols crc32 00001234" in out
    assert f"total       {odc_file.stat().st_size} bytes" in out

    code, out, _ = run(capsys, "info", "--json", str(odc_file))
    facts = json.loads(out)
    assert code == 0 and facts["format"] == "onedc" and facts["model_id"] == MODEL_ID.hex()
    assert [s["name"] for s in facts["sections"]] == ["z", "y"]
    assert facts["total_bytes"] == odc_file.stat().st_size == 47 + 13 + 17 + 11 + 4
    assert facts["bpp"] == 8 * facts["total_bytes"] / (120 * 180)


@pytest.mark.parametrize("name, h, w, y_len", [("codec_small_e2e.bin", 120, 180, 2004),
                                               ("assembled_512x512.bin", 512, 512, 59195)])
def test_info_on_release_files(capsys, compat_dir, name, h, w, y_len):
    code, out, _ = run(capsys, "info", "--json", str(compat_dir / name))
    facts = json.loads(out)
    assert code == 0 and facts["format"] == "release"
    assert (facts["height"], facts["width"], facts["sections"][0]["bytes"]) == (h, w, y_len)
    assert facts["total_bytes"] == (compat_dir / name).stat().st_size
    code, out, _ = run(capsys, "info", str(compat_dir / name))
    assert code == 0 and out.startswith(f"file        {compat_dir / name}\nformat      release")


def test_info_on_invalid_files(capsys, tmp_path, odc_file):
    data = odc_file.read_bytes()
    cases = {"empty": (b"", 1, "empty file"), "garbage": (b"\x00garbage" * 10, 1, "nor a release-format file"),
             "truncated.odc": (data[:-3], 1, "file truncated: expected 3 more bytes"),
             "corrupt.odc": (data[:-1] + b"\xff", 1, "CRC mismatch in section y")}
    for name, (content, expected, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        code, out, err = run(capsys, "info", str(tmp_path / name))
        assert (code, out) == (expected, "") and message in err
        assert err.count("\n") == 1 and err.startswith("onedc: ")
    for path, message in ((tmp_path / "missing.odc", "No such file or directory"), (tmp_path, "Is a directory")):
        code, _, err = run(capsys, "info", str(path))
        assert code == 1 and message in err and err.count("\n") == 1


def test_info_refuses_huge_files_without_reading_them(capsys, tmp_path):
    path = tmp_path / "huge.odc"
    with open(path, "wb") as f:
        f.truncate(bitstream.MAX_FILE_BYTES + 1)  # sparse: no disk used
    code, _, err = run(capsys, "info", str(path))
    assert code == 1 and "exceeds the limit of 1073741824 bytes" in err


def test_compress_and_decompress_check_arguments(capsys, tmp_path, odc_file):
    code, _, err = run(capsys, "compress", str(tmp_path / "nope.png"), "-o", "x.odc")
    assert code == 1 and "No such file or directory" in err
    (tmp_path / "file").write_bytes(b"")
    code, _, err = run(capsys, "compress", str(tmp_path), "-o", str(tmp_path / "file"))
    assert code == 2 and "must be a folder" in err
    code, _, err = run(capsys, "decompress", str(odc_file), "-o", str(tmp_path / "out.png"), "--model", "nano_q1")
    assert code == 1 and f"{odc_file}: this file was written by model {MODEL_ID.hex()}" in err
    assert not (tmp_path / "out.png").exists()


def test_subprocess_exit_codes_and_no_torch(tmp_path, odc_file):
    """The real process: exit status, one-line errors, and a start-up that does not import torch."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(100))
    result = subprocess.run([sys.executable, "-m", "onedc_lib.cli", "info", str(garbage)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "onedc_lib.cli", "frobnicate"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)  # not a quick-exit command: sys.exit
    assert result.returncode == 2 and "frobnicate" in result.stderr
    check = ("import sys; from onedc_lib.cli import main; code = main(['info', sys.argv[1]]); "
             "sys.exit(code if 'torch' not in sys.modules else 99)")
    result = subprocess.run([sys.executable, "-c", check, str(odc_file)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "OneDC container" in result.stdout


# ------------------------------------------------------------------------------------- compress / decompress (nano)
def write_png(path: Path, height: int, width: int, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.height, image.width


@pytest.mark.usefixtures("one_thread")
def test_compress_info_decompress(capsys, tmp_path):
    from onedc_lib.image_io import load_image
    from onedc_lib.weights import build_model

    source, odc, png = write_png(tmp_path / "img.png", 63, 65), tmp_path / "out.odc", tmp_path / "rec.png"
    code, out, err = run(capsys, "compress", str(source), "-o", str(odc), "--model", "nano")
    assert code == 0
    size = odc.stat().st_size
    assert out == f"{source} -> {odc}: 65 x 63 (W x H), {size} bytes, {8 * size / (63 * 65):.4f} bpp\n"
    assert err.startswith("onedc: warning: no trained weights for 'nano'") and err.count("\n") == 1
    assert odc.read_bytes() == build_model("nano").compress(load_image(source)[None]).to_bytes()

    code, out, _ = run(capsys, "info", str(odc))
    assert code == 0 and "65 x 63 (W x H), padded to 128 x 64" in out and f"total       {size} bytes" in out

    code, out, _ = run(capsys, "decompress", str(odc), "-o", str(png), "--model", "nano")
    assert code == 0 and out == f"{odc} -> {png}: 65 x 63 (W x H)\n"
    assert image_size(png) == (63, 65)


@pytest.mark.usefixtures("one_thread")
def test_folders(capsys, tmp_path):
    images, codes, decoded = tmp_path / "images", tmp_path / "codes", tmp_path / "decoded"
    write_png(images / "a.png", 20, 30)
    write_png(images / "sub" / "b.png", 64, 64, seed=1)
    from PIL import Image

    Image.open(images / "a.png").save(images / "c.jpg")
    (images / "notes.txt").write_text("not an image: skipped by suffix")
    code, out, err = run(capsys, "compress", str(images), "-o", str(codes), "--model", "nano")
    assert code == 0 and out.count("\n") == 3
    assert sorted(str(p.relative_to(codes)) for p in codes.rglob("*") if p.is_file()) == [
        "a.odc", "c.odc", "sub/b.odc"]

    code, out, err = run(capsys, "decompress", str(codes), "-o", str(decoded), "--model", "nano")
    assert code == 0 and out.count("\n") == 3
    assert image_size(decoded / "a.png") == image_size(decoded / "c.png") == (20, 30)
    assert image_size(decoded / "sub" / "b.png") == (64, 64)


@pytest.mark.usefixtures("one_thread")
def test_bad_files_among_good_ones(capsys, tmp_path):
    images, codes, decoded = tmp_path / "images", tmp_path / "codes", tmp_path / "decoded"
    write_png(images / "a.png", 10, 10)
    (images / "b.png").write_bytes(b"not a png")
    write_png(images / "c.png", 10, 12)
    code, out, err = run(capsys, "compress", str(images), "-o", str(codes), "--model", "nano")
    assert code == 1
    assert sorted(p.name for p in codes.iterdir()) == ["a.odc", "c.odc"]  # the good ones are written
    assert f"onedc: {images / 'b.png'}: not a readable image" in err

    (codes / "b.odc").write_bytes((codes / "a.odc").read_bytes()[:-1])  # truncated
    (decoded / "c.png").mkdir(parents=True)  # an output that cannot be written, even with --force
    code, out, err = run(capsys, "decompress", str(codes), "-o", str(decoded), "--model", "nano", "--force")
    assert code == 1  # a file that cannot be written, like a bad file, is bad data (exit 1)
    assert f"onedc: {codes / 'b.odc'}: file truncated" in err
    assert f"onedc: {codes / 'c.odc'} -> {decoded / 'c.png'}: cannot access" in err
    assert sorted(p.name for p in decoded.iterdir()) == ["a.png", "c.png"] and (decoded / "c.png").is_dir()
    assert image_size(decoded / "a.png") == (10, 10)


@pytest.mark.usefixtures("one_thread")
def test_unknown_model_is_a_usage_error(capsys, tmp_path):
    source = write_png(tmp_path / "img.png", 8, 8)
    code, out, err = run(capsys, "compress", str(source), "-o", str(tmp_path / "x.odc"), "--model", "nope")
    assert code == 2 and out == "" and err.startswith("onedc: unknown model 'nope'") and err.count("\n") == 1
    assert not (tmp_path / "x.odc").exists()


@pytest.mark.usefixtures("one_thread")
def test_decompress_with_another_model(tmp_path):
    """In a real process: exit 1 and the model-id message as the last stderr line, no traceback, no output."""
    source, odc, png = write_png(tmp_path / "img.png", 8, 8), tmp_path / "img.odc", tmp_path / "img.png.png"
    assert main(["compress", str(source), "-o", str(odc), "--model", "nano"]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "onedc_lib.cli", "decompress", str(odc), "-o", str(png),
                             "--model", "nano_zonly"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()  # tests see no bundled models (conftest): nano_zonly is the random preset
    assert lines[0].startswith("onedc: warning: no trained weights for 'nano_zonly'")
    assert lines[-1].startswith(f"onedc: {odc}: this file was written by model ") and "nano_zonly" in lines[-1]
    assert len(lines) == 2 and not png.exists()


def test_compress_loads_only_what_compress_runs(tmp_path, capsys):
    """onedc compress keeps only the encoder side (OneDC.keep_only): no generator, no VAE decoder in memory."""
    from onedc_lib import cli

    model = cli._load_model("nano_q3", keep="compress")
    assert model.kept == "compress" and not hasattr(model, "generator")
    assert model.vae.autoencoder.decoder is None
