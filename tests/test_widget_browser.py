"""The mask explorer as a user meets it: JupyterLab in headless Chromium, run all, move the slider.

Starts JupyterLab on a free loopback port with a throw-away notebook that builds a synthetic
difference map and displays `mask_explorer`, runs all cells from the Run menu, presses the
arrow key on the threshold slider, and checks that the image the browser shows is exactly the
mask for the new threshold (the same PNG this process computes), and not the old one.

Needs the Debian `chromium` package (/usr/bin/chromium; DIFFEDIT_CHROMIUM names another binary)
and the `playwright` and `jupyterlab` Python packages; no browser is downloaded. With
DIFFEDIT_REQUIRE_BROWSER=1 (as in CI) a missing piece is an error; otherwise the test is skipped.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("DIFFEDIT_CHROMIUM", "/usr/bin/chromium")  # the Debian package's browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REQUIRED = os.environ.get("DIFFEDIT_REQUIRE_BROWSER", "") not in ("", "0")
START, STEPS, STEP = 0.30, 20, 0.01  # the slider starts at 0.30; 20 presses of the right arrow reach 0.50
TIMEOUT_MS = 60_000  # one wait (server start, kernel start, first render); the test takes far less

# Cell 1 of the notebook, also run here for the expected pictures. The map is a cone quantised to
# the levels (k + 0.5) / 20, so no pixel lies near a threshold on the slider's 0.01 grid and a float
# tail in the slider value (0.5 vs 0.49999999999999994) cannot change the mask.
MAP_CELL = """\
import numpy as np
from PIL import Image

yy, xx = np.mgrid[:64, :64]
r = np.hypot(yy - 31.5, xx - 31.5)
diff_map = ((np.minimum(np.floor(np.clip(1 - r / 32, 0, 1) * 20), 19) + 0.5) / 20).astype(np.float32)  # (64, 64)
image = Image.fromarray(np.stack([xx * 4, yy * 4, np.full_like(xx, 128)], axis=-1).astype(np.uint8))
"""
EXPLORER_CELL = f"""\
from diffedit_helpers.widgets import mask_explorer

explorer = mask_explorer(image, diff_map, threshold={START}, blur=0, fill_holes=False)
explorer
"""


def missing_pieces() -> list[str]:
    "What the browser test needs and this machine lacks."
    missing = [f"the Python package {name} (pip install -r requirements.txt)"
               for name in ("playwright", "jupyterlab", "ipykernel", "nbformat") if importlib.util.find_spec(name) is None]
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    return missing


@pytest.fixture(scope="module")
def browser_available():
    missing = missing_pieces()
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if REQUIRED:
            pytest.fail(message + "; DIFFEDIT_REQUIRE_BROWSER is set, so this is an error", pytrace=False)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(MAP_CELL), nbformat.v4.new_code_cell(EXPLORER_CELL)]
    nbformat.write(nb, str(path))


def log_tail(path, n=3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


@dataclass
class Lab:
    "A JupyterLab server this test started: its base URL, its process and its log file."

    url: str
    proc: subprocess.Popen
    log: Path

    def wait_ready(self, timeout_s: float = TIMEOUT_MS / 1000) -> str:
        "Poll the status API until the server answers (no proxy: it is on loopback); return the URL."
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {self.proc.returncode}:\n{log_tail(self.log)}", pytrace=False)
            try:
                with opener.open(self.url + "api/status", timeout=2) as response:
                    if response.status == 200:
                        return self.url
            except OSError:
                time.sleep(0.25)
        pytest.fail(f"JupyterLab did not answer at {self.url} in time:\n{log_tail(self.log)}", pytrace=False)


def stop(proc: subprocess.Popen) -> None:
    "SIGTERM (the server shuts its kernels down), then SIGKILL its process group if it hangs."
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def lab(browser_available, tmp_path):
    """JupyterLab on 127.0.0.1:<free port>, no token, its notebook dir a temp folder holding
    explorer.ipynb; config, data and runtime dirs are temp folders too. Yields a `Lab` as soon as
    the process starts (the test prepares its browser meanwhile), and always stops the server."""
    dirs = {name: tmp_path / name for name in ("notebooks", "runtime", "config", "data", "ipython")}
    for d in dirs.values():
        d.mkdir()
    write_notebook(dirs["notebooks"] / "explorer.ipynb")
    # no announcements feed, no update check, no extension index (nothing to fetch), no toast asking
    (dirs["config"] / "jupyter_server_config.json").write_text(json.dumps({"LabApp": {
        "news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate", "extension_manager": "readonly"}}))
    notifications = dirs["config"] / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    notifications.mkdir(parents=True)
    (notifications / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = free_port()
    cmd = [sys.executable, "-m", "jupyterlab", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", "--ServerApp.open_browser=False", "--IdentityProvider.token=",
           f"--ServerApp.root_dir={dirs['notebooks']}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(dirs["runtime"]), JUPYTER_CONFIG_DIR=str(dirs["config"]),
               JUPYTER_DATA_DIR=str(dirs["data"]), IPYTHONDIR=str(dirs["ipython"]),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    log = tmp_path / "jupyterlab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        yield Lab(f"http://127.0.0.1:{port}/", proc, log)
    finally:
        stop(proc)


def expected_views() -> dict[float, tuple[bytes, str]]:
    """The view's PNG and area label for the start and the end threshold, computed here from the
    notebook's own cell."""
    from diffedit_helpers.widgets import mask_explorer

    cell: dict = {}
    exec(MAP_CELL, cell)
    explorer = mask_explorer(cell["image"], cell["diff_map"], threshold=START, blur=0, fill_holes=False)
    views = {START: (explorer.view.value, explorer.area.value)}
    explorer.threshold.value = round(START + STEPS * STEP, 2)
    views[explorer.threshold.value] = (explorer.view.value, explorer.area.value)
    return views


