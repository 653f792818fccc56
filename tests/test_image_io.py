"""Image IO: every common kind of input becomes RGB in [0, 1] or a clear ImageError; writes are atomic."""
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from onedc_lib import bitstream
from onedc_lib.image_io import ImageError, load_image, save_image, to_uint8


def rgb(height: int = 6, width: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_header_only(width: int, height: int, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A PNG whose IHDR claims width x height, with no pixel data at all."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_rgb_png_round_trip_is_exact(tmp_path):
    array = rgb()
    Image.fromarray(array).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.shape == (3, 6, 5) and image.dtype == torch.float32
    assert np.array_equal(to_uint8(image), array)
    save_image(image, tmp_path / "b.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), array)


def test_grayscale_is_replicated(tmp_path):
    gray = rgb()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    image = load_image(tmp_path / "g.png")
    assert image.shape == (3, 6, 5)
    for channel in image:
        assert np.array_equal((channel * 255).round().byte().numpy(), gray)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, :, :3] = [200, 40, 10]
    rgba[0, :, 3] = [0, 255, 51]  # transparent, opaque, 20% opaque
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    expected = torch.tensor([[1.0, 1.0, 1.0], [200, 40, 10], [0.2 * 200 + 0.8 * 255, 0.2 * 40 + 0.8 * 255,
                                                                 0.2 * 10 + 0.8 * 255]])
    expected[1:2] /= 255
    expected[2:] /= 255
    torch.testing.assert_close(image[:, 0, :].T, expected, atol=1e-6, rtol=0)

    la = np.array([[[100, 0], [100, 255]]], dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    image = load_image(tmp_path / "la.png")
    torch.testing.assert_close(image[:, 0, 0], torch.ones(3))
    torch.testing.assert_close(image[:, 0, 1], torch.full((3,), 100 / 255))


def test_palette_with_transparency(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png", transparency=0)  # red is transparent
    assert "transparency" in Image.open(tmp_path / "p.png").info
    image = load_image(tmp_path / "p.png")
    torch.testing.assert_close(image[:, 0, 0], torch.ones(3))  # transparent red -> white
    torch.testing.assert_close(image[:, 0, 1], torch.tensor([0.0, 0.0, 1.0]))

    palette.save(tmp_path / "opaque.png")
    torch.testing.assert_close(load_image(tmp_path / "opaque.png")[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_16_bit_grayscale_keeps_its_precision(tmp_path):
    values = np.array([[0, 1, 255, 256], [257, 32768, 65534, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    image = load_image(tmp_path / "g16.png")
    assert image.shape == (3, 2, 4)
    torch.testing.assert_close(image[0].double() * 65535, torch.from_numpy(values.astype(np.float64)),
                               atol=2e-3, rtol=0)
    assert image[0, 0, 0] < image[0, 0, 1] and image[0, 1, 2] < image[0, 1, 3]  # 8 bits would merge these
    assert torch.equal(image[0], image[2])


def test_exif_orientation_is_applied(tmp_path):
    """Orientation 6: the stored image is shown rotated 90 degrees clockwise, so its top goes to the right."""
    stored = np.zeros((40, 64, 3), dtype=np.uint8)
    stored[:20] = [255, 0, 0]  # top half red
    stored[20:] = [0, 0, 255]  # bottom half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "rotated.jpg")
    assert image.shape == (3, 64, 40)  # H and W transposed
    assert image[0, :, 30:].mean() > 0.9 and image[2, :, 30:].mean() < 0.1  # right: red
    assert image[2, :, :10].mean() > 0.9 and image[0, :, :10].mean() < 0.1  # left: blue

    Image.fromarray(stored).save(tmp_path / "plain.jpg", quality=95)
    assert load_image(tmp_path / "plain.jpg").shape == (3, 40, 64)


def test_other_formats_and_modes(tmp_path):
    array = rgb(7, 9)
    for suffix in (".bmp", ".tiff", ".webp", ".ppm", ".gif", ".jpg"):
        Image.fromarray(array).save(tmp_path / f"a{suffix}")
        image = load_image(tmp_path / f"a{suffix}")
        assert image.shape == (3, 7, 9) and 0 <= image.min() and image.max() <= 1, suffix
    Image.new("CMYK", (3, 2), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    torch.testing.assert_close(load_image(tmp_path / "cmyk.jpg"), torch.ones(3, 2, 3), atol=2 / 255, rtol=0)
    Image.new("1", (3, 2), 1).save(tmp_path / "bw.png")
    assert torch.equal(load_image(tmp_path / "bw.png"), torch.ones(3, 2, 3))


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable image"),
    (b"this is not an image\n" * 10, "not a readable image"),
    (png_header_only(10, 10), "not a readable image"),  # no pixel data
])
def test_non_images_raise_image_error(tmp_path, content, message):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as error:
        load_image(path)
    assert str(path) in str(error.value)


def test_truncated_and_missing_files(tmp_path):
    Image.fromarray(rgb(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError):
        load_image(tmp_path)


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (bitstream.MAX_SIDE + 1, 1), (1, bitstream.MAX_SIDE + 1),
                                           (16_384, 16_385)])
def test_huge_dimensions_are_refused_before_decoding(tmp_path, width, height):
    """Refused from the header alone: the file holds no pixels, and nothing near width x height is allocated."""
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(width, height))
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"exceeds the limit|decompression bomb|exceeds limit") as error:
        load_image(path)
    assert time.perf_counter() - start < 1
    assert str(path) in str(error.value)


def test_save_image_is_atomic(tmp_path, monkeypatch):
    image = torch.rand(3, 4, 5)
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bitstream.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        save_image(image, target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left
    monkeypatch.undo()

    with pytest.raises(FileNotFoundError):
        save_image(image, tmp_path / "no" / "such" / "folder.png")
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    save_image(image, target)
    assert np.array_equal(np.asarray(Image.open(target)), to_uint8(image))


def test_save_image_format_follows_the_suffix(tmp_path):
    image = torch.rand(3, 8, 8)
    save_image(image, tmp_path / "a.jpg")
    save_image(image, tmp_path / "a.unknown")
    assert Image.open(tmp_path / "a.jpg").format == "JPEG"
    assert Image.open(tmp_path / "a.unknown").format == "PNG"


def test_to_uint8_rounds_and_clamps():
    image = torch.tensor([-0.5, 0.0, 0.5 / 255 - 1e-4, 0.5 / 255 + 1e-4, 127.6 / 255, 1.0, 2.0]).view(1, 1, 7)
    assert to_uint8(image.expand(3, 1, 7))[0, :, 0].tolist() == [0, 0, 0, 1, 128, 255, 255]
