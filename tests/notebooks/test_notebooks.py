"""The notebooks: the thin-notebook contract, agreement with notebooks/build.py, and a headless papermill run of
each with smoke=True (CPU, one thread) whose files and numbers are checked."""
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import nbformat
import pytest

from onedc_lib.nbcontract import (
    REQUIRED_PARAMETERS,
    check_notebook,
    notebook_parameters,
    strip_notebook,
)
from onedc_lib.weights import DEFAULT_MODEL, default_family

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ["00_demo_compress", "01_bitstream_anatomy", "10_train_stage0_nano", "11_train_stage1", "12_train_stage2",
            "20_eval_rd", "21_eval_speed", "30_ablation_guidance", "40_zonly_extreme", "50_figures_tables",
            "60_reproduce_paper"]
PNG = b"\x89PNG\r\n\x1a\n"
FAMILY = default_family()  # notebooks 00 and 20 show the default model's family (random presets: none bundled)
# the bundled model that the training notebooks' defaults (the default family's presets) start from
START = DEFAULT_MODEL


def test_the_notebooks_are_there():
    assert set(EXPECTED) <= set(NOTEBOOKS)


# ------------------------------------------------------------------------------------------------ the contract

@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_thin(name):
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    assert check_notebook(path) == []
    params = notebook_parameters(path)
    assert set(REQUIRED_PARAMETERS) <= set(params)
    assert isinstance(params["smoke"], bool) and params["smoke"] is False
    assert isinstance(params["overrides"], dict) and isinstance(params["out_dir"], str)
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["nbformat"] == 4


def test_notebooks_agree_with_their_builder(tmp_path):
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOK_DIR / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    for path in build.build(folder=tmp_path):
        committed = NOTEBOOK_DIR / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed.name} differs from notebooks/build.py: mirror the edit there, or run "
            "`python notebooks/build.py` after editing it")


def _notebook(parameters: str, *cells: str, kernel: str = "python3", tag: bool = True) -> dict:
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(metadata={"kernelspec": {"name": kernel, "display_name": "Python 3", "language": "python"}})
    nb.cells.append(new_code_cell(parameters, metadata={"tags": ["parameters"]} if tag else {}))
    nb.cells += [new_code_cell(c) for c in cells]
    return json.loads(nbformat.writes(nb))


GOOD_PARAMETERS = 'preset: str = "nano"\noverrides: dict = {}\nsmoke: bool = False\nout_dir: str = "out"'


def test_contract_accepts_a_thin_notebook():
    nb = _notebook(GOOD_PARAMETERS, "from onedc_lib.notebook import setup", "env = setup(threads=1)",
                   "env", 'env["device"]', "env.keys()")
    assert check_notebook(nb) == []


@pytest.mark.parametrize(("cells", "parameters", "message"), [
    (["def f():\n    return 1"], GOOD_PARAMETERS, "FunctionDef"),
    (["class A:\n    pass"], GOOD_PARAMETERS, "ClassDef"),
    (["f = lambda: 1"], GOOD_PARAMETERS, "Lambda"),
    (["for i in range(3):\n    print(i)"], GOOD_PARAMETERS, "For"),
    (["!ls"], GOOD_PARAMETERS, "shell escapes"),
    (["%time x = 1"], GOOD_PARAMETERS, "magics"),
    (["import subprocess"], GOOD_PARAMETERS, "only `from onedc_lib"),
    (["import os"], GOOD_PARAMETERS, "only `from onedc_lib"),
    (["from onedc_lib import x\nx.system('ls')"], GOOD_PARAMETERS, "system"),
    (["a = f(1)\nb = g(a)"], GOOD_PARAMETERS, "2 statements"),
    (["a = f(g(1))"], GOOD_PARAMETERS, "not one library call"),
    (["a = 1 + 2"], GOOD_PARAMETERS, "not one library call"),
    ([], 'preset = "nano"\noverrides: dict = {}\nsmoke: bool = False\nout_dir: str = "o"', "name: type = literal"),
    ([], 'preset: str = "nano"\noverrides: dict = {}\nsmoke: bool = False\nout_dir: str = x', "not a literal"),
    ([], 'preset: str = "nano"\noverrides: dict = {}\nsmoke: int = False\nout_dir: str = "o"', "is not a int"),
    ([], 'preset: str = "nano"\noverrides: dict = {}\nsmoke: bool = False', "lacks out_dir"),
    ([], GOOD_PARAMETERS + "\nimport os", "only `name: type = literal`"),
])
def test_contract_refuses(cells, parameters, message):
    problems = check_notebook(_notebook(parameters, *cells))
    assert any(message in p for p in problems), problems


