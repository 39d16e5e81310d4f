"""Speed: ours against diffusers' StableDiffusionDiffEditPipeline on the same model and settings,
in the same process, repeats interleaved, medians reported.

    OMP_NUM_THREADS=1 python benchmarks/speed.py                 # about 2 minutes
    OMP_NUM_THREADS=1 python benchmarks/speed.py --notebooks     # also time the notebook suite (slow)

Measures: end-to-end seconds per edit and the ratio diffusers / ours; UNet calls and samples
per stage (mask, encoding, denoising), counted by wrapping the UNet's forward (restored after);
the share of wall time inside the UNet; where the rest of our time goes (stage by stage); peak
memory (peak resident set size above the resident size before the edit, from /proc/self/status
VmHWM after resetting it through /proc/self/clear_refs); the mask explorer's update latency at
512x512; optionally the notebook suite under nbval. Writes benchmarks/results/speed.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from peer import UNetRecorder, load_peer, peer_edit
from PIL import Image

from diffedit_helpers import DiffEditConfig, diffedit, load_model
from diffedit_helpers.models import BUNDLED_PATH
from diffedit_helpers.world.evaluate import edit_once, held_out_edits
from diffedit_helpers.world.shapes import render

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
METHODS = ("ours (noise)", "ours (inversion)", "diffusers")
STAGES = ("mask", "encoding", "denoising")
TARGETS = dict(speedup=2.0, unet_share=0.85, widget_ms=30.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats of every method (default 5)")
    p.add_argument("--edits", type=int, default=3, help="held-out colour edits per repeat (default 3)")
    p.add_argument("--model", default=str(BUNDLED_PATH), help="a local diffusers SD folder (default: the bundled model)")
    p.add_argument("--notebooks", action="store_true", help="also time `pytest --nbval notebooks/` (slow)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--memory-child", choices=METHODS, help=argparse.SUPPRESS)  # internal: one measurement
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- one edit, instrumented
def run_method(method, model, pipe, edit, config, seed, recorder):
    "One edit by `method`; its UNet calls are labelled by stage in `recorder`. Returns wall seconds."
    if method != "diffusers":
        cfg = config.replace(encoding="noise" if method == "ours (noise)" else "inversion")
        return edit_once(model, edit, cfg, seed, on_stage=recorder.on_stage)[2]
    image, _ = render(edit.source)
    t0 = time.perf_counter()
    peer_edit(pipe, image, edit.source_prompt, edit.target_prompt, config, torch.Generator().manual_seed(seed),
              recorder=recorder)
    return time.perf_counter() - t0


def timings(model, pipe, edits, config, repeats):
    """Interleaved repeats (the order of the methods rotates every repeat). Returns per method:
    wall seconds per edit, UNet seconds per edit, UNet calls/samples per stage of one edit,
    and our wall time per step function, summed over all runs."""
    out = {m: dict(wall=[], unet=[], calls={}, samples={}, stage_wall={}) for m in METHODS}
    recorders = {"ours": UNetRecorder(model.unet), "diffusers": UNetRecorder(pipe.unet)}
    for r in range(repeats + 1):  # repeat 0 warms up and is dropped
        order = METHODS[r % 3:] + METHODS[: r % 3]
        for edit in edits:
            for m in order:
                rec = recorders["diffusers" if m == "diffusers" else "ours"]
                rec.reset()
                with rec:
                    wall = run_method(m, model, pipe, edit, config, 0, rec)
                if r == 0:
                    continue
                o = out[m]
                o["wall"].append(wall)
                o["unet"].append(rec.total_seconds)
                o["calls"], o["samples"] = dict(rec.calls), dict(rec.samples)
                for k, v in rec.wall.items():
                    o["stage_wall"][k] = o["stage_wall"].get(k, 0.0) + v
        print(f"  repeat {r}/{repeats} done", file=sys.stderr, flush=True)
    return out


# ----------------------------------------------------------------------------- memory
def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_rss_mib(fn) -> tuple[float, str]:
    "Peak resident memory above the resident size before fn(), in MiB, and how it was measured."
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) / 1024, "VmHWM - VmRSS from /proc/self/status"
    except OSError:
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return (after - before) / 1024, "growth of ru_maxrss"


def memory_child(method, model_path) -> int:
    "In a fresh process: load, then print the peak RSS growth of one edit by `method` (MiB) and how."
    torch.set_num_threads(1)
    model = load_model(model_path) if method != "diffusers" else None
    pipe = load_peer(model_path) if method == "diffusers" else None
    edit = held_out_edits(1, ("colour",))[0]
    rec = UNetRecorder(pipe.unet if pipe is not None else model.unet)
    mib, how = peak_rss_mib(lambda: run_method(method, model, pipe, edit, DiffEditConfig(), 0, rec))
    print(f"{mib:.1f}\t{how}")
    return 0


def peak_memory(model_path) -> dict:
    "Per method, the peak RSS growth of its first edit in a fresh process (after loading the model)."
    out = {}
    for m in METHODS:
        proc = subprocess.run([sys.executable, __file__, "--memory-child", m, "--model", str(model_path)],
                              capture_output=True, text=True, cwd=ROOT)
        line = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else "nan\tfailed"
        mib, how = line.split("\t")
        out[m], out["how"] = float(mib), f"{how}: the first edit in a fresh process, after loading the model"
    return out


# ----------------------------------------------------------------------------- the widget
def widget_latency(model, edit, config, n=25):
    """Median and worst ms of one control change at 512x512: threshold moves, blur moves (a new
    kernel: blur + threshold; a kernel seen before: cached). Falls back to timing make_mask alone."""
    image, _ = render(edit.source)
    r = diffedit(model, image, edit.source_prompt, edit.target_prompt, config, torch.Generator().manual_seed(0),
                 progress=False)
    big_image = image.resize((512, 512), Image.NEAREST)
    big_map = np.asarray(Image.fromarray(r.difference_map, mode="F").resize((512, 512), Image.BILINEAR), np.float32)
    thresholds = np.linspace(0.2, 0.7, n)
    kernels = [k for k in range(1, 2 * n + 2, 2) if k != config.blur][:n]
    try:
        from diffedit_helpers.widgets import mask_explorer
    except ImportError:
        from diffedit_helpers.mask import make_mask

        times = {"threshold": [], "blur (new kernel)": []}
        for t in thresholds:
            t0 = time.perf_counter()
            make_mask(big_map, float(t), config.blur, config.fill_holes)
            times["threshold"].append(time.perf_counter() - t0)
        for k in kernels:
            t0 = time.perf_counter()
            make_mask(big_map, config.threshold, k, config.fill_holes)
            times["blur (new kernel)"].append(time.perf_counter() - t0)
        return times, "make_mask alone (diffedit_helpers.widgets not found)"
    w = mask_explorer(big_image, big_map, threshold=config.threshold, blur=config.blur, fill_holes=config.fill_holes)
    kernels = [k for k in w.blur.options if k not in (0, config.blur)][:n]  # the slider's own stops
    times = {"threshold": [], "blur (new kernel)": [], "blur (cached kernel)": []}
    for t in thresholds:
        t0 = time.perf_counter()
        w.threshold.value = round(float(t), 2)  # a stop of the slider; the observer re-thresholds and redraws synchronously
        times["threshold"].append(time.perf_counter() - t0)
    for key in ("blur (new kernel)", "blur (cached kernel)"):
        for k in kernels:
            t0 = time.perf_counter()
            w.blur.value = k
            times[key].append(time.perf_counter() - t0)
            w.blur.value = config.blur
    return times, "mask_explorer: setting a control's value (re-mask + PNG redraw, synchronous)"


def notebook_suite():
    "Wall seconds of the notebook suite under nbval, and pytest's exit status."
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", "notebooks/"]
    if (ROOT / "notebooks" / "sanitize.cfg").exists():
        cmd += ["--nbval-sanitize-with", "notebooks/sanitize.cfg"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return time.perf_counter() - t0, proc.returncode, tail


# ----------------------------------------------------------------------------- report
def med(xs):
    return statistics.median(xs) if xs else float("nan")


def markdown(res, memory, widget, notebooks, config, args) -> str:
    ours, peer = med(res["ours (noise)"]["wall"]), med(res["diffusers"]["wall"])
    inv = med(res["ours (inversion)"]["wall"])
    lines = [
        "# Speed",
        "",
        f"Bundled model, CPU float32, one thread ({platform.machine()}, torch {torch.__version__}, diffusers "
        f"{__import__('diffusers').__version__}); {config.steps} DDIM steps from step {config.start_index}, "
        f"{config.n_noise} noise draws, guidance {config.guidance}. {args.edits} held-out colour edits x "
        f"{args.repeats} repeats, the three methods interleaved in the same process; medians.",
        "",
        "| method | s / edit | diffusers / this | UNet calls (samples): mask | encoding | denoising | time in UNet |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in METHODS:
        o = res[m]
        share = med([u / w for u, w in zip(o["unet"], o["wall"])])
        cells = [f"{o['calls'].get(s, 0)} ({o['samples'].get(s, 0)})" for s in STAGES]
        lines.append(f"| {m} | {med(o['wall']):.2f} | {peer / med(o['wall']):.2f}x | " + " | ".join(cells) + f" | {share:.0%} |")
    sw = res["ours (noise)"]["stage_wall"]
    total = sum(res["ours (noise)"]["wall"])
    unet_total = sum(res["ours (noise)"]["unet"])
    parts = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(sw.items(), key=lambda kv: -kv[1]))
    lines += [
        "",
        f"Ours (noise) wall time by step (UNet included): {parts}; outside every step "
        f"{max(0.0, 1 - sum(sw.values()) / total):.0%}. Inside the UNet: {unet_total / total:.0%}.",
        "",
        f"Peak memory ({memory['how']}): " + ", ".join(f"{m} {memory[m]:.0f} MiB" for m in METHODS) + ".",
        "",
    ]
    times, how = widget
    lines += [f"Mask explorer at 512x512 ({how}): " + "; ".join(
        f"{k} median {1000 * med(v):.1f} ms, worst {1000 * max(v):.1f} ms" for k, v in times.items()) + "."]
    if notebooks is not None:
        secs, rc, tail = notebooks
        lines += ["", f"Notebook suite (`pytest --nbval notebooks/`): {secs:.0f} s, exit status {rc} ({tail})."]
    widget_worst = max(med(v) for v in times.values())
    share = med([u / w for u, w in zip(res["ours (noise)"]["unet"], res["ours (noise)"]["wall"])])
    lines += [
        "",
        "Targets:",
        f"- end to end >= {TARGETS['speedup']}x faster than diffusers: noise encoding {peer / ours:.2f}x "
        f"({'met' if peer / ours >= TARGETS['speedup'] else 'missed'}), inversion {peer / inv:.2f}x "
        f"({'met' if peer / inv >= TARGETS['speedup'] else 'missed'})",
        f"- >= {TARGETS['unet_share']:.0%} of wall time inside the UNet (noise encoding): {share:.0%} "
        f"({'met' if share >= TARGETS['unet_share'] else 'missed'})",
        f"- slider update <= {TARGETS['widget_ms']:.0f} ms at 512x512 (median of the slowest control): "
        f"{1000 * widget_worst:.1f} ms ({'met' if 1000 * widget_worst <= TARGETS['widget_ms'] else 'missed'})",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        return memory_child(args.memory_child, args.model)
    if args.repeats < 1 or args.edits < 1:
        print("error: --repeats and --edits must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    config = DiffEditConfig().validate()
    model = load_model(args.model)
    pipe = load_peer(args.model)
    edits = held_out_edits(args.edits, ("colour",))
    res = timings(model, pipe, edits, config, args.repeats)
    memory = peak_memory(args.model)
    widget = widget_latency(model, edits[0], config)
    notebooks = notebook_suite() if args.notebooks else None
    md = markdown(res, memory, widget, notebooks, config, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
