"""BD-rate / BD-metric: agreement with the `bjontegaard` package (same interpolation, same points), exact values on
curves with a known offset, overlap handling, errors, and loading RD points from summary JSON and CSV files."""
import json
import warnings

import bjontegaard
import numpy as np
import pytest

from onedc_lib.eval.bdrate import (METHODS, bd_metric, bd_rate, higher_is_better, load_curve,
                                   load_rd_points)

TOLERANCE_PP = 0.1  # the bar (percentage points); the two agree to ~1e-9 in practice

# Released OneDC on Kodak (spec section 8): bpp, LPIPS, DISTS, PSNR
ONEDC = np.array([[0.0035, .380, .204, 17.1], [0.010, .221, .131, 20.6], [0.016, .183, .110, 21.5],
                  [0.024, .154, .097, 22.2], [0.035, .133, .085, 23.0], [0.050, .114, .076, 23.6],
                  [0.077, .096, .066, 24.4], [0.111, .083, .057, 25.2]])
# A codec shaped like HEVC at low rate (more bits for the same LPIPS/DISTS, better PSNR)
HEVC_LIKE = np.array([[0.045, .420, .260, 24.1], [0.062, .360, .225, 25.3], [0.081, .310, .196, 26.6],
                      [0.099, .275, .176, 27.4], [0.136, .228, .149, 28.7], [0.170, .196, .130, 29.7]])
# Measured with onedc_lib.eval.baselines on skimage's astronaut (bpp, PSNR): JPEG 4:4:4, AVIF 4:4:4, HEVC 4:4:4
ASTRONAUT = {
    "jpeg": [(0.163, 21.9), (0.178, 22.4), (0.234, 24.5), (0.317, 26.4), (0.364, 27.3), (0.471, 29.0),
             (0.563, 30.1), (0.651, 30.8), (0.731, 31.4), (0.869, 32.4), (0.998, 33.1), (1.138, 33.9),
             (1.357, 34.8)],
    "avif": [(0.107, 25.7), (0.116, 25.9), (0.135, 26.9), (0.141, 27.2), (0.159, 27.8), (0.191, 28.7),
             (0.212, 29.2), (0.256, 30.2), (0.303, 31.0), (0.356, 31.8), (0.428, 32.8), (0.505, 33.7),
             (0.586, 34.5), (0.712, 35.5), (0.987, 37.3)],
    "hevc": [(0.062, 19.5), (0.066, 20.5), (0.081, 23.0), (0.089, 24.3), (0.099, 25.0), (0.136, 26.7),
             (0.170, 28.0), (0.235, 29.6), (0.292, 30.8), (0.396, 32.5), (0.485, 33.5), (0.649, 35.2),
             (0.790, 36.2)],
}


def reference(rate_a, m_a, rate_b, m_b, method, higher):
    """bjontegaard's BD-rate and BD-metric; a lower-is-better metric is negated (its curves must rise)."""
    sign = 1 if higher else -1
    kwargs = dict(method=method, require_matching_points=False, min_overlap=0)
    order_a, order_b = np.argsort(rate_a), np.argsort(rate_b)
    args = (np.asarray(rate_a)[order_a], sign * np.asarray(m_a)[order_a],
            np.asarray(rate_b)[order_b], sign * np.asarray(m_b)[order_b])
    return bjontegaard.bd_rate(*args, **kwargs), sign * bjontegaard.bd_psnr(*args, **kwargs)


def ours(rate_a, m_a, rate_b, m_b, method, higher):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (bd_rate(rate_a, m_a, rate_b, m_b, higher_is_better=higher, method=method),
                bd_metric(rate_a, m_a, rate_b, m_b, higher_is_better=higher, method=method))


def random_curves(rng, n_a, n_b):
    """Two rising, concave curves metric(log rate) with random rates, slopes and offsets (overlap from full to
    none), strictly increasing in rate."""
    def curve(n, offset, gain):
        log_rate = np.sort(rng.uniform(np.log(0.01), np.log(2.0), n)) + 1e-3 * np.arange(n)
        metric = offset + gain * log_rate - 0.15 * log_rate ** 2
        return np.exp(log_rate), metric
    return (*curve(n_a, 30.0, 3.0), *curve(n_b, 30.0 + rng.uniform(-4, 4), rng.uniform(2.0, 4.0)))


