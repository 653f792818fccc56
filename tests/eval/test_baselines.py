"""Baseline codecs: real encoders round-trip photographs, bpp from the bytes, sweeps rise in rate, 4:4:4 where the
codec allows it, versions recorded. The full-size rate coverage check is marked slow."""
import numpy as np
import pytest
from skimage import data

from onedc_lib.eval.baselines import BASELINES, bpp, check_image
from onedc_lib.eval.baselines import jxl_distance

NAMES = ["jpeg", "webp", "avif", "jxl", "hevc"]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 96 x 128 crop of the astronaut photograph (face, suit, flag: texture and flat areas)."""
    return np.ascontiguousarray(data.astronaut()[60:156, 160:288])


@pytest.fixture(scope="module")
def odd_photo() -> np.ndarray:
    """Odd height and width, where 4:2:0 codecs must pad."""
    return np.ascontiguousarray(data.chelsea()[101:164, 150:235])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def test_registry():
    assert list(BASELINES) == NAMES
    for name, codec in BASELINES.items():
        assert codec.name == name
        q = list(codec.qualities)
        assert q == sorted(q) and len(set(q)) == len(q) and len(q) >= 10, name
        assert all(isinstance(v, int) and 0 <= v <= 100 for v in q)


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name, photo, odd_photo):
    codec = BASELINES[name]
    mid = codec.qualities[len(codec.qualities) * 2 // 3]
    for image in (photo, odd_photo):
        encoded = codec.encode(image, mid)
        assert isinstance(encoded, bytes) and len(encoded) > 0
        assert bpp(encoded, image) == 8 * len(encoded) / (image.shape[0] * image.shape[1])
        decoded = codec.decode(encoded)
        assert decoded.dtype == np.uint8 and decoded.shape == image.shape
        assert psnr(decoded, image) > 24, (name, psnr(decoded, image))
        assert codec.encode(image, mid) == encoded  # reproducible bytes
        assert codec.coded_subsampling(encoded) == codec.subsampling
        assert 0 < codec.payload_bytes(encoded) <= len(encoded)


@pytest.mark.parametrize("name", NAMES)
def test_rate_rises_with_quality(name, photo):
    codec = BASELINES[name]
    rates = [bpp(codec.encode(photo, q), photo) for q in codec.qualities]
    quality = [psnr(codec.decode(codec.encode(photo, q)), photo) for q in (codec.qualities[0], codec.qualities[-1])]
    assert rates[-1] > 4 * rates[0], rates
    assert all(b >= 0.97 * a for a, b in zip(rates, rates[1:])), rates  # monotone up to encoder noise
    assert np.corrcoef(np.arange(len(rates)), np.argsort(np.argsort(rates)))[0, 1] > 0.95
    assert quality[1] > quality[0] + 5


def test_subsampling_is_444_where_the_codec_allows(photo):
    expected = {"jpeg": "4:4:4", "webp": "4:2:0", "avif": "4:4:4", "jxl": "4:4:4", "hevc": "4:4:4"}
    for name, codec in BASELINES.items():
        assert codec.subsampling == expected[name]
        assert codec.coded_subsampling(codec.encode(photo, codec.qualities[0])) == expected[name]


def test_container_overhead_is_reported_beside_the_file_size(photo):
    for name in ("avif", "hevc"):
        codec = BASELINES[name]
        encoded = codec.encode(photo, codec.qualities[0])
        overhead = len(encoded) - codec.payload_bytes(encoded)
        assert 100 < overhead < 600, (name, overhead)  # ISOBMFF boxes, not coded data
    for name in ("jpeg", "webp", "jxl"):
        encoded = BASELINES[name].encode(photo, 50)
        assert BASELINES[name].payload_bytes(encoded) == len(encoded)


def test_versions_and_description():
    expected = {"jpeg": {"pillow", "libjpeg-turbo"}, "webp": {"pillow", "libwebp"}, "avif": {"pillow", "libavif"},
                "jxl": {"imagecodecs", "libjxl"}, "hevc": {"pillow-heif", "libheif", "encoder", "decoder"}}
    for name, codec in BASELINES.items():
        versions = codec.versions()
        assert expected[name] <= set(versions), (name, versions)
        assert all(isinstance(v, str) and v for v in versions.values()), versions
        described = codec.describe()
        assert described["name"] == name and described["versions"] == versions
        assert described["qualities"] == list(codec.qualities) and described["subsampling"] == codec.subsampling
    assert "x265" in BASELINES["hevc"].versions()["encoder"]
    assert "aom" in BASELINES["avif"].versions()["codecs"]


def test_bad_inputs(photo):
    with pytest.raises(ValueError, match="uint8 RGB"):
        check_image(photo.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 RGB"):
        check_image(photo[..., 0])
    for codec in BASELINES.values():
        with pytest.raises(ValueError, match="quality"):
            codec.encode(photo, 101)
        with pytest.raises(ValueError, match="quality"):
            codec.encode(photo, 50.5)


def test_jxl_distance_matches_libjxl_mapping():
    assert jxl_distance(100) == 0.0
    assert jxl_distance(90) == pytest.approx(1.0)
    assert jxl_distance(30) == pytest.approx(6.4)
    assert jxl_distance(0) == pytest.approx(25.0)
    values = [jxl_distance(q) for q in range(100)]
    assert all(a > b for a, b in zip(values, values[1:]))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_sweeps_cover_low_to_one_bpp_on_photographs(name):
    """On the scikit-image photographs, each sweep spans from the codec's floor up to ~1 bpp."""
    floors = {"jpeg": 0.2, "webp": 0.16, "avif": 0.12, "jxl": 0.2, "hevc": 0.07}
    codec = BASELINES[name]
    for image in (data.astronaut(), data.coffee(), data.chelsea()):
        rates = [bpp(codec.encode(image, q), image) for q in codec.qualities]
        assert min(rates) < floors[name], (name, rates)
        assert max(rates) > 1.0, (name, rates)


