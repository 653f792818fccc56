"""training/decoder_tune.py: a compact decoder cut from a pretrained one, trained on a model's small images, and
the models written with it."""
import copy
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from onedc_lib.models import sr_decoder
from onedc_lib.training import decoder_tune as D
from onedc_lib.weights import build_model, load_model, save_model

TINY = {"arch": "rrdbnet", "num_feat": 8, "num_block": 1, "num_grow": 4}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("nano_sr", seed=3)
    return save_model(model, tmp_path_factory.mktemp("src") / "q9" / "model", {"task": "test"})


def test_initial_state_is_the_pretrained_networks_first_blocks():
    try:
        teacher = sr_decoder.load_state_dict(None, "realesrgan-x4plus")
    except sr_decoder.SRDecoderError as error:
        pytest.skip(f"realesrgan-x4plus is not provisioned ({error})")
    student = sr_decoder.RRDBNet(num_block=2)
    state = D.initial_state(student, "realesrgan-x4plus")
    assert state.keys() == student.state_dict().keys()
    assert torch.equal(state["trunk.1.blocks.2.convs.4.weight"], teacher["trunk.1.blocks.2.convs.4.weight"])
    assert torch.equal(state["conv_last.bias"], teacher["conv_last.bias"])
    assert not any(k.startswith("trunk.2.") for k in state)
    with pytest.raises(ValueError, match="not a part of realesrgan-x4plus"):
        D.initial_state(sr_decoder.RRDBNet(num_feat=32, num_block=1), "realesrgan-x4plus")


def test_the_small_images_are_the_ones_the_decoder_receives(source):
    model = load_model(str(source)).eval()
    x = torch.rand(1, 3, 64, 128)
    small = D.small_images(model, x)
    assert small.shape == (1, 3, 16, 32) and 0 <= float(small.min()) and float(small.max()) <= 1
    received = []
    model.vae.sr.register_forward_pre_hook(lambda module, inputs: received.append(inputs[0]))
    with torch.no_grad():
        model(x)  # the whole model's forward, decoder included
    torch.testing.assert_close(received[0], small, atol=1e-5, rtol=0)


def test_a_run_writes_the_decoder_and_each_model_with_it(source, tmp_path):
    out = tmp_path / "run"
    args = ["--models", str(source), "--decoder", json.dumps(TINY), "--out", str(out), "--steps", "2",
            "--lpips", "off", "--seed", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        D.main(args)
    decoder = load_file(str(out / D.DECODER_FILE))
    untrained = sr_decoder.build_network(TINY)
    assert decoder.keys() == untrained.state_dict().keys()

    tuned = load_model(str(out / "models" / "q9"))
    original = load_model(str(source))
    assert tuned.config.vae.sr_decoder == TINY and tuned.model_id != original.model_id
    for key, value in original.state_dict().items():
        if not key.startswith("vae."):
            assert torch.equal(tuned.state_dict()[key], value), key
    for key, value in decoder.items():
        assert torch.equal(tuned.vae.sr.state_dict()[key], value), key

    x = torch.rand(1, 3, 64, 64)
    image = tuned.decompress(tuned.compress(x).to_bytes())
    assert image.shape == x.shape

    D.main(args + ["--resume", "auto"])  # a finished run resumes to the same decoder
    assert all(torch.equal(load_file(str(out / D.DECODER_FILE))[k], v) for k, v in decoder.items())


def test_only_pixel_sr_models_have_such_a_decoder(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = save_model(build_model("nano", seed=1), tmp_path / "nano", {"task": "test"})
    with pytest.raises(ValueError, match="pixel_sr"):
        D.DecoderTask([folder], TINY, None, 1e-4, lpips="off")


def test_the_teacher_target_is_the_models_own_decoder_output(source):
    """A student equal to the model's own decoder has nothing to learn from its teacher (loss 0: the hand oracle),
    and does from the photograph; an unknown target is refused."""
    model = load_model(str(source)).eval()
    batch = {"image": torch.rand(2, 3, 64, 64)}
    student = copy.deepcopy(model.vae.sr)
    distilled = D.DecoderStep(student, [model], None, target="teacher")(batch, 0)
    assert float(distilled["loss"]) == 0.0
    assert float(D.DecoderStep(student, [model], None)(batch, 0)["loss"]) > 0.01
    with pytest.raises(ValueError, match="target"):
        D.DecoderStep(student, [model], None, target="teacher's")