@pytest.mark.parametrize("method", ["pchip", "cubic", "akima"])
@pytest.mark.parametrize("metric, column, higher", [("lpips", 1, False), ("dists", 2, False), ("psnr", 3, True)])
def test_realistic_points_agree_with_bjontegaard(method, metric, column, higher):
    a, b = ONEDC, HEVC_LIKE
    got = ours(a[:, 0], a[:, column], b[:, 0], b[:, column], method, higher)
    want = reference(a[:, 0], a[:, column], b[:, 0], b[:, column], method, higher)
    assert abs(got[0] - want[0]) < TOLERANCE_PP, (got, want)
    assert got[0] == pytest.approx(want[0], abs=1e-6)
    assert got[1] == pytest.approx(want[1], abs=1e-9)
    # the paper-style reading: OneDC saves bits on LPIPS / DISTS, HEVC on PSNR
    assert (got[0] < 0) == (metric == "psnr")


@pytest.mark.parametrize("method", ["pchip", "cubic", "akima"])
@pytest.mark.parametrize("anchor, test", [("jpeg", "avif"), ("jpeg", "hevc"), ("avif", "hevc"), ("hevc", "jpeg")])
def test_measured_baseline_curves_agree_with_bjontegaard(method, anchor, test):
    a, b = np.array(ASTRONAUT[anchor]), np.array(ASTRONAUT[test])
    got = ours(a[:, 0], a[:, 1], b[:, 0], b[:, 1], method, True)
    want = reference(a[:, 0], a[:, 1], b[:, 0], b[:, 1], method, True)
    assert abs(got[0] - want[0]) < TOLERANCE_PP and got[0] == pytest.approx(want[0], abs=1e-6)
    assert got[1] == pytest.approx(want[1], abs=1e-9)
    if anchor == "jpeg":
        assert got[0] < -20 and got[1] > 1  # modern codecs beat JPEG by a wide margin on PSNR