# the bytes behind the <img> the Image widget draws (a blob: URL in ipywidgets 8), as base64
FETCH_IMG = """async (img) => {
    const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
    let s = ""; for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s);
}"""


def shown_png(img):
    "The src of the widget's <img> and the PNG it shows (None while the src is being replaced)."
    src = img.get_attribute("src")
    try:
        return src, base64.b64decode(img.evaluate(FETCH_IMG))
    except Exception:  # the src was revoked by a newer redraw: read again
        return src, None


def wait_for_png(img, png: bytes, what: str, timeout_s: float = TIMEOUT_MS / 1000) -> str:
    "Wait until the <img> shows exactly `png`; return its src."
    deadline, src = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        src, shown = shown_png(img)
        if shown == png:
            return src
        time.sleep(0.2)
    pytest.fail(f"the mask image never showed {what} (last src {src})", pytrace=False)


def test_moving_the_threshold_slider_redraws_the_mask(lab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    (start, (start_png, start_label)), (end, (end_png, end_label)) = expected_views().items()
    assert start_png != end_png and start_label != end_label  # the two thresholds make different masks
    page = None
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context.set_default_timeout(TIMEOUT_MS)
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(lab.wait_ready() + "lab/tree/explorer.ipynb")

            # 1. the kernel is up: the status bar reads "Python 3 (ipykernel) | Idle" (run-all sent
            #    before that, e.g. on an earlier idle indicator, can be dropped)
            expect(page.locator("#jp-main-statusbar")).to_contain_text(re.compile(r"\|\s*Idle"), timeout=TIMEOUT_MS)
            # 2. Run > Run All Cells, as a user would
            page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()

            # 3. the explorer renders with the start threshold
            slider = page.locator(".widget-hslider", has_text="threshold")
            expect(slider.locator(".widget-readout")).to_have_text(f"{start:.2f}", timeout=TIMEOUT_MS)
            img = page.locator("img.widget-image")
            area = page.locator(".widget-label", has_text="% of the image")
            expect(area).to_have_text(start_label, timeout=TIMEOUT_MS)
            src_before = wait_for_png(img, start_png, f"the mask for threshold {start:.2f}")

            # 4. move the slider with the keyboard, then wait for the final state
            slider.locator(".noUi-handle").focus()
            for _ in range(STEPS):
                page.keyboard.press("ArrowRight")
            expect(slider.locator(".widget-readout")).to_have_text(f"{end:.2f}", timeout=TIMEOUT_MS)
            expect(area).to_have_text(end_label, timeout=TIMEOUT_MS)
            src_after = wait_for_png(img, end_png, f"the mask for threshold {end:.2f}")
        except BaseException:  # pytest.fail raises a BaseException
            if page is not None:  # keep what the user would have seen, next to the server log
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(tmp_path / "failure.png"))
            raise
        finally:
            context.close()
    assert src_after != src_before  # the browser swapped the picture, and it shows the new mask
