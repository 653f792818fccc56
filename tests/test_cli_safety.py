"""What a user expects of `onedc compress / decompress / info`: inputs never destroyed, existing outputs replaced only
with -f, clean errors (empty folder, read-only folder, Ctrl-C), the model found from the file, checked API inputs.
Models are the nano preset (seeded random weights) or folders saved from it: tests see no bundled models."""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onedc_lib.cli import main
from onedc_lib.weights import build_model, save_model

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_png(path: Path, height: int, width: int, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_an_output_that_is_an_input_is_refused(capsys, tmp_path):
    photo = write_png(tmp_path / "photo.png", 16, 16)
    before = photo.read_bytes()
    for force in ((), ("-f",)):
        code, out, err = run(capsys, "compress", photo, "-o", photo, "--model", "nano", *force)
        assert code == 2 and out == "" and "is an input" in err and err.count("\n") == 1
    code, _, err = run(capsys, "compress", photo, "-o", tmp_path / "." / "photo.png", "--force", "--model", "nano")
    assert code == 2 and "is an input" in err
    (tmp_path / "link.odc").symlink_to(photo)
    code, _, err = run(capsys, "compress", photo, "-o", tmp_path / "link.odc", "--force", "--model", "nano")
    assert code == 2 and "is an input" in err
    (tmp_path / "a.odc").write_bytes(b"x")
    code, _, err = run(capsys, "decompress", tmp_path / "a.odc", "-o", tmp_path / "a.odc", "-f", "--model", "nano")
    assert code == 2 and "is an input" in err and (tmp_path / "a.odc").read_bytes() == b"x"
    assert photo.read_bytes() == before


def test_existing_outputs_are_replaced_only_with_force(capsys, tmp_path):
    photo, odc = write_png(tmp_path / "photo.png", 16, 24), tmp_path / "photo.odc"
    odc.write_bytes(b"precious")
    code, out, err = run(capsys, "compress", photo, "-o", odc, "--model", "nano")
    assert code == 2 and out == "" and f"{odc} already exists: -f/--force replaces" in err
    assert odc.read_bytes() == b"precious"
    code, out, _ = run(capsys, "compress", photo, "-o", odc, "--model", "nano", "-f")
    assert code == 0 and odc.read_bytes()[:8] != b"precious"[:8] and "24 x 16 (W x H)" in out

    images, codes = tmp_path / "images", tmp_path / "codes"
    write_png(images / "a.png", 8, 8)
    write_png(images / "b.png", 8, 8, seed=1)
    codes.mkdir()
    (codes / "b.odc").write_bytes(b"older")
    code, out, err = run(capsys, "compress", images, "-o", codes, "--model", "nano")
    assert code == 2 and out == "" and "b.odc already exists" in err
    assert sorted(p.name for p in codes.iterdir()) == ["b.odc"]  # refused before any work
    code, out, _ = run(capsys, "compress", images, "-o", codes, "--model", "nano", "--force")
    assert code == 0 and (codes / "b.odc").read_bytes() != b"older" and (codes / "a.odc").is_file()


def test_empty_folder_is_an_error(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    code, out, err = run(capsys, "compress", tmp_path / "empty", "-o", tmp_path / "out", "--model", "nano")
    assert code == 1 and out == "" and "nothing to do" in err and str(tmp_path / "empty") in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_names_the_output(capsys, tmp_path):
    photo, folder = write_png(tmp_path / "photo.png", 8, 8), tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, err = run(capsys, "compress", photo, "-o", folder / "photo.odc", "--model", "nano")
    finally:
        folder.chmod(0o755)
    assert code == 1 and f"cannot access {folder / 'photo.odc'}: Permission denied" in err and ".tmp" not in err


def test_a_failed_write_names_the_file_not_the_temporary_one(tmp_path):
    from onedc_lib.bitstream import atomic_write

    target = tmp_path / "missing" / "photo.odc"
    with pytest.raises(FileNotFoundError) as error:
        atomic_write(target, b"data")
    assert error.value.filename == str(target)


def test_help_documents_exit_codes(capsys):
    for argv in ([], ["compress"], ["decompress"]):
        code, out, _ = run(capsys, *argv, "--help")
        text = " ".join(out.split())
        assert code == 0 and "0 done; 1 bad input or data" in text and "2 usage" in text and "130 interrupted" in text
    code, out, _ = run(capsys, "compress", "--help")
    assert "-f, --force" in out


@pytest.mark.parametrize("value, expected", [
    (float("nan"), "1 NaN or infinite values"),
    (float("inf"), "1 NaN or infinite values"),
    (255.0, "got values in [0.5, 255] (8-bit values? divide by 255)"),
    (-1.0, "got values in [-1, 0.5] (values in [-1, 1]? use (x + 1) / 2)"),
])
def test_api_refuses_values_outside_0_1(value, expected):
    model = build_model("nano")
    x = torch.full((1, 3, 16, 16), 0.5)
    x[0, 0, 0, 0] = value
    with pytest.raises(ValueError) as error:
        model.compress(x)
    assert expected in str(error.value)
    x[0, 0, 0, 0] = 1.0
    assert model.compress(x).num_bytes > 0  # [0, 1] itself is fine


@pytest.fixture
def own_models(tmp_path, monkeypatch):
    """A bundled model 'mine' and a cached one, both the nano_zonly preset's seeded weights saved as model folders
    (different seeds: different model ids)."""
    bundled, cache = tmp_path / "bundled", tmp_path / "cache"
    monkeypatch.setenv("ONEDC_BUNDLED_DIR", str(bundled))
    monkeypatch.setenv("ONEDC_CACHE", str(cache))
    mine = build_model("nano_zonly", seed=1)
    cached = build_model("nano_zonly", seed=2)
    save_model(mine, bundled / "mine")
    save_model(cached, cache / "models" / "imported")
    return {"mine": mine.model_id.hex(), "imported": cached.model_id.hex(), "cached_dir": cache / "models"}


def test_decompress_finds_the_model_the_file_names(capsys, tmp_path, own_models):
    photo = write_png(tmp_path / "photo.png", 16, 16)
    for name in ("mine", str(own_models["cached_dir"] / "imported")):
        odc, png = tmp_path / f"{Path(name).name}.odc", tmp_path / f"{Path(name).name}.png"
        assert run(capsys, "compress", photo, "-o", odc, "--model", name)[0] == 0
        code, out, err = run(capsys, "info", odc)
        assert code == 0 and f"({name})" in out
        code, out, err = run(capsys, "decompress", odc, "-o", png)
        assert code == 0 and out.rstrip().endswith(f"model {name}") and png.is_file(), err

    code, _, err = run(capsys, "decompress", tmp_path / "mine.odc", "-o", tmp_path / "x.png", "--model", "nano")
    assert code == 1 and f"{own_models['mine']} (mine)" in err and "(nano)" in err and "decode it with mine" in err
    assert not (tmp_path / "x.png").exists()

    (tmp_path / "bundled" / "mine" / "config.json").unlink()  # the file's model is no longer here
    code, out, err = run(capsys, "decompress", tmp_path / "mine.odc", "-o", tmp_path / "y.png")
    assert code == 1 and out == "" and f"written by model {own_models['mine']}, which is neither bundled" in err
    code, out, _ = run(capsys, "info", tmp_path / "mine.odc")
    assert code == 0 and "(not a model here)" in out


def test_ctrl_c_exits_130_with_one_line_and_no_output(tmp_path):
    """A real process sent SIGINT while it decodes: one line, exit 130, no output file and no temporary file."""
    odc, png = tmp_path / "img.odc", tmp_path / "img.png"
    assert main(["compress", str(write_png(tmp_path / "src.png", 256, 256)), "-o", str(odc), "--model", "nano"]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "onedc_lib.cli", "decompress", str(odc), "-o", str(png),
                                "--model", "nano"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               # a suite started in the background inherits SIGINT ignored: give the child Python's
                               # own handler back, as a terminal would
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = process.stderr.readline()  # the untrained-model warning: the model is loaded, decoding starts
    assert first.startswith("onedc: warning:"), first
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and out == ""
    assert err == "onedc: interrupted\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.odc", "src.png"]


def test_a_long_single_image_shows_that_the_work_goes_on(tmp_path):
    """On a terminal (a pseudo-terminal here), one image of a megapixel or more gets a bar over the model's pieces
    of work (8 to compress) with the seconds so far; it is cleared before the result line."""
    import fcntl
    import pty
    import struct
    import termios

    source, odc = write_png(tmp_path / "big.png", 1024, 1024), tmp_path / "big.odc"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "onedc_lib.cli", "compress", str(source), "-o", str(odc),
                                "--model", "nano"], cwd=REPO, env=env, stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert process.wait(timeout=600) == 0
    assert re.search(rb"compress " + re.escape(str(source).encode()) + rb":   0%\| +\| 0/8 pieces \[\d\d:\d\d\]", seen)
    assert seen.rstrip().endswith(b"1024 x 1024 (W x H), " + str(odc.stat().st_size).encode() + b" bytes, " +
                                  f"{8 * odc.stat().st_size / 1024**2:.4f} bpp".encode())
