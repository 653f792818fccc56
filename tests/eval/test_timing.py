"""onedc_lib.eval.timing's memory and multi-step measurements on the nano model (CPU, seconds)."""
import mmap
import time

import pytest

from onedc_lib.eval.timing import PeakMemory, make_image, multistep_decode, timed_round_trip
from onedc_lib.weights import build_model


def test_peak_memory_sees_a_short_lived_allocation():
    with PeakMemory("cpu", interval=0.001) as peak:
        # 64 MiB of fresh anonymous pages, every one touched (a tensor could reuse memory that earlier tests left
        # resident in the allocator, and raise no RSS), held long enough for a sampler a loaded machine runs late
        block = mmap.mmap(-1, 64 * 2**20)
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1
        time.sleep(0.2)
        block.close()
    report = peak.as_dict()
    assert report["kind"] == "rss" and report["added_mb"] > 48
    assert report["peak_mb"] >= report["start_mb"] + report["added_mb"] - 1e-6


def test_round_trip_reports_memory_and_multistep_costs_more():
    model = build_model("nano_q3")
    x = make_image(64, 64)
    one = timed_round_trip(model, x)
    assert {side: one["memory"][side]["kind"] for side in ("encode", "decode")} == {"encode": "rss", "decode": "rss"}
    assert one["memory"]["decode"]["peak_mb"] > 0
    steps = multistep_decode(model, x, steps=(3,), one_step=one)
    assert steps["one_step"]["decode_s"] == one["decode"]["total"]
    three = steps["3_steps"]
    assert three["unet_s"] > 0 and three["decode_s"] == pytest.approx(
        one["decode"]["total"] - one["decode"]["unet"] + three["unet_s"])
    assert three["decode_ratio_vs_one_step"] == pytest.approx(three["decode_s"] / one["decode"]["total"])
