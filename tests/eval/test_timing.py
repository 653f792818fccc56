"""onedc_lib.eval.timing's memory and multi-step measurements on the nano model (CPU, seconds)."""
import mmap
import time

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
    """The k-step estimate runs the UNet k times (counted by a hook: the oracle) and costs more than one step,
    measured the same way on the same inputs; the round trip reports the memory of both sides."""
    model = build_model("nano_q3")
    x = make_image(64, 64)
    one = timed_round_trip(model, x)
    assert {side: one["memory"][side]["kind"] for side in ("encode", "decode")} == {"encode": "rss", "decode": "rss"}
    assert one["memory"]["decode"]["peak_mb"] > 0
    calls = []
    hook = model.generator.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        steps = multistep_decode(model, x, steps=(1, 4), one_step=one)
    finally:
        hook.remove()
    assert len(calls) == 1 + 1 + 4  # the round trip that captures the UNet's inputs, then 1 and 4 steps
    assert steps["4_steps"]["unet_s"] > steps["1_steps"]["unet_s"] > 0
    assert steps["4_steps"]["decode_s"] > steps["one_step"]["decode_s"]
