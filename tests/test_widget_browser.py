"""The explorers as a user meets them: JupyterLab in headless Chromium, run all, move the sliders.

The mask explorer: a throw-away notebook builds a synthetic difference map and displays
`mask_explorer`; the test runs all cells from the Run menu, presses the right arrow on the
threshold slider 20 times, timing each press from the key event to the painted picture, and
checks that the picture the browser shows is exactly the mask for the new threshold (the same
PNG this process computes), drawn pixelated at 4 screen pixels per pixel. Then it restarts the
kernel (the explorer must say "run this cell") and reopens the saved notebook (the "run this
cell" line must show above ipywidgets' "model not found").

The edit explorer: `edit_explorer` on the bundled model's example edit; 20 timed steps of its
threshold slider, then a click on Edit: the after-image must appear and differ from the input
only inside the mask the sliders chose.

It runs in JupyterLab 4 with ipywidgets 8 (`make test`), and in JupyterLab 3 with
jupyterlab_widgets 1.1 and ipywidgets 7.7.1 (`make test-colab-browser`: Colab's ipywidgets; the
front end nearest to Colab's that runs here).

The latencies are printed (run with -s to see them) and recorded as test properties
(`record_property`: in the JUnit XML report); they are measured, never asserted:
benchmarks/widget_latency.py reports them against the target.

Needs the Debian `chromium` package (/usr/bin/chromium; DIFFEDIT_CHROMIUM names another binary)
and the `playwright` and `jupyterlab` Python packages; no browser is downloaded. With
DIFFEDIT_REQUIRE_BROWSER=1 (as in CI) a missing piece is an error; otherwise the test is skipped.
"""

from __future__ import annotations

import base64
import io
import os
import re
import time

import numpy as np
import pytest
from lab_browser import (TIMEOUT_MS, browser, describe, lab_server, lab_version, missing_pieces, open_and_run_all,
                         run_menu, slider_latency, summary)
from PIL import Image

pytestmark = pytest.mark.slow

REQUIRED = os.environ.get("DIFFEDIT_REQUIRE_BROWSER", "") not in ("", "0")
START, STEPS, STEP = 0.30, 20, 0.01  # the slider starts at 0.30; 20 presses of the right arrow reach 0.50
SCALE = 4  # a 64 px image is shown at 4 screen pixels per pixel
HANDLE = ".noUi-handle, .ui-slider-handle"  # a slider's handle: noUiSlider in ipywidgets 8, jQuery UI in 7

# Cell 1 of the mask explorer's notebook, also run here for the expected pictures. The map is a
# cone quantised to the levels (k + 0.5) / 100, so every 0.01 step of the slider changes the mask
# and no pixel lies on a stop (a float tail in a stop cannot change the mask).
MAP_CELL = """\
import numpy as np
from PIL import Image

yy, xx = np.mgrid[:64, :64]
r = np.hypot(yy - 31.5, xx - 31.5)
diff_map = ((np.minimum(np.floor(np.clip(1 - r / 32, 0, 1) * 100), 99) + 0.5) / 100).astype(np.float32)  # (64, 64)
image = Image.fromarray(np.stack([xx * 4, yy * 4, np.full_like(xx, 128)], axis=-1).astype(np.uint8))
"""
EXPLORER_CELL = f"""\
from diffedit_helpers.widgets import mask_explorer

explorer = mask_explorer(image, diff_map, threshold={START}, blur=0, fill_holes=False)
explorer
"""
EDIT_CELL = """\
from diffedit_helpers import load_model, to_rgb
from diffedit_helpers.paths import example_edit
from diffedit_helpers.widgets import edit_explorer

model = load_model("bundled")
IMAGE, SOURCE, TARGET = example_edit(model)
explorer = edit_explorer(model, to_rgb(IMAGE), SOURCE, TARGET, seed=0)
explorer
"""
NOTE_TEXT = "Run this cell to start the explorer"


