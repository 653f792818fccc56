import math

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from onedc_lib.entropy.tables import (
    LOG_SCALE_STEP,
    TOTAL,
    odc_tables,
    release_tables,
    scale_to_index,
)


def test_release_tables_equal_the_golden(compat_dir):
    golden = np.load(compat_dir / "gaussian_cdf_tables.npz")
    tables = release_tables()
    assert np.array_equal(tables.cdf, golden["quantized_cdf"])
    assert np.array_equal(tables.cdf_length, golden["cdf_length"])
    assert np.array_equal(tables.offset, golden["offset"])
    # float32 exp differs by one ulp between CPUs at two of 256 scales; the integer tables above do not.
    np.testing.assert_allclose(tables.scale_table, golden["scale_table"], rtol=2e-7)
    assert LOG_SCALE_STEP == pytest.approx(float(golden["log_scale_step"]), abs=1e-15)


def test_release_tables_known_facts():
    tables = release_tables()
    half_width = -tables.offset
    assert set(half_width[:64]) == {2} and set(half_width[192:]) == {50}
    assert 48 not in half_width
    assert list(np.diff(tables.cdf[0, :6])) == [1, 1, 65531, 1, 1]


@pytest.mark.parametrize("make", [release_tables, odc_tables])
def test_every_row_is_a_valid_16_bit_cdf(make):
    tables = make()
    for row, n, off in zip(tables.cdf, tables.cdf_length, tables.offset):
        assert row[0] == 0 and row[n - 1] == TOTAL
        assert np.all(np.diff(row[:n]) >= 1)
        assert n == 2 * (-off) + 3


def test_odc_tables_have_no_cap_and_a_stable_hash():
    tables = odc_tables()
    assert -tables.offset[-1] == math.ceil(4.25 * 64.0) > 50
    assert -tables.offset[0] == 1
    assert tables.table_hash.hex() == "6e61e255195ec460"
    assert release_tables().table_hash.hex() == "59824cc502e5afa4"


def expected_code_length_overhead(tables, k):
    """Expected bits per symbol of row k (escape + Exp-Golomb outside the row) minus the entropy, relative."""
    from scipy.stats import norm

    sigma, c, n = tables.scale_table[k], -tables.offset[k], tables.cdf_length[k]
    q = np.diff(tables.cdf[k, :n]) / TOTAL
    v = np.arange(-int(12 * sigma) - 10, int(12 * sigma) + 11)
    p = norm.cdf((v + 0.5) / sigma) - norm.cdf((v - 0.5) / sigma)
    inside = np.abs(v) <= c
    bits = np.empty_like(p)
    bits[inside] = -np.log2(q[v[inside] + c])
    r = 2 * (np.abs(v[~inside]) - c - 1) + (v[~inside] < 0)
    bits[~inside] = -np.log2(q[-1]) + 6 + np.floor(np.log2(r + 1))
    entropy = -np.sum(p[p > 0] * np.log2(p[p > 0]))
    return (np.sum(p * bits) - entropy) / entropy


@pytest.mark.parametrize("k", [40, 64, 128, 200, 255])
def test_odc_rows_cost_almost_nothing_over_the_entropy(k):
    assert 0 <= expected_code_length_overhead(odc_tables(), k) < 2e-4


@pytest.mark.parametrize("name", ["edge", "sweep", "scale_table", "scale_table_x1p1e-6", "scale_table_x1m1e-6"])
def test_release_scale_to_index_golden(compat_dir, name):
    golden = load_file(str(compat_dir / "block_scale_to_index.safetensors"))
    scales = golden[f"input.scales_{name}"]
    expected = golden[f"output.index_{name}"]
    assert np.array_equal(scale_to_index(scales), expected)
    assert np.array_equal(scale_to_index(torch.from_numpy(scales)).numpy(), expected)


def test_odc_index_is_nearest_in_log_space():
    tables = odc_tables()
    scales = np.exp(np.linspace(np.log(0.05), np.log(100), 2001))
    index = tables.scale_to_index(scales)
    nearest = np.argmin(np.abs(np.log(scales)[:, None] - np.log(tables.scale_table)[None, :]), axis=1)
    assert np.array_equal(index, nearest)
    assert tables.scale_to_index(np.array([np.nan, -1.0, np.inf])).tolist() == [0, 0, 255]