@pytest.mark.parametrize("method", ["pchip", "cubic", "akima"])
def test_random_curves_agree_with_bjontegaard(method):
    rng = np.random.default_rng(1234)
    worst, compared = 0.0, 0
    for trial in range(60):
        n_a, n_b = rng.integers(4, 9, size=2)
        rate_a, m_a, rate_b, m_b = random_curves(rng, n_a, n_b)
        for higher, sign in ((True, 1), (False, -1)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                want = reference(rate_a, sign * m_a, rate_b, sign * m_b, method, higher)
            if not np.isfinite(want[0]):  # no overlap in the metric: bjontegaard says NaN, we raise
                with pytest.raises(ValueError, match="do not overlap"):
                    ours(rate_a, sign * m_a, rate_b, sign * m_b, method, higher)
                continue
            got = ours(rate_a, sign * m_a, rate_b, sign * m_b, method, higher)
            worst, compared = max(worst, abs(got[0] - want[0])), compared + 1
            assert got[1] == pytest.approx(want[1], rel=1e-7, abs=1e-9)
    assert compared > 80
    assert worst < 1e-6 < TOLERANCE_PP


def test_order_of_points_does_not_matter():
    a, b = ONEDC, HEVC_LIKE
    perm_a, perm_b = np.random.default_rng(0).permutation(len(a)), np.random.default_rng(1).permutation(len(b))
    for method in METHODS:
        shuffled = bd_rate(a[perm_a, 0], a[perm_a, 2], b[perm_b, 0], b[perm_b, 2], False, method, min_overlap=0)
        assert shuffled == pytest.approx(bd_rate(a[:, 0], a[:, 2], b[:, 0], b[:, 2], False, method, min_overlap=0))


@pytest.mark.parametrize("method", METHODS)
def test_known_offsets(method):
    rate = np.array([0.05, 0.1, 0.2, 0.4, 0.8, 1.6])
    psnr = 25 + 4 * np.log2(rate / 0.05) ** 0.9
    # B reaches every quality with 20% fewer bits: BD-rate -20% exactly, for any interpolation
    assert bd_rate(rate, psnr, 0.8 * rate, psnr, method=method) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(0.8 * rate, psnr, rate, psnr, method=method) == pytest.approx(25.0, abs=1e-9)
    # B is 0.5 dB better at every rate: BD-PSNR +0.5
    assert bd_metric(rate, psnr, rate, psnr + 0.5, method=method) == pytest.approx(0.5, abs=1e-9)
    lpips = 0.5 / (1 + 4 * rate)
    assert bd_rate(rate, lpips, 0.5 * rate, lpips, higher_is_better=False, method=method) == pytest.approx(-50.0)
    assert bd_metric(rate, lpips, rate, lpips - 0.01, higher_is_better=False, method=method) == pytest.approx(-0.01)
    assert bd_rate(rate, psnr, rate, psnr, method=method) == pytest.approx(0.0, abs=1e-12)


def test_only_the_overlap_is_integrated():
    rate = np.array([0.05, 0.1, 0.2, 0.4, 0.8, 1.6])
    psnr = 25 + 4 * np.log2(rate / 0.05)
    # B: the same curve with 10% fewer bits, extended far beyond A on both ends: only the overlap counts
    rate_b = np.concatenate([[0.001, 0.005], 0.9 * rate, [10.0, 50.0]])
    psnr_b = 25 + 4 * np.log2(rate_b / 0.9 / 0.05)
    with pytest.warns(UserWarning, match="overlap"):
        assert bd_rate(rate, psnr, rate_b, psnr_b, method="pchip") == pytest.approx(-10.0, abs=1e-9)
    assert bd_rate(rate, psnr, rate_b, psnr_b, method="pchip", min_overlap=0) == pytest.approx(-10.0, abs=1e-9)


def test_errors():
    rate, psnr = [0.1, 0.2, 0.4, 0.8], [26.0, 28.0, 30.0, 32.0]
    with pytest.raises(ValueError, match="at least 4"):
        bd_rate(rate[:3], psnr[:3], rate, psnr)
    with pytest.raises(ValueError, match="at least 4"):
        bd_metric(rate, psnr, rate[:2], psnr[:2])
    with pytest.raises(ValueError, match="do not overlap"):
        bd_rate(rate, psnr, rate, [p + 10 for p in psnr])
    with pytest.raises(ValueError, match="do not overlap"):
        bd_metric(rate, psnr, [r * 100 for r in rate], psnr)
    with pytest.raises(ValueError, match="positive"):
        bd_rate([0.0, 0.2, 0.4, 0.8], psnr, rate, psnr)
    with pytest.raises(ValueError, match="3 metric values"):
        bd_rate(rate, psnr[:3], rate, psnr)
    with pytest.raises(ValueError, match="method"):
        bd_rate(rate, psnr, rate, psnr, method="bspline")
    with pytest.raises(ValueError, match="finite"):
        bd_rate(rate, [26.0, float("nan"), 30.0, 32.0], rate, psnr)
    with pytest.raises(ValueError, match="repeated"):
        bd_rate(rate, [26.0, 26.0, 30.0, 32.0], rate, psnr)


def test_wrong_direction_warns():
    rate, lpips = [0.1, 0.2, 0.4, 0.8], [0.3, 0.2, 0.15, 0.1]
    with pytest.warns(UserWarning, match="direction"):
        bd_rate(rate, lpips, rate, lpips, higher_is_better=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bd_rate(rate, lpips, rate, lpips, higher_is_better=False) == pytest.approx(0.0, abs=1e-12)


def test_metric_directions():
    assert not higher_is_better("LPIPS") and not higher_is_better("dists") and not higher_is_better("FID")
    assert higher_is_better("psnr") and higher_is_better("MS-SSIM")


def write_summary(path, codec, table, names=("bpp", "lpips", "dists", "psnr")):
    path.write_text(json.dumps({"codec": codec, "protocol": {"patch": 256},
                                "points": [dict(zip(names, map(float, row))) for row in table]}))
    return path


def test_load_summary_json(tmp_path):
    path = write_summary(tmp_path / "onedc.json", "onedc", ONEDC[::-1])
    curve = load_curve(path)
    assert curve.name == "onedc" and set(curve.metrics) == {"lpips", "dists", "psnr"}
    rate, dists = load_rd_points(path, "DISTS")
    np.testing.assert_array_equal(rate, ONEDC[:, 0])
    np.testing.assert_array_equal(dists, ONEDC[:, 2])
    with pytest.raises(ValueError, match="no metric 'fid'.*has: lpips, dists, psnr"):
        load_rd_points(path, "fid")
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps([{"bpp": 0.1, "ms_ssim": 0.9}, {"bpp": 0.2, "ms_ssim": 0.95}]))
    assert load_rd_points(bare, "ms-ssim")[1].tolist() == [0.9, 0.95]
    assert load_curve(bare).name == "bare"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"codec": "x", "rows": []}))
    with pytest.raises(ValueError, match="points"):
        load_curve(bad)
    bad.write_text(json.dumps({"codec": "x", "points": [{"psnr": 30}]}))
    with pytest.raises(ValueError, match="bpp"):
        load_curve(bad)