@pytest.fixture(scope="module")
def browser_available():
    missing = missing_pieces()
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if REQUIRED:
            pytest.fail(message + "; DIFFEDIT_REQUIRE_BROWSER is set, so this is an error", pytrace=False)
        pytest.skip(message)
    import ipywidgets

    print(f"\nJupyterLab {lab_version()}, ipywidgets {ipywidgets.__version__} in the kernel")


# the bytes behind an <img> (a blob: URL in ipywidgets 8), as base64
FETCH_IMG = """async (img) => {
    const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
    let s = ""; for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s);
}"""


def shown_png(page, box) -> bytes | None:
    "The PNG of the picture `box` shows (its one visible <img>); None while it is being replaced."
    try:
        img = page.evaluate_handle("(box) => window.__latency.visible(box)", box.element_handle())
        return base64.b64decode(img.evaluate(FETCH_IMG))
    except Exception:  # no picture yet, or its src was revoked by a newer redraw: read again
        return None


def wait_for_png(page, box, png: bytes, what: str, timeout_s: float = TIMEOUT_MS / 1000) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if shown_png(page, box) == png:
            return
        time.sleep(0.2)
    pytest.fail(f"the picture never showed {what}", pytrace=False)


def panels(png: bytes) -> list[np.ndarray]:
    "A picture of three (64, 64) panels, PAD pixels apart -> the three (64, 64, 3) RGB panels."
    from diffedit_helpers.widgets import PAD

    view = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert view.shape == (64, 3 * 64 + 2 * PAD, 3)
    return [view[:, i * (64 + PAD) : i * (64 + PAD) + 64] for i in range(3)]


def report(record_property, name: str, steps) -> None:
    s = summary(steps)
    line = describe(name, s)
    print("\n" + line)
    record_property(f"{name} median ms", round(s["median"], 1))
    record_property(f"{name} quartiles ms", f"{s['q1']:.1f} to {s['q3']:.1f}")
    record_property(f"{name} latency", line)


def expect_idle(page):
    from playwright.sync_api import expect

    expect(page.locator("#jp-main-statusbar")).to_contain_text(re.compile(r"\|\s*Idle"), timeout=TIMEOUT_MS)


def test_mask_explorer_in_the_browser(browser_available, tmp_path, record_property):
    from playwright.sync_api import expect

    from diffedit_helpers.widgets import mask_explorer

    cell: dict = {}
    exec(MAP_CELL, cell)
    local = mask_explorer(cell["image"], cell["diff_map"], threshold=START, blur=0, fill_holes=False)
    start_png, start_label = local.view.value, local.area.value
    local.threshold.value = end = round(START + STEPS * STEP, 2)
    end_png, end_label = local.view.value, local.area.value
    assert start_png != end_png and start_label != end_label  # the two thresholds make different masks

    with lab_server(tmp_path, [MAP_CELL, EXPLORER_CELL]) as lab, browser(tmp_path) as page:
        open_and_run_all(page, lab)
        # 1. the explorer renders with the start threshold, its picture scaled up pixelated
        slider = page.locator(".widget-hslider", has_text="threshold")
        expect(slider.locator(".widget-readout")).to_have_text(f"{START:.2f}", timeout=TIMEOUT_MS)
        box = page.locator(".diffedit-frames")
        area = page.locator(".widget-label", has_text="% of the image")
        expect(area).to_have_text(start_label, timeout=TIMEOUT_MS)
        wait_for_png(page, box, start_png, f"the mask for threshold {START:.2f}")
        img = page.evaluate_handle("(box) => window.__latency.visible(box)", box.element_handle())
        width, rendering = img.evaluate("(i) => [i.getBoundingClientRect().width, getComputedStyle(i).imageRendering]")
        assert (round(width), rendering) == (SCALE * (3 * 64 + 2 * 4), "pixelated")
        track = slider.locator(".slider-container, .noUi-target").first.bounding_box()["width"]
        assert track >= 4 * 100, f"the threshold slider's track is {track:.0f} px for 100 steps"
        expect(page.locator("em", has_text=NOTE_TEXT)).to_be_hidden()  # the live widget hides the line

        # 2. 20 presses of the right arrow, each timed from the key event to the painted picture
        steps = slider_latency(page, slider.locator(HANDLE), box, STEPS)
        expect(slider.locator(".widget-readout")).to_have_text(f"{end:.2f}", timeout=TIMEOUT_MS)
        expect(area).to_have_text(end_label, timeout=TIMEOUT_MS)
        wait_for_png(page, box, end_png, f"the mask for threshold {end:.2f}")
        report(record_property, "mask explorer", steps)

        # 3. Kernel > Restart: the old widget stays, greyed out, and asks for its cell to be run
        page.keyboard.press("Escape")
        run_menu(page, "Restart Kernel", "Kernel")
        page.locator(".jp-Dialog button.jp-mod-accept").click()
        expect_idle(page)
        expect(page.locator(".diffedit-stale")).to_be_visible(timeout=TIMEOUT_MS)

        # 4. saved and reopened: the "run this cell" line shows above "model not found"
        page.keyboard.press("Control+s")
        expect(page.locator(".jp-mod-dirty")).to_have_count(0, timeout=TIMEOUT_MS)
        page.reload()
        expect_idle(page)
        expect(page.locator("em", has_text=NOTE_TEXT)).to_be_visible(timeout=TIMEOUT_MS)