def test_downsampled_codecs_code_the_box_averaged_quarter_image(odd_photo):
    """`<codec>_x4_bicubic`: the inner codec's file of the 4x4 box means (checked by hand against an edge-padded
    copy), 4 bytes of size, Pillow's bicubic x4 back, cropped to the original size."""
    from PIL import Image

    from onedc_lib.eval.baselines import ALL_BASELINES, DOWNSAMPLED_BASELINES

    assert set(DOWNSAMPLED_BASELINES) == {f"{n}_x4_{u}" for n in NAMES for u in ("bicubic", "sr")}
    assert set(ALL_BASELINES) == set(BASELINES) | set(DOWNSAMPLED_BASELINES)
    codec = ALL_BASELINES["jpeg_x4_bicubic"]
    h, w = odd_photo.shape[:2]  # 63 x 85: padded to 64 x 88
    data = codec.encode(odd_photo, 70)
    assert data[-4:] == np.array([h, w], "<u2").tobytes()
    padded = np.pad(odd_photo, ((0, 1), (0, 3), (0, 0)), mode="edge").astype(np.float64)
    means = padded.reshape(16, 4, 22, 4, 3).mean(axis=(1, 3))
    small = BASELINES["jpeg"].decode(data[:-4])
    assert small.shape == (16, 22, 3)
    assert BASELINES["jpeg"].encode(np.round(means).astype(np.uint8), 70) == data[:-4]
    decoded = codec.decode(data)
    expected = np.asarray(Image.fromarray(small).resize((88, 64), Image.BICUBIC))[:h, :w]
    assert np.array_equal(decoded, expected)
    assert bpp(data, odd_photo) < bpp(BASELINES["jpeg"].encode(odd_photo, 70), odd_photo) / 2  # headers: not /16
    assert codec.file_extension == "jpg.x4" and codec.payload_bytes(data) == len(data)
    with pytest.raises(ValueError, match="too short"):
        codec.decode(b"\0\0")


def test_downsampled_with_the_pretrained_decoder(photo):
    """`avif_x4_sr`: the same file as `avif_x4_bicubic`, brought back by the nano slot's decoder: detail the
    bicubic interpolation does not have (higher gradient energy), colours kept."""
    from onedc_lib.eval.baselines import ALL_BASELINES

    bicubic, sr = ALL_BASELINES["avif_x4_bicubic"], ALL_BASELINES["avif_x4_sr"]
    data = sr.encode(photo, 50)
    assert data == bicubic.encode(photo, 50)
    a, b = bicubic.decode(data).astype(np.float64), sr.decode(data).astype(np.float64)
    assert a.shape == b.shape == photo.shape
    gradient = lambda x: np.abs(np.diff(x, axis=1)).mean()
    assert gradient(b) > 1.2 * gradient(a)
    assert np.abs(a.mean(axis=(0, 1)) - b.mean(axis=(0, 1))).max() < 8  # measured 4.4 (of 255) on this crop
