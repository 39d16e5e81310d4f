"""The explorers' latency in a real browser: from the key event on a slider to the painted picture.

    OMP_NUM_THREADS=1 python benchmarks/widget_latency.py             # about 2 minutes
    OMP_NUM_THREADS=1 python benchmarks/widget_latency.py --steps 10  # a quick look

JupyterLab in headless Chromium (the harness of tests/test_widget_browser.py, tests/lab_browser.py)
runs one notebook with four explorers on the bundled model's 64 x 64 pictures: the mask explorer
on a synthetic map whose mask changes at every stop, the same with the picture redrawn by the
kernel (`cached=False`, the path pictures larger than MAX_FRAME_PIXELS take; the old design), the
mask explorer on the horse's map, and the edit explorer. Each gets --steps presses of the right
arrow on its threshold slider, one at a time, each timed from the key event to the frame that
paints the new picture; then the edit explorer's Edit button is clicked --clicks times, seeds 1, 2, ...
(mouse press to the painted after-image), and the blur slider of the horse explorer is stepped (a step that leaves the picture as
it was is left out).
The kernel's own work per change (the same changes made in this process, without a browser) is
timed beside it. Writes benchmarks/results/widget_latency.md; the target is a median of at most
40 ms per threshold step.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from lab_browser import (TIMEOUT_MS, browser, describe, lab_server, missing_pieces, open_and_run_all,  # noqa: E402
                         slider_latency, summary)

RESULTS = Path(__file__).parent / "results"
TARGET_MS = 40.0
BLUR_STEPS = 8  # presses of the right arrow on the horse explorer's blur slider (0, 1, 3, ... 15 px)

SETUP = """\
from diffedit_helpers import difference_map, load_model, to_rgb
from diffedit_helpers.paths import example_edit
from diffedit_helpers.widgets import MaskExplorer, edit_explorer, mask_explorer