def test_contract_refuses_outputs_kernel_and_missing_tag():
    nb = _notebook(GOOD_PARAMETERS, "env = setup()", kernel="ir", tag=False)
    nb["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x"}]
    nb["cells"][1]["execution_count"] = 3
    problems = " / ".join(check_notebook(nb))
    for message in ("kernel is 'ir'", "not tagged `parameters`", "outputs are stored", "execution count"):
        assert message in problems


# ------------------------------------------------------------------------------------------------ headless runs

@pytest.fixture(scope="module")
def kernel():
    """The kernelspec `python3` must start this interpreter (make setup installs it with ipykernel --sys-prefix)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.fail("no kernelspec python3: run `python -m ipykernel install --sys-prefix` (make setup does)")
    # jupyter_client runs a bare "python" as sys.executable
    assert spec.argv[0] in ("python", "python3", sys.executable) or Path(spec.argv[0]).resolve() == Path(
        sys.executable).resolve(), f"kernelspec python3 runs {spec.argv[0]}, not this venv's {sys.executable}"
    return "python3"


@pytest.fixture(scope="module")
def run_notebook(kernel, tmp_path_factory):
    """run_notebook(name, out_dir, cwd=REPO, **parameters) -> the executed notebook (nbformat node); smoke=True,
    1 thread."""
    import papermill

    def run(name: str, out_dir: Path, cwd: Path = REPO, **parameters):
        executed = tmp_path_factory.mktemp("executed") / f"{name}.ipynb"
        saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the kernel inherits them
        try:
            papermill.execute_notebook(
                str(NOTEBOOK_DIR / f"{name}.ipynb"), str(executed), kernel_name=kernel, progress_bar=False,
                cwd=str(cwd), parameters={"smoke": True, "out_dir": str(out_dir), "threads": 1, **parameters},
                execution_timeout=300)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        nb = nbformat.read(executed, as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, errors
        return nb, executed

    return run


def _outputs(nb, mime: str) -> list:
    return [o["data"][mime] for c in nb.cells for o in c.get("outputs", []) if mime in o.get("data", {})]


def _printed(nb) -> list[str]:
    """The lines a notebook printed (stdout)."""
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                   if o.output_type == "stream" and o.name == "stdout").splitlines()


def _snapshot(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.fixture(scope="module")
def shared_out(tmp_path_factory) -> Path:
    """20 and 21 write their results here; 50 makes its figures from them."""
    return tmp_path_factory.mktemp("notebook_results")


# The smoke runs whose outputs other notebooks read are fixtures: run once per module by whichever test needs them
# first, so that every test also passes alone (or on its own xdist worker).

@pytest.fixture(scope="module")
def rd_run(run_notebook, shared_out):
    """Notebook 20's smoke run -> (notebook, snapshot of results/ before, after)."""
    committed = _snapshot(REPO / "results")
    nb, _ = run_notebook("20_eval_rd", shared_out, codecs=["onedc", "jpeg", "webp", "hevc"])
    return nb, committed, _snapshot(REPO / "results")


@pytest.fixture(scope="module")
def speed_run(run_notebook, shared_out):
    """Notebook 21's smoke run -> notebook."""
    return run_notebook("21_eval_speed", shared_out)[0]