def test_edit_explorer_in_the_browser(browser_available, bundled, tmp_path, record_property):
    from playwright.sync_api import expect

    from diffedit_helpers import to_rgb
    from diffedit_helpers.paths import example_edit
    from diffedit_helpers.widgets import edit_explorer

    image, source, target = example_edit(bundled)
    rgb = np.asarray(to_rgb(image))
    local = edit_explorer(bundled, to_rgb(image), source, target, seed=0)  # the kernel's explorer, computed here
    first = local.masks.threshold.value
    end_index = local.masks.threshold.index + STEPS
    local.masks.threshold.index = end_index
    end, end_png, end_mask = local.masks.threshold.value, local.masks.view.value, local.mask

    with lab_server(tmp_path, [EDIT_CELL]) as lab, browser(tmp_path) as page:
        open_and_run_all(page, lab)
        slider = page.locator(".widget-hslider", has_text="mask threshold")
        expect(slider.locator(".widget-readout")).to_have_text(f"{first:.2f}", timeout=TIMEOUT_MS)
        box = page.locator(".diffedit-frames")
        steps = slider_latency(page, slider.locator(HANDLE), box, STEPS)
        expect(slider.locator(".widget-readout")).to_have_text(f"{end:.2f}", timeout=TIMEOUT_MS)
        wait_for_png(page, box, end_png, f"the mask for threshold {end:.2f}")
        report(record_property, "edit explorer", steps)

        # Edit: the after-image appears, timed from the mouse press to the painted picture
        after_box = page.locator("img.diffedit-after").locator("xpath=..")
        page.evaluate("(box) => window.__latency.arm(box)", after_box.element_handle())
        page.locator(".diffedit-explorer button", has_text="Edit").click()
        page.wait_for_function("() => window.__latency.step.paint !== null", timeout=TIMEOUT_MS)
        click_ms = page.evaluate("() => window.__latency.step.paint - window.__latency.step.key")
        expect(page.locator(".widget-label", has_text="edited in")).to_be_visible(timeout=TIMEOUT_MS)
        before, over, after = panels(shown_png(page, after_box))
    print(f"\nedit explorer: click -> painted after-image {click_ms:.0f} ms")
    record_property("edit click ms", round(click_ms))
    np.testing.assert_array_equal(before, rgb)
    used = (over != before).any(-1)  # the overlay tints exactly the mask the edit used
    np.testing.assert_array_equal(used, end_mask)  # the one the slider chose in the browser
    changed = (after != before).any(-1)
    assert changed.any(), "the edit changed nothing"
    assert not (changed & ~used).any(), f"{int((changed & ~used).sum())} pixels changed outside the mask"
