"""00_demo_compress in a real browser: JupyterLab + headless Chromium (playwright, the system's chromium; no
browser download). Runs the notebook's cells (smoke parameters), moves the rate slider one step with the
keyboard and checks that the page then shows the other rate's bpp. A screenshot is kept in out/browser/.

Runs in CI (.ci/run installs chromium with .ci/install-browser and sets ONEDC_REQUIRE_BROWSER=1, which makes a
missing browser a failure); elsewhere skipped without /usr/bin/chromium (Debian: `apt-get install chromium`) or
the `playwright` package. About a minute on 2 cores.
"""
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from onedc_lib.weights import default_family

REPO = Path(__file__).resolve().parents[2]
FAMILY = default_family()  # the demo shows the default model's family (here its presets: the suite bundles none)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = REPO / "out" / "browser"



def _missing(reason: str):
    if os.environ.get("ONEDC_REQUIRE_BROWSER"):
        pytest.fail(f"ONEDC_REQUIRE_BROWSER is set but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def browser_ready():
    """Skips (fails under ONEDC_REQUIRE_BROWSER) without chromium or playwright."""
    if not Path(CHROMIUM).is_file():
        _missing(f"there is no {CHROMIUM} (apt-get install chromium, or .ci/install-browser as root)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright package is not installed (pip install -e .[test])")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(browser_ready, tmp_path):
    """A JupyterLab server rooted at tmp_path holding 00_demo_compress with smoke parameters injected."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(REPO / "notebooks" / "00_demo_compress.ipynb"))
    nb = parameterize_notebook(nb, {"smoke": True, "out_dir": str(tmp_path / "out"), "threads": 1})
    nbformat.write(nb, tmp_path / "demo.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115  closed after the server stops
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter_config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter_runtime"), "JUPYTERLAB_SETTINGS_DIR":
           str(tmp_path / "lab_settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab_workspaces")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
         "--ServerApp.disable_check_xsrf=True", "--LabApp.news_url=", "--allow-root",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail("JupyterLab did not start: " + (tmp_path / "server.log").read_text()[-2000:])
            time.sleep(0.5)
    _start_kernel(url, token, "demo.ipynb")
    yield f"{url}/lab/tree/demo.ipynb?token={token}", tmp_path / "out"
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


def _start_kernel(url: str, token: str, path: str) -> None:
    """The notebook's session with a python3 kernel, started through the REST API before the page opens, so that
    the page attaches to it (a page that starts its own kernel raced with Run All: a kernel-choice dialog)."""
    import json

    request = urllib.request.Request(
        f"{url}/api/sessions?token={token}", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"path": path, "name": path, "type": "notebook", "kernel": {"name": "python3"}}).encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        assert json.loads(response.read())["kernel"]["name"] == "python3"


def _summary(page) -> str:
    return page.locator("pre.onedc-summary").first.inner_text()


def _run_all_cells(page, attempts: int = 4) -> None:
    """Run > Run All Cells from the menu, again while no cell has started: a notebook opened a moment before its
    kernel connection is complete drops the request (the cells stay `[ ]`)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    started = page.locator(".jp-InputPrompt", has_text=re.compile(r"\[(\*|\d+)\]")).first
    for _ in range(attempts):
        choose = page.locator(".jp-Dialog button", has_text=re.compile(r"^Select$"))
        if choose.count():  # a kernel-choice dialog: the notebook's own kernel
            choose.first.click()
        try:  # the dialog may also open just after the check: it then blocks the menu, and the next round picks it
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).first.click(timeout=5_000)
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).first.click(timeout=5_000)
        except PlaywrightTimeout:
            continue
        try:
            started.wait_for(timeout=15_000)
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")  # close the menu if it is still open
    pytest.fail(f"Run All Cells started no cell in {attempts} attempts")


def _run_until_shown(page, locator, attempts: int = 3, timeout_ms: int = 150_000) -> None:
    """Run All until `locator` appears: a run sent while the page swaps its kernel connection is lost whole (every
    prompt back to `[ ]`, seen in CI), so a run that shows nothing in time is sent again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(attempts):
        _run_all_cells(page)
        try:
            locator.wait_for(timeout=timeout_ms)
            return
        except PlaywrightTimeout:
            continue
    pytest.fail(f"the notebook showed no result after {attempts} runs")


@pytest.mark.browser  # on its own: inside the full suite its notebook run was lost now and then (kernel reconnects)
def test_slider_reencodes_and_shows_the_new_bpp(lab):
    from playwright.sync_api import expect, sync_playwright

    url, out_dir = lab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("demo_*.png"):  # only this run's screenshots are the artifact
        old.unlink()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(url, timeout=120_000)
            page.locator(".jp-Notebook").first.wait_for(timeout=120_000)
            # the toolbar's kernel indicator says idle once the kernel is up
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=120_000)
            summary = page.locator("pre.onedc-summary").first
            _run_until_shown(page, summary)
            before = _summary(page)
            assert before.startswith(f"{FAMILY}_q5 (UNTRAINED): bpp ")
            bpp_before = float(re.search(r"bpp ([0-9.]+)", before).group(1))
            page.screenshot(path=str(SCREENSHOTS / "demo_before.png"), full_page=True)

            handle = page.locator(".widget-slider .noUi-handle").first
            handle.scroll_into_view_if_needed()
            handle.focus()
            page.keyboard.press("ArrowLeft")  # one step down: q5 -> zonly (smoke keeps two rates)
            expect(summary).to_contain_text(f"{FAMILY}_zonly (UNTRAINED): bpp ", timeout=120_000)
            after = _summary(page)
            bpp_after = float(re.search(r"bpp ([0-9.]+)", after).group(1))
            summary.scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOTS / "demo_slider_moved.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(SCREENSHOTS / "demo_failed.png"), full_page=True)  # what the page showed
            raise
        finally:
            browser.close()
    assert bpp_after < bpp_before  # z-only: no y section
    zonly = out_dir / f"astronaut_{FAMILY}_zonly.odc"  # the page's bpp is this file's
    assert bpp_after == pytest.approx(8 * zonly.stat().st_size / (64 * 64), abs=5e-5)
    for name in ("demo_before.png", "demo_slider_moved.png"):
        assert (SCREENSHOTS / name).stat().st_size > 10_000