yy, xx = np.mgrid[:64, :64]
r = np.hypot(yy - 31.5, xx - 31.5)
cone = ((np.minimum(np.floor(np.clip(1 - r / 32, 0, 1) * 100), 99) + 0.5) / 100).astype(np.float32)  # (64, 64)
gradient = np.stack([xx * 4, yy * 4, np.full_like(xx, 128)], axis=-1).astype(np.uint8)
model = load_model("bundled")
IMAGE, SOURCE, TARGET = example_edit(model)
horse = to_rgb(IMAGE)
"""
# one cell per explorer, each tagged with a class so the benchmark finds its slider and picture
CELLS = {
    "mask explorer, synthetic map (frames in the browser)":
        "e = mask_explorer(gradient, cone, threshold=0.3, blur=0, fill_holes=False); e.add_class('bench-0'); e",
    "mask explorer, synthetic map (redrawn by the kernel)":
        "e = MaskExplorer(gradient, cone, 0.3, 0, False, scale=4, cached=False); e.add_class('bench-1'); e",
    "mask explorer, horse map on the bundled model (frames in the browser)":
        "e = mask_explorer(horse, difference_map(model, horse, SOURCE, TARGET)); e.add_class('bench-2'); e",
    "edit explorer, bundled model (frames in the browser)":
        "e = edit_explorer(model, horse, SOURCE, TARGET, seed=0); e.add_class('bench-3'); e",
}


def measure_browser(steps: int, clicks: int) -> tuple[dict, list[float], list]:
    "Slider steps per explorer, Edit click times (ms) and blur steps, in JupyterLab/Chromium."
    from playwright.sync_api import expect

    results, click_ms = {}, []
    with tempfile.TemporaryDirectory() as tmp, lab_server(Path(tmp), [SETUP, *CELLS.values()]) as lab, \
            browser(Path(tmp)) as page:
        open_and_run_all(page, lab)
        for i, name in enumerate(CELLS):
            explorer = page.locator(f".bench-{i}")
            slider = explorer.locator(".widget-hslider", has_text="threshold").first
            expect(slider.locator(".widget-readout")).to_be_visible(timeout=TIMEOUT_MS)
            time.sleep(1.0)  # let the frames arrive
            box = explorer.locator(".diffedit-frames" if "frames" in name else "img.widget-image >> xpath=..").first
            results[name] = slider_latency(page, slider.locator(".noUi-handle"), box, steps)
            print(describe(name, summary(results[name])), flush=True)
        after_box = page.locator(".bench-3 img.diffedit-after >> xpath=..")
        for k in range(clicks):
            seed = page.locator(".bench-3 .widget-text input").first
            seed.fill(str(k + 1))  # a new seed each time: a repeated edit would paint the same picture
            seed.press("Enter")
            page.evaluate("(box) => window.__latency.arm(box)", after_box.element_handle())
            page.locator(".bench-3 button", has_text="Edit").click()
            page.wait_for_function("() => window.__latency.step.paint !== null", timeout=TIMEOUT_MS)
            click_ms.append(page.evaluate("() => window.__latency.step.paint - window.__latency.step.key"))
            expect(page.locator(".bench-3 button", has_text="Edit")).to_be_enabled(timeout=TIMEOUT_MS)
        print(f"edit clicks (ms): {[round(c) for c in click_ms]}", flush=True)
        threshold = page.locator(".bench-2 .widget-hslider", has_text="threshold").first
        threshold.locator(".noUi-handle").focus()
        for _ in range(steps):  # back to the default threshold, where the blur moves the horse's outline
            page.keyboard.press("ArrowLeft")
        expect(threshold.locator(".widget-readout")).to_have_text("0.25", timeout=TIMEOUT_MS)
        time.sleep(1.0)
        blur = page.locator(".bench-2 .widget-hslider", has_text="blur").first
        blur_steps = slider_latency(page, blur.locator(".noUi-handle"), page.locator(".bench-2 .diffedit-frames"),
                                    BLUR_STEPS, pause_s=0.5, unchanged_after_s=2.0)
        print(describe("blur slider (every frame redrawn by the kernel)", summary(blur_steps)), flush=True)
    return results, click_ms, blur_steps


def kernel_work(steps: int) -> dict:
    "Median ms of the kernel's own work per change, timed in this process (no browser, no messaging)."
    exec(SETUP, cell := {})
    from diffedit_helpers.widgets import MaskExplorer, mask_explorer

    def per_step(explorer, control, values):
        times = []
        for v in values:
            t0 = time.perf_counter()
            control.value = v
            times.append(1000 * (time.perf_counter() - t0))
        return statistics.median(times)

    stops = [round(0.3 + 0.01 * i, 2) for i in range(1, steps + 1)]
    frames = mask_explorer(cell["gradient"], cell["cone"], threshold=0.3, blur=0, fill_holes=False)
    redrawn = MaskExplorer(cell["gradient"], cell["cone"], 0.3, 0, False, scale=4, cached=False)
    return {"threshold step, frames in the browser (re-mask, relabel)": per_step(frames, frames.threshold, stops),
            "threshold step, redrawn by the kernel (re-mask, one PNG, relabel)": per_step(redrawn, redrawn.threshold, stops),
            "blur step, all 101 frames (re-blur, 101 PNGs; in a kernel the frame on screen is sent first, the rest follow in chunks)": per_step(frames, frames.blur, [1, 3, 5, 7, 9, 11])}


def markdown(results: dict, click_ms: list, blur_steps: list, kernel: dict, args) -> str:
    import torch

    lines = ["# Explorer latency in a browser", "",
             f"JupyterLab in headless Chromium on this machine ({platform.machine()}, {platform.processor() or 'cpu'}, "
             f"torch {torch.__version__}); the kernel on one thread. Each threshold step is one press of the right arrow, "
             f"timed from the key event to the frame that paints the new picture (`tests/lab_browser.py`); "
             f"{args.steps} steps per explorer, one at a time. ms.", "",
             "| explorer | median | quartiles | worst | key -> new picture in the page | steps that waited for the kernel (send -> reply) |",
             "|---|---|---|---|---|---|"]
    for name, steps in results.items():
        s = summary(steps)
        waited = f"{s['waited']} of {s['n']} ({s['round_trip']:.1f})" if s["waited"] else f"0 of {s['n']}"
        lines.append(f"| {name} | {s['median']:.1f} | {s['q1']:.1f} to {s['q3']:.1f} | {s['worst']:.1f} | "
                     f"{s['to_new']:.1f} | {waited} |")
    b = summary(blur_steps)
    lines += ["", f"Blur slider of the horse explorer (every frame redrawn by the kernel, the one on screen first): "
              f"median {b['median']:.1f} ms, quartiles {b['q1']:.1f} to {b['q3']:.1f} ({b['n']} of {BLUR_STEPS} steps changed "
              "the picture).", "",
              f"Edit button (mouse press to the painted after-image, the model running in the kernel): "
              f"{', '.join(f'{c / 1000:.2f}' for c in click_ms)} s; median {statistics.median(click_ms) / 1000:.2f} s.", "",
              "The kernel's own work per change, timed in one process without a browser (median ms):", ""]
    lines += [f"- {name}: {ms:.2f}" for name, ms in kernel.items()]
    worst = max(summary(s)["median"] for n, s in results.items() if "frames" in n)
    redrawn = [summary(s)["median"] for n, s in results.items() if "kernel" in n]
    lines += ["", "With frames in the browser the picture never waits for the kernel: its share of a threshold "
              "step's latency is 0 (it re-masks and relabels meanwhile). "
              + (f"Redrawn by the kernel, a step waits for a round trip: {redrawn[0]:.1f} ms median, of which the "
                 f"kernel's own work is {kernel['threshold step, redrawn by the kernel (re-mask, one PNG, relabel)']:.2f} ms; "
                 "the rest is messaging (browser, server, kernel) on this machine." if redrawn else ""),
              "", f"Target: median <= {TARGET_MS:.0f} ms per threshold step: {worst:.1f} ms for the slowest explorer with "
              f"frames ({'met' if worst <= TARGET_MS else 'missed'})."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="threshold steps per explorer (default 40)")
    parser.add_argument("--clicks", type=int, default=3, help="Edit clicks (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS / "widget_latency.md")
    args = parser.parse_args(argv)
    missing = missing_pieces()
    if missing:
        sys.exit("widget_latency.py needs " + " and ".join(missing))
    results, click_ms, blur_steps = measure_browser(args.steps, args.clicks)
    md = markdown(results, click_ms, blur_steps, kernel_work(args.steps), args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
