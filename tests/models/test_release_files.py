"""Release files through our release mode (models/release.py): the release's own file `codec_small_e2e.bin`
decodes step by step, with the section 4.3 weights, to the release's y_hat and g_s output; the file we write
from the release's y is the release's file byte for byte (compat README 4.3)."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from onedc_lib import bitstream
from onedc_lib.entropy import release_format
from onedc_lib.models import release
from onedc_lib.models.codec import Codec

from test_codec_golden import SMALL


@pytest.fixture(scope="module")
def small(golden, compat_dir):
    codec = Codec(SMALL).eval()
    codec.load_state_dict(load_file(compat_dir / "codec_small_e2e_weights.safetensors"), strict=True)
    g = golden("codec_small_e2e_tensors")
    return codec, g.outputs, (compat_dir / "codec_small_e2e.bin").read_bytes()


def parts(data):
    f = bitstream.read_release_file(data)
    z = release_format.unpack_z(f.z_bytes, release_format.z_count(f.height, f.width))
    return f, torch.from_numpy(z).view(1, f.padded_height // 64, f.padded_width // 64)


def test_the_release_file_decodes_to_the_release_y_hat_and_gs_output(small):
    codec, out, data = small
    f, z_indices = parts(data)
    dec = release.decode_y(codec, z_indices, f.y_stream, "float32-cpu")
    for step in range(4):
        assert np.array_equal(dec.indexes[step], out[f"write_step{step}_indexes"].numpy().reshape(-1))
    torch.testing.assert_close(dec.y_hat, out["dec_y_hat"], atol=1e-5, rtol=0)
    torch.testing.assert_close(dec.z_semantic, out["z_semantic"], atol=1e-5, rtol=0)
    c_map, _ = codec.semantic(dec.z_semantic)
    with torch.no_grad():
        x_hat = codec.synthesis(dec.y_hat, c_map)
    torch.testing.assert_close(x_hat, out["dec_x_hat"], atol=1e-4, rtol=0)


def test_our_release_file_is_the_release_file(small, compat_dir):
    codec, out, data = small
    written = release.write_file(codec, out["y"], out["z_indices"], 120, 180, "float32-cpu")
    assert written.data == data
    # scales within 1e-5 (relative) of one of the release's thresholds, counted from the goldens alone
    thresholds = np.load(compat_dir / "scale_to_index_release.npz")["threshold_f32"][1:].astype(np.float64)
    scales = np.concatenate([out[f"write_step{k}_scales"].numpy().reshape(-1) for k in range(4)]).astype(np.float64)
    near = np.abs(scales[:, None] - thresholds[None, :]).min(axis=1) <= 1e-5 * np.abs(scales)
    assert written.near_boundary == int(near.sum()) > 0
    for step in range(4):
        assert np.array_equal(written.indexes[step], out[f"write_step{step}_indexes"].numpy().reshape(-1))


def test_a_damaged_or_foreign_stream_is_an_error(small):
    codec, _, data = small
    f, z_indices = parts(data)
    damaged = bytearray(f.y_stream)
    damaged[len(damaged) // 2] ^= 0x10
    with pytest.raises(bitstream.BitstreamError, match="cannot be decoded"):
        release.decode_y(codec, z_indices, bytes(damaged), "float32-cpu")
    other = (z_indices + 1) % 16384  # another z: other scales, other table indexes
    with pytest.raises(bitstream.BitstreamError, match="final state|past the end|trailing|escape"):
        release.decode_y(codec, other, f.y_stream, "float32-cpu")


def test_bf16_numerics_need_a_cuda_device(small):
    codec, _, data = small
    f, z_indices = parts(data)
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(bitstream.BitstreamError, match="cannot be reproduced on this machine"):
        release.decode_y(codec, z_indices, f.y_stream, "bf16-cuda")


def test_near_boundary_counts_scales_by_relative_distance():
    thresholds = release_format.index_thresholds()
    k = np.array([3, 100, 200])
    scales = np.concatenate([thresholds[k] * (1 + 5e-6), thresholds[k] * (1 - 2e-5), [0.05, 70.0]])
    assert release.near_boundary(scales) == 3
    assert release.near_boundary(scales, margin=3e-5) == 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the release's bf16-cuda numerics need a CUDA device")
def test_bf16_cuda_numerics_round_trip(small):
    """The release's default GPU numerics: the prior under CUDA bf16 autocast, bf16 scales into the index map.
    No golden exists for them (compat 9.3): our writer and our step-wise decoder must agree, and y_hat stays
    within bf16 rounding of the float32 golden."""
    codec, out, _ = small
    written = release.write_file(codec, out["y"], out["z_indices"], 120, 180, "bf16-cuda")
    f, z_indices = parts(written.data)
    dec = release.decode_y(codec, z_indices, f.y_stream, "bf16-cuda")
    assert all(np.array_equal(a, b) for a, b in zip(dec.indexes, written.indexes))
    assert (dec.y_hat - out["dec_y_hat"]).abs().max() < 0.2