def test_00_demo_compress(run_notebook, tmp_path):
    nb, executed = run_notebook("00_demo_compress", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    assert [r["model"] for r in rows] == [f"{FAMILY}_zonly", f"{FAMILY}_q5"]  # smoke: the lowest and highest rate
    for r in rows:
        path = Path(r["file"])
        assert path.is_file() and path.stat().st_size == r["bytes"]
        assert r["bpp"] == pytest.approx(8 * r["bytes"] / (r["height"] * r["width"]))
        assert max(r["height"], r["width"]) == 64
        assert _finite(r["psnr"]) and _finite(r["enc_s"]) and _finite(r["dec_s"])
        for metric in ("lpips", "dists"):
            provisioned = results["metrics"][metric] == "ok"
            assert _finite(r[metric]) if provisioned else r[metric] is None
        assert not r["trained"] and "UNTRAINED" in r["label"]
    assert rows[0]["bpp"] < rows[1]["bpp"]  # z-only sends no y
    assert len(_outputs(nb, "image/png")) >= 2  # RD plot and side by side
    widget = _outputs(nb, "application/vnd.jupyter.widget-view+json")
    assert widget, "the widget cell shows no widget"
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    texts = [m["state"].get("value", "") for m in state.values() if m.get("model_name") == "HTMLModel"]
    assert any(f"{FAMILY}_q5 (UNTRAINED): bpp " in t for t in texts), texts  # the slider starts at the upper rate
    stripped = tmp_path / "stripped.ipynb"
    stripped.write_text(executed.read_text())
    assert strip_notebook(stripped)
    assert check_notebook(stripped) == []  # the strip tool brings an executed notebook back into the contract
    assert [c.source for c in nbformat.read(stripped, 4).cells] == [
        c.source for c in nbformat.read(NOTEBOOK_DIR / "00_demo_compress.ipynb", 4).cells]


def test_01_bitstream_anatomy(run_notebook, tmp_path):
    nb, _ = run_notebook("01_bitstream_anatomy", tmp_path)
    anatomy = json.loads((tmp_path / "anatomy.json").read_text())
    odc = tmp_path / "astronaut.odc"
    assert anatomy["total_bytes"] == odc.stat().st_size
    assert anatomy["header_bytes"] + sum(s["bytes"] for s in anatomy["sections"]) == anatomy["total_bytes"]
    assert [h["field"] for h in anatomy["header"][:3]] == ["magic", "version", "flags"]
    assert anatomy["header"][-1]["field"] == "header CRC"
    assert anatomy["header"][-1]["offset"] + 4 == anatomy["header_bytes"]
    steps = anatomy["steps"]
    assert [s["step"] for s in steps] == [0, 1, 2, 3]
    y = next(s for s in anatomy["sections"] if s["name"] == "y")
    assert all(s["coded_bytes"] > 0 and _finite(s["estimated_bits"]) and s["estimated_bits"] > 0 for s in steps)
    assert abs(sum(s["coded_bytes"] for s in steps) - y["bytes"]) <= 64
    z = next(s for s in anatomy["sections"] if s["name"] == "z")
    assert anatomy["z"]["bytes"] == z["bytes"] and anatomy["z"]["bits"] == 14 * anatomy["z"]["indices"]
    for name in ("header", "sections", "steps"):
        assert (tmp_path / f"anatomy_{name}.csv").is_file()
    assert _outputs(nb, "image/png") and len(_outputs(nb, "text/html")) >= 3


# notebook 20's "onedc" in a smoke run: the lowest and highest distinct presets (q2..q5 are q1's untrained model)
ONEDC_SMOKE = f"onedc-{FAMILY}_zonly+{FAMILY}_q1"


def test_20_eval_rd(rd_run, shared_out):
    nb, committed, after = rd_run
    results = shared_out / "results" / "samples"
    summaries = {p.stem: json.loads(p.read_text()) for p in results.glob("*.json")}
    assert set(summaries) == {ONEDC_SMOKE, "jpeg", "webp", "hevc"}
    for tag, summary in summaries.items():
        assert (results / f"{tag}.csv").is_file()
        assert len(summary["points"]) == 2 and summary["images"]["count"] == 1
        for point in summary["points"]:
            assert _finite(point["bpp"]) and point["bpp"] > 0 and _finite(point["psnr"])
        assert summary["protocol"] and summary["versions"] and summary["device"]
        files = list((shared_out / "runs" / "samples" / tag / "files").iterdir())
        assert len(files) == 2 and all(f.stat().st_size > 0 for f in files)
    assert summaries[ONEDC_SMOKE]["codec_info"]["models"][f"{FAMILY}_q1"]["untrained_parts"]
    assert _outputs(nb, "image/png") and _outputs(nb, "text/html")
    assert after == committed  # smoke runs never write into results/


def test_21_eval_speed(speed_run, shared_out):
    nb = speed_run
    report = json.loads((shared_out / "results" / "speed" / "speed_cpu.json").read_text())
    assert report["device"]["device"] == "cpu" and report["device"]["torch_threads"] == 1
    assert report["device"]["cpu_count"] >= 1 and report["device"]["torch"]
    timing = report["results"]["nano_q3"]
    assert (timing["height"], timing["width"], timing["repeats"]) == (64, 64, 1)
    for side in ("encode", "decode"):
        times = timing["median_s"][side]
        assert all(_finite(v) for v in times.values()) and times["total"] > 0
        parts = sum(v for k, v in times.items() if k not in ("total", "rans_only"))
        assert parts == pytest.approx(times["total"], rel=1e-6)
    assert (shared_out / "results" / "speed" / "speed_cpu.csv").read_text().startswith("model,side,component")
    assert len(_outputs(nb, "image/png")) == 1 and len(_outputs(nb, "text/html")) == 2


def test_30_ablation_guidance(run_notebook, tmp_path):
    """Run as on a fresh checkout (a working directory without out/): the default data and test folders under
    out/nano_data are not there, so the smoke run takes the sample photographs and says so."""
    committed = _snapshot(REPO / "results" / "ablation")  # (other results/ folders may be written meanwhile)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    nb, _ = run_notebook("30_ablation_guidance", tmp_path, cwd=checkout, lpips="off")
    printed = _printed(nb)
    assert "no test images at out/nano_data/test: evaluating the sample photographs shipped with the package" in printed
    assert "no image folder at out/nano_data/train: training on the sample photographs shipped with the package" in printed
    assert not (checkout / "out").exists()
    result = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert [p["model"] for p in result["points"]] == [f"{v}_l{l:g}" for v in ("text", "hyper", "hyper_distill")
                                                     for l in (1.8, 12.2)]
    assert all(_finite(p["bpp"]) and p["bpp"] > 0 and _finite(p["psnr"]) for p in result["points"])
    assert [r["variant"] for r in result["bdrate"]] == ["text", "hyper"]
    text = json.loads((tmp_path / "train" / "text_l1.8" / "model" / "config.json").read_text())
    assert text["config"]["codec"]["guidance"] == "text" and text["config"]["loss"]["distill_weight"] == 0
    files = list((tmp_path / "eval").glob("onedc-text_*/files/*.odc"))
    from onedc_lib import bitstream

    assert files and all("cap" in bitstream.read_file(f).section_names for f in files)  # the caption is sent
    assert (tmp_path / "results" / "rd_ablation.png").read_bytes().startswith(PNG)
    assert (tmp_path / "results" / "bdrate.csv").read_text().startswith("variant,label,anchor,bd_rate_dists")
    assert (tmp_path / "results" / "bdrate_per_image.csv").is_file()
    assert _outputs(nb, "image/png") and len(_outputs(nb, "text/html")) == 3
    assert _snapshot(REPO / "results" / "ablation") == committed  # smoke runs never write into results/


def test_50_figures_tables(run_notebook, rd_run, speed_run, shared_out, tmp_path):
    figures_before = _snapshot(REPO / "figures")
    nb, _ = run_notebook("50_figures_tables", tmp_path, results_dir=str(shared_out / "results"))
    for name in ("rd_samples.png", "speed_cpu.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG)
    for name in ("rd_samples", "bdrate_samples", "speed_cpu"):
        assert (tmp_path / "tables" / f"{name}.md").read_text().count("|") > 10
        assert (tmp_path / "tables" / f"{name}.csv").is_file()
    rd = (tmp_path / "tables" / "rd_samples.csv").read_text().splitlines()
    assert rd[0].startswith("codec,rate,bpp,psnr") and len(rd) == 1 + 8  # 4 codecs x 2 rate points
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    files = {e["file"]: e for e in manifest["outputs"]}
    assert set(files["rd_samples.png"]["inputs"]) == {f"samples/{t}.json" for t in
                                                       (ONEDC_SMOKE, "jpeg", "webp", "hevc")}
    assert files["speed_cpu.png"]["inputs"] == ["speed/speed_cpu.json"]
    assert _outputs(nb, "image/png") and _outputs(nb, "text/markdown")
    assert _snapshot(REPO / "figures") == figures_before  # smoke never touches figures/

    # regenerating from unchanged results gives identical bytes (no dates in figures or tables)
    from onedc_lib.figures import regenerate

    again = tmp_path / "again"
    regenerate(shared_out / "results", again, smoke=False, dpi=80)
    for name in ("rd_samples.png", "speed_cpu.png", "tables/rd_samples.md", "tables/bdrate_samples.csv"):
        assert (again / name).read_bytes() == (tmp_path / name).read_bytes(), name


# ------------------------------------------------------------------------------------------------ training (10-12)

@pytest.fixture(scope="module")
def train_out(tmp_path_factory) -> Path:
    """10 writes the stage-0 folder here, 11 its model, 12 starts from both."""
    return tmp_path_factory.mktemp("notebook_training")


def _check_run(nb, run: Path, names: list[str], figures: int = 2) -> None:
    """log.csv rows for the smoke steps with finite losses, sample images, a figure of each and the summary."""
    import csv

    for name in names:
        folder = run / name if name else run
        with open(folder / "log.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["step"]) for r in rows] == [1, 2]
        assert all(_finite(float(v)) for r in rows for k, v in r.items() if k.endswith("loss") and v)
        assert (folder / "samples" / "step_00000002.png").read_bytes().startswith(PNG)
    assert len(_outputs(nb, "image/png")) == figures and _outputs(nb, "text/html")  # curves, samples, ...; summary


@pytest.fixture(scope="module")
def stage0_run(run_notebook, train_out):
    """Notebook 10's smoke run (its folder feeds 11, 12 and 40) -> notebook."""
    return run_notebook("10_train_stage0_nano", train_out / "s0")[0]


@pytest.fixture(scope="module")
def stage1_run(run_notebook, train_out, stage0_run):
    """Notebook 11's smoke run (its model feeds 12 and 40) -> notebook."""
    return run_notebook("11_train_stage1", train_out / "s1", stage0=str(train_out / "s0"))[0]


def test_10_train_stage0_nano(stage0_run, train_out):
    nb = stage0_run
    _check_run(nb, train_out / "s0", ["tokenizer", "teacher"])  # nano_sr: a pretrained decoder, no VAE to train
    for file in ("tokenizer", "teacher_unet", "generator_unet"):
        assert (train_out / "s0" / f"{file}.safetensors").stat().st_size > 10_000
    assert not (train_out / "s0" / "vae.safetensors").exists()
    assert str(train_out / "s0") in "".join(_outputs(nb, "text/plain")[-1])  # the folder is shown at the end


def test_11_train_stage1(stage1_run, train_out):
    nb = stage1_run
    _check_run(nb, train_out / "s1", [""])
    provenance = json.loads((train_out / "s1" / "model" / "config.json").read_text())["provenance"]
    assert provenance["stage"] == 1 and provenance["step"] == 2
    assert provenance["random_init"] == []  # VAE, base UNet and tokenizer came from the stage-0 folder
    assert str(train_out / "s1" / "model") in "".join(_outputs(nb, "text/plain")[-1])


def test_12_train_stage2(run_notebook, train_out, stage1_run):
    nb, _ = run_notebook("12_train_stage2", train_out / "s2", stage0=str(train_out / "s0"),
                         init=str(train_out / "s1" / "model"))
    _check_run(nb, train_out / "s2", [""])
    provenance = json.loads((train_out / "s2" / "model" / "config.json").read_text())["provenance"]
    assert provenance["stage"] == 2 and provenance["random_init"] == []  # codec from 11, teacher from 10
    assert str(train_out / "s2" / "model") in "".join(_outputs(nb, "text/plain")[-1])


def test_40_zonly_extreme(run_notebook, train_out, stage1_run, tmp_path):
    """Fine-tunes 11's model as z-only (encoder frozen), then real files: z = 14 bits per 64x64 block."""
    from safetensors.torch import load_file

    committed = _snapshot(REPO / "results" / "samples")  # the dataset it evaluates
    init = train_out / "s1" / "model"
    nb, _ = run_notebook("40_zonly_extreme", tmp_path, init=str(init), stage0=str(train_out / "s0"),
                         images="samples")
    _check_run(nb, tmp_path, [""], figures=3)  # curves, samples, original vs z-only
    config = json.loads((tmp_path / "model" / "config.json").read_text())["config"]
    assert config["codec"]["z_only"] and config["train"]["freeze"] == ["codec.enc", "codec.hyper_enc"]
    before, after = load_file(str(init / "model.safetensors")), load_file(str(tmp_path / "model" / "model.safetensors"))
    for prefix, trained in (("codec.enc.", False), ("codec.hyper_enc.", False), ("codec.dec.", True)):
        keys = [k for k in before if k.startswith(prefix)]
        assert keys and any(not before[k].equal(after[k]) for k in keys) == trained, prefix
    results = tmp_path / "results" / "samples"
    tag = f"onedc-{tmp_path.name}"  # the runner names a training run's model/ by the run's folder
    summary = json.loads((results / f"zonly_{tag}.json").read_text())
    assert summary["z_bits_per_block"] == 14 and summary["images"] == 1
    import csv

    with open(results / f"zonly_{tag}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        h, w, file_bytes = int(row["height"]), int(row["width"]), int(row["file_bytes"])
        blocks = -(-h // 64) * -(-w // 64)
        assert (h, w, int(row["blocks"]), int(row["z_bits"])) == (64, 96, blocks, 14 * blocks)
        assert int(row["z_bytes"]) == -(-14 * blocks // 8)
        assert int(row["z_bytes"]) + int(row["container_bytes"]) + int(row["other_bytes"]) == file_bytes
        assert (tmp_path / "runs" / "samples" / row["file"]).stat().st_size == file_bytes
        assert float(row["bpp"]) == pytest.approx(8 * file_bytes / (h * w), rel=1e-6)
        assert float(row["bpp_z"]) == pytest.approx(14 * blocks / (h * w), rel=1e-6)
        assert _finite(float(row["psnr"]))
    assert summary["mean"]["bpp"] == pytest.approx(float(rows[0]["bpp"]))
    assert _snapshot(REPO / "results" / "samples") == committed  # smoke runs never write into results/



STAGE0_DEFAULT = "out/notebooks/10_train_stage0_nano"  # the notebooks' defaults, relative to the checkout


@pytest.mark.parametrize("name", ["11_train_stage1", "12_train_stage2", "40_zonly_extreme"])
def test_training_notebooks_start_on_a_fresh_checkout(run_notebook, name, tmp_path, monkeypatch):
    """No out/ (a fresh checkout) and the notebook's defaults: the stage-0 folder, notebook 11's model and the nano
    test split are not there; the smoke run starts from the bundled models' parts and the sample photographs, and
    says so in one line each."""
    monkeypatch.delenv("ONEDC_BUNDLED_DIR")  # the kernel sees the package's bundled models, as a user's does
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    init = str(REPO / "onedc_lib" / "weights" / f"{FAMILY}_q1")  # 40's default, which a checkout has
    nb, _ = run_notebook(name, tmp_path / "run", cwd=checkout, **({"init": init} if name.startswith("40") else {}))
    printed = _printed(nb)
    bundled = f"starting from the bundled model's parts ({START}: VAE, generator, codec)"
    expected = {
        "11_train_stage1": [f"no stage-0 folder at {STAGE0_DEFAULT}: {bundled}; the tokenizer is not bundled: random"],
        "12_train_stage2": [f"no stage-0 folder at {STAGE0_DEFAULT}, no model folder at "
                            f"out/notebooks/11_train_stage1/model: {bundled}; the teacher UNet is not bundled: random"],
        "40_zonly_extreme": [f"no stage-0 folder at {STAGE0_DEFAULT}: the model comes from {init}; the tokenizer is "
                             "not bundled: random",
                             "no test images at out/nano_data/test: evaluating the sample photographs shipped with "
                             "the package"],
    }[name]
    assert [line for line in printed if line.startswith("no ")] == expected
    assert any(line.endswith("on the sample photographs shipped with the package (4 images), 1 process(es), cpu, "
                             "mixed precision no") for line in printed)
    provenance = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["provenance"]
    assert provenance["random_init"] == (["teacher UNet"] if name.startswith("12") else ["tokenizer"])
    if name.startswith("40"):
        summaries = list((tmp_path / "run" / "results" / "samples").glob("zonly_*.json"))
        assert len(summaries) == 1 and json.loads(summaries[0].read_text())["images"] == 1
    assert not (checkout / "out").exists()
