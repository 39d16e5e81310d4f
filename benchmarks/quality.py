"""Quality on held-out shapes-world edits: ours (noise encoding, DDIM inversion) against
diffusers' StableDiffusionDiffEditPipeline, on the bundled model, same settings.

    OMP_NUM_THREADS=1 python benchmarks/quality.py               # 100 scenes, about 10 minutes on one thread
    OMP_NUM_THREADS=1 python benchmarks/quality.py --scenes 8    # a quick look

Every scene is held out (seeds from HELD_OUT_SEED on) and its true region is known. By default
each scene gets one edit kind in turn (colour, shape, pattern, removal: a quarter each);
--all-kinds edits every scene in every kind (four times the time). Per method: mask IoU
against the true region, background PSNR outside it, edit success (diffedit_helpers.world.metrics'
checks) and seconds per edit. Writes benchmarks/results/quality.{md,csv}, quality_iou.png
(IoU against the mask threshold: ours re-masks its cached maps, the peer's map is rebuilt from
the UNet output of its generate_mask call) and quality_examples.png.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from peer import PEER_RATIO, UNetRecorder, load_peer, peer_edit, peer_map_from_mask_call, peer_mask_at, pixel_mask

from diffedit_helpers import DiffEditConfig, load_model
from diffedit_helpers.mask import make_mask
from diffedit_helpers.models import BUNDLED_PATH
from diffedit_helpers.plotting import image_grid, overlay
from diffedit_helpers.world.evaluate import EVAL_KINDS, edit_row, held_out_edits, measure
from diffedit_helpers.world.metrics import mask_iou
from diffedit_helpers.world.shapes import EDIT_KINDS, render

RESULTS = Path(__file__).parent / "results"
METHODS = ("ours (noise)", "ours (inversion)", "diffusers")
THRESHOLDS = np.round(np.linspace(0.05, 0.95, 19), 2)  # ours: the normalised map's threshold
RATIOS = np.round(np.linspace(0.5, 6.0, 23), 2)  # the peer: mask_thresholding_ratio (mask = map > ratio/2 x mean)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=100, help="held-out scenes (default 100)")
    p.add_argument("--all-kinds", action="store_true", help="every edit kind on every scene (4x the edits)")
    p.add_argument("--seed", type=int, default=0, help="seed of every edit's torch.Generator (default 0)")
    p.add_argument("--model", default=str(BUNDLED_PATH), help="a local diffusers SD folder (default: the bundled model)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.add_argument("--examples", type=int, default=2, help="example rows per edit kind in the picture (default 2)")
    return p.parse_args(argv)


def run(model, pipe, edits, config, seed, log=print):
    """All methods on all edits. Returns (rows, our maps, peer maps, example pictures by edit)."""
    rows, our_maps, peer_maps, pictures, mismatches = [], [], [], {}, 0
    t_start = time.perf_counter()
    for i, edit in enumerate(edits):
        image, _ = render(edit.source)
        truth = edit.true_mask()
        outs = {}
        for method, encoding in (("ours (noise)", "noise"), ("ours (inversion)", "inversion")):
            row, r = edit_row(model, edit, config.replace(encoding=encoding), seed, method=method, edit=i)
            rows.append(row)
            outs[method] = (r.image, r.mask)
        our_maps.append(r.difference_map)  # both encodings share the mask: the same generator draws it first
        with UNetRecorder(pipe.unet, keep="mask") as rec:
            t0 = time.perf_counter()
            p = peer_edit(pipe, image, edit.source_prompt, edit.target_prompt, config, torch.Generator().manual_seed(seed),
                          recorder=rec)
            seconds = time.perf_counter() - t0
        rows.append(measure(edit, image, p.image, p.mask, seconds, method="diffusers", edit=i))
        outs["diffusers"] = (p.image, p.mask)
        peer_map = peer_map_from_mask_call(rec.kept[0], config.n_noise, config.guidance)
        mismatches += int(not np.array_equal(peer_mask_at(peer_map, PEER_RATIO), p.latent_mask))
        peer_maps.append(peer_map)
        pictures[i] = (image, truth, outs)
        done = time.perf_counter() - t_start
        log(f"  {i + 1}/{len(edits)} {edit.kind:8s} {done:5.0f} s, about {done / (i + 1) * (len(edits) - i - 1):4.0f} s left",
            file=sys.stderr, flush=True)
    if mismatches:
        log(f"warning: the rebuilt peer map disagreed with its own mask on {mismatches} edits", file=sys.stderr)
    return rows, our_maps, peer_maps, pictures


# ----------------------------------------------------------------------------- summaries
def mean(rows, key):
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")


def summary_table(rows) -> str:
    lines = ["| method | mask IoU | background PSNR (dB) | edit success | s / edit |", "|---|---|---|---|---|"]
    for m in METHODS:
        sel = [r for r in rows if r["method"] == m]
        lines.append(f"| {m} | {mean(sel, 'iou'):.3f} | {mean(sel, 'psnr'):.2f} | {mean(sel, 'success'):.0%} | "
                     f"{float(np.median([r['seconds'] for r in sel])):.2f} |")
    return "\n".join(lines)


def kind_table(rows) -> str:
    kinds = [k for k in EDIT_KINDS if any(r["kind"] == k for r in rows)]
    head = "| edit kind | n | " + " | ".join(f"IoU {m}" for m in ("ours", "diffusers")) + " | " + \
        " | ".join(f"success {m}" for m in METHODS) + " |"
    lines = [head, "|" + "---|" * (2 + 2 + len(METHODS))]
    for k in kinds:
        cells = []
        sel = {m: [r for r in rows if r["method"] == m and r["kind"] == k] for m in METHODS}
        cells += [f"{mean(sel['ours (noise)'], 'iou'):.3f}", f"{mean(sel['diffusers'], 'iou'):.3f}"]
        cells += [f"{mean(sel[m], 'success'):.0%}" for m in METHODS]
        lines.append(f"| {k} | {len(sel['diffusers'])} | " + " | ".join(cells) + " |")
    three = {m: [r for r in rows if r["method"] == m and r["kind"] in EVAL_KINDS] for m in METHODS}
    if three["diffusers"]:
        cells = [f"{mean(three['ours (noise)'], 'iou'):.3f}", f"{mean(three['diffusers'], 'iou'):.3f}"]
        cells += [f"{mean(three[m], 'success'):.0%}" for m in METHODS]
        lines.append(f"| colour + shape + pattern | {len(three['diffusers'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def iou_curves(our_maps, peer_maps, truths, config):
    ours = [np.mean([mask_iou(make_mask(m, t, config.blur, config.fill_holes), tr) for m, tr in zip(our_maps, truths)])
            for t in THRESHOLDS]
    peer = [np.mean([mask_iou(pixel_mask(peer_mask_at(m, r), tr.shape), tr) for m, tr in zip(peer_maps, truths)])
            for r in RATIOS]
    return np.array(ours), np.array(peer)


def plot_curves(ours, peer, config, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3), sharey=True, dpi=100)
    a.plot(THRESHOLDS, ours, marker="o", ms=3)
    a.axvline(config.threshold, color="gray", ls="--", lw=1)
    refine = ", refined" if getattr(config, "refine", False) else ""
    a.set(title=f"ours (blur {config.blur}, fill holes {config.fill_holes}{refine})", xlabel="threshold on the [0, 1] map",
          ylabel="mean mask IoU")
    b.plot(RATIOS, peer, marker="o", ms=3, color="C1")
    b.axvline(PEER_RATIO, color="gray", ls="--", lw=1)
    b.set(title="diffusers", xlabel="mask_thresholding_ratio r (map > r/2 x mean)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def example_grid(pictures, edits, per_kind, path):
    "Rows of: input | true region | our mask | ours (noise) | ours (inversion) | peer's mask | peer."
    chosen, used = [], set()  # every row from a different scene
    for k in EDIT_KINDS:
        for i in [j for j in sorted(pictures) if edits[j].kind == k and edits[j].source not in used][:per_kind]:
            chosen.append(i)
            used.add(edits[i].source)
    images, titles = [], []
    for i in chosen:
        image, truth, outs = pictures[i]
        images += [image, overlay(image, truth), overlay(image, outs["ours (noise)"][1]), outs["ours (noise)"][0],
                   outs["ours (inversion)"][0], overlay(image, outs["diffusers"][1]), outs["diffusers"][0]]
        titles += [edits[i].kind, "true region", "our mask", "ours, noise", "ours, inversion", "peer mask", "diffusers"]
    image_grid(images, titles, ncols=7, scale=2).save(path, optimize=True)


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def config_text(config) -> str:
    "The config's mask and edit settings in one line (every field, whatever the version)."
    return ", ".join(f"{k}={v}" for k, v in config.to_dict().items() if k != "mask_batch_size")


def markdown(rows, edits, config, curves, seconds, args) -> str:
    ours, peer = curves
    best_t, best_r = THRESHOLDS[int(np.argmax(ours))], RATIOS[int(np.argmax(peer))]
    n_scenes = len({e.source for e in edits})
    return "\n".join([
        "# Quality on held-out edits",
        "",
        f"{len(edits)} edits of {n_scenes} held-out shapes-world scenes "
        f"({'every kind on every scene' if args.all_kinds else 'one edit kind per scene, in turn'}), bundled model, "
        f"CPU float32, one thread; {config.steps} DDIM steps, edit from step {config.start_index}, "
        f"{config.n_noise} noise draws at mask strength {config.mask_strength}, guidance {config.guidance} "
        f"(the peer's inversion too); the peer's mask_thresholding_ratio {PEER_RATIO}. Seed {args.seed} for every "
        f"edit. Ours: `{config_text(config)}`. "
        f"torch {torch.__version__}, diffusers {__import__('diffusers').__version__}, {platform.machine()}; "
        f"{seconds / 60:.1f} min in all.",
        "",
        summary_table(rows),
        "",
        kind_table(rows),
        "",
        "Mask IoU: the method's mask against the true region (the object before and after). Our two encodings "
        "share one mask (it is drawn first, from the same generator). Background PSNR: outside the true region; "
        "ours pastes the edit into the input pixels through its feathered mask, the peer decodes the whole image. "
        "Edit success: `diffedit_helpers.world.metrics.edit_success`. Seconds: median wall time per edit.",
        "",
        f"Best fixed threshold on these edits: ours {best_t:.2f} (IoU {ours.max():.3f}), "
        f"the peer's ratio {best_r:.2f} (IoU {peer.max():.3f}).",
        "",
        "![mask IoU against threshold](quality_iou.png)",
        "",
        "![example edits](quality_examples.png)",
        "",
    ])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.scenes < 1:
        print("error: --scenes must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    config = DiffEditConfig().validate()
    edits = held_out_edits(args.scenes, EDIT_KINDS, cycle=not args.all_kinds)
    model = load_model(args.model)
    pipe = load_peer(args.model)
    print(f"{len(edits)} edits, 3 methods", file=sys.stderr)
    t0 = time.perf_counter()
    rows, our_maps, peer_maps, pictures = run(model, pipe, edits, config, args.seed)
    seconds = time.perf_counter() - t0
    truths = [e.true_mask() for e in edits]
    curves = iou_curves(our_maps, peer_maps, truths, config)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "quality.csv")
    plot_curves(*curves, config, args.out / "quality_iou.png")
    example_grid(pictures, edits, args.examples, args.out / "quality_examples.png")
    md = markdown(rows, edits, config, curves, seconds, args)
    (args.out / "quality.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