def test_load_csv_per_point_and_per_image(tmp_path):
    per_point = tmp_path / "points.csv"
    per_point.write_text("bpp,PSNR,MS-SSIM\n0.4,30,0.95\n0.1,25,0.88\n0.2,27.5,0.92\n")
    rate, psnr = load_rd_points(per_point, "psnr")
    assert rate.tolist() == [0.1, 0.2, 0.4] and psnr.tolist() == [25, 27.5, 30]
    assert load_rd_points(per_point, "ms_ssim")[1].tolist() == [0.88, 0.92, 0.95]

    per_image = tmp_path / "per_image.csv"
    lines = ["image,codec,quality,bpp,psnr,lpips"]
    for q, (r, p, l) in {10: (0.1, 25, 0.3), 50: (0.5, 31, 0.1), 30: (0.3, 28, 0.2)}.items():
        for i, d in enumerate((-1, 0, 1)):
            lines.append(f"kodim{i:02d},webp,{q},{r + 0.01 * d},{p + d},{'' if i == 2 and q == 50 else l}")
    per_image.write_text("\n".join(lines) + "\n")
    curve = load_curve(per_image)
    assert curve.name == "webp" and "quality" not in curve.columns and "image" not in curve.columns
    np.testing.assert_allclose(curve.columns["bpp"], [0.1, 0.3, 0.5])
    np.testing.assert_allclose(curve.columns["psnr"], [25, 28, 31])
    np.testing.assert_allclose(curve.columns["lpips"], [0.3, 0.2, 0.1])  # a missing cell: mean of the others

    mixed = tmp_path / "mixed.csv"
    mixed.write_text("codec,quality,bpp,psnr\njpeg,10,0.2,25\nwebp,10,0.15,26\n")
    with pytest.raises(ValueError, match="several codecs"):
        load_curve(mixed)
    with pytest.raises(OSError, match="cannot read"):
        load_curve(tmp_path / "missing.csv")


def test_loaded_files_agree_with_bjontegaard(tmp_path):
    a = write_summary(tmp_path / "a.json", "onedc", ONEDC)
    b = write_summary(tmp_path / "b.json", "hevc", HEVC_LIKE)
    for metric, higher in (("lpips", False), ("dists", False), ("psnr", True)):
        got = bd_rate(*load_rd_points(a, metric), *load_rd_points(b, metric), higher_is_better=higher, min_overlap=0)
        col = {"lpips": 1, "dists": 2, "psnr": 3}[metric]
        want = reference(ONEDC[:, 0], ONEDC[:, col], HEVC_LIKE[:, 0], HEVC_LIKE[:, col], "pchip", higher)[0]
        assert abs(got - want) < TOLERANCE_PP


def test_linear_takes_two_points_and_the_others_four():
    rate, lpips = np.array([0.05, 0.2]), np.array([0.30, 0.15])
    # B needs 10% fewer bits for every LPIPS: exact for straight lines in log rate
    assert bd_rate(rate, lpips, 0.9 * rate, lpips, higher_is_better=False, method="linear") == pytest.approx(-10.0)
    # a B line below A's by 0.02 LPIPS everywhere: BD-LPIPS -0.02
    assert bd_metric(rate, lpips, rate, lpips - 0.02, False, method="linear") == pytest.approx(-0.02)
    for method in ("pchip", "akima", "cubic"):
        with pytest.raises(ValueError, match="at least 4"):
            bd_rate(rate, lpips, 0.9 * rate, lpips, higher_is_better=False, method=method)


def test_linear_integrates_the_polyline_exactly():
    x, y = np.array([0.0, 1.0, 3.0]), np.array([0.0, 2.0, 0.0])
    from onedc_lib.eval.bdrate import _interpolator

    f = _interpolator(x, y, "linear", "A")
    assert f.integrate(0.0, 3.0) == pytest.approx(3.0)
    assert f.integrate(0.5, 2.0) == pytest.approx(0.5 * (1 + 2) / 2 + 1.0 * (2 + 1) / 2)
