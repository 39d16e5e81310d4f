"""Quality on held-out shapes-world edits: ours (noise encoding, DDIM inversion) against
diffusers' StableDiffusionDiffEditPipeline and LEditsPPPipelineStableDiffusion (LEDITS++), on
the bundled model, same steps and guidance.

    OMP_NUM_THREADS=1 python benchmarks/quality.py --all-kinds   # 25 scenes x 4 kinds, about 25 minutes on one thread
    OMP_NUM_THREADS=1 python benchmarks/quality.py --scenes 4 --kinds colour --tune-scenes 2   # a quick look

Every scene is held out (seeds from HELD_OUT_SEED on) and its true region is known. By default
each scene gets one edit kind in turn; --all-kinds edits every scene in every kind of --kinds.
Per method: mask IoU against the true region (ours with and without refinement, and the
latent-grid ceiling), the changed-region IoU (pixels the method changed, before any composite,
against the true region), background PSNR outside the true region with and without the pixel
composite (the peer also pasted into the input through its own mask), edit success by the
strict judges (diffedit_helpers.world.metrics) with 95% Wilson intervals, and seconds per edit.
LEDITS++'s own settings are first tuned on a separate seed range (--tune-scenes colour edits
from HELD_OUT_SEED + 500,000). Writes benchmarks/results/quality.{md,csv}, quality_iou.png (IoU
against the mask threshold: ours re-masks its cached maps, the peer's map is rebuilt from the
UNet output of its generate_mask call) and quality_examples.png.
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
from peer import (
    PEER_RATIO,
    LeditsSettings,
    UNetRecorder,
    leditspp_edit,
    leditspp_invert,
    load_leditspp,
    load_peer,
    peer_edit,
    peer_map_from_mask_call,
    peer_mask_at,
    pixel_mask,
)

from diffedit_helpers import DiffEditConfig, load_model
from diffedit_helpers.edit import composite
from diffedit_helpers.mask import make_mask
from diffedit_helpers.models import BUNDLED_PATH
from diffedit_helpers.plotting import image_grid, overlay
from diffedit_helpers.world.evaluate import EVAL_KINDS, TUNE_SEED, edit_once, held_out_edits, measure
from diffedit_helpers.world.metrics import background_psnr, edit_success, mask_iou
from diffedit_helpers.world.shapes import EDIT_KINDS, HELD_OUT_SEED, render

RESULTS = Path(__file__).parent / "results"
METHODS = ("ours (noise)", "ours (inversion)", "diffusers", "LEDITS++")
OURS = METHODS[:2]
CHANGE_THRESHOLD = 32  # a pixel counts as changed when its mean |output - input| over RGB exceeds this (0-255)
TUNE_GRID = dict(edit_guidance_scale=(5.0, 10.0), edit_threshold=(0.75, 0.9), skip=(0.15, 0.3))
THRESHOLDS = np.round(np.linspace(0.05, 0.95, 19), 2)  # ours: the normalised map's threshold
RATIOS = np.round(np.linspace(0.5, 6.0, 23), 2)  # the peer: mask_thresholding_ratio (mask = map > ratio/2 x mean)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=25, help="held-out scenes (default 25)")
    p.add_argument("--kinds", default=",".join(EDIT_KINDS), help=f"comma-separated edit kinds from {EDIT_KINDS}")
    p.add_argument("--all-kinds", action="store_true", help="every kind of --kinds on every scene (one kind per scene otherwise)")
    p.add_argument("--tune-scenes", type=int, default=20, help="colour edits LEDITS++ is tuned on (default 20; 0: its defaults)")
    p.add_argument("--no-leditspp", action="store_true", help="leave LEDITS++ out")
    p.add_argument("--seed", type=int, default=0, help="seed of every edit's torch.Generator (default 0)")
    p.add_argument("--model", default=str(BUNDLED_PATH), help="a local diffusers SD folder (default: the bundled model)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.add_argument("--examples", type=int, default=2, help="example rows per edit kind in the picture (default 2)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- measures every method shares
def changed_region(output, image, threshold: float = CHANGE_THRESHOLD) -> np.ndarray:
    "Where `output` differs from `image` (PIL or (H, W, 3)): mean |difference| over RGB above `threshold`, (H, W) bool."
    diff = np.abs(np.asarray(output, np.float32)[..., :3] - np.asarray(image, np.float32)[..., :3]).mean(-1)
    return diff > threshold


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    "The Wilson score interval of a success rate (95% for z = 1.96): (low, high) in [0, 1]; (0, 1) for n = 0."
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def latent_grid_mask(truth: np.ndarray, factor: int) -> np.ndarray:
    """The true mask at the latent grid and back: a latent cell is on when at least half of its
    factor x factor pixels are, and covers them all. (H, W) bool -> (H, W) bool."""
    H, W = truth.shape
    cells = truth.reshape(H // factor, factor, W // factor, factor).mean(axis=(1, 3)) >= 0.5
    return pixel_mask(cells.astype(np.float32), (H, W))


def row_for(edit, image, output, raw_output, mask, seconds, method, index, **extra) -> dict:
    """One row: `measure`'s (mask IoU, background PSNR and success of `output`, the method's own
    result), the changed-region IoU and background PSNR of `raw_output` (before any composite),
    and `extra` (NaN where a measure does not apply)."""
    truth = edit.true_mask()
    row = measure(edit, image, output, mask if mask is not None else np.zeros_like(truth), seconds, method=method, edit=index)
    if mask is None:
        row["iou"] = float("nan")
    row.update(changed_iou=mask_iou(changed_region(raw_output, image), truth), psnr_raw=background_psnr(raw_output, image, truth))
    row.update({k: float("nan") for k in ("iou_unrefined", "iou_ceiling", "psnr_pasted", "success_raw", "success_pasted")})
    row.update(extra)
    return row


# ----------------------------------------------------------------------------- the methods
def run_ours(model, edit, config, seed, index, ceiling_factor):
    """Both encodings, each run once without the composite (the composite is the last step, so
    pasting afterwards gives exactly the default result): (rows, raw map, outputs by method)."""
    rows, outs = [], {}
    for method, encoding in zip(OURS, ("noise", "inversion")):
        image, r, seconds = edit_once(model, edit, config.replace(encoding=encoding, composite=False), seed)
        final = composite(image, r.image, r.mask, config.feather)
        unrefined = make_mask(r.raw_map, config.threshold, config.blur, config.fill_holes)
        truth = edit.true_mask()
        rows.append(row_for(edit, image, final, r.image, r.mask, seconds, method, index,
                            iou_unrefined=mask_iou(unrefined, truth), success_raw=edit_success(r.image, edit),
                            iou_ceiling=mask_iou(latent_grid_mask(truth, ceiling_factor), truth)))
        outs[method] = (final, r.mask)
    return rows, r.difference_map, r.raw_map, outs


def run_peer(pipe, edit, image, config, seed, index):
    "diffusers' DiffEdit: (row, its rebuilt map, (output, mask), whether the rebuilt map reproduces its mask)."
    with UNetRecorder(pipe.unet, keep="mask") as rec:
        t0 = time.perf_counter()
        p = peer_edit(pipe, image, edit.source_prompt, edit.target_prompt, config, torch.Generator().manual_seed(seed),
                      recorder=rec)
        seconds = time.perf_counter() - t0
    paste = composite(image, p.image, p.mask, config.feather)  # through its own mask, feathered as ours
    truth = edit.true_mask()
    row = row_for(edit, image, p.image, p.image, p.mask, seconds, "diffusers", index,
                  psnr_pasted=background_psnr(paste, image, truth), success_pasted=edit_success(paste, edit))
    peer_map = peer_map_from_mask_call(rec.kept[0], config.n_noise, config.guidance)
    return row, peer_map, (p.image, p.mask), bool(np.array_equal(peer_mask_at(peer_map, PEER_RATIO), p.latent_mask))


def run_leditspp(pipe, edit, image, config, settings, seed, index):
    "LEDITS++: invert, then edit; its mask is implicit, so only the changed region is measured. (row, output)."
    t0 = time.perf_counter()
    leditspp_invert(pipe, image, edit.source_prompt, config, settings, torch.Generator().manual_seed(seed))
    out = leditspp_edit(pipe, edit.source_prompt, edit.target_prompt, settings, torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - t0
    return row_for(edit, image, out, out, None, seconds, "LEDITS++", index), out


def tune_leditspp(pipe, config, n_scenes, seed, log=print):
    """LEDITS++'s settings chosen on `n_scenes` colour edits from TUNE_SEED on (never the held-out
    ones): for each skip one inversion per edit, then every (edit_guidance_scale, edit_threshold).
    The best success rate wins, ties broken by the changed-region IoU. Returns (settings, grid rows)."""
    edits = held_out_edits(n_scenes, ("colour",), first_seed=TUNE_SEED)
    grid = []
    for skip in TUNE_GRID["skip"]:
        scores = {}
        for edit in edits:
            image, _ = render(edit.source)
            leditspp_invert(pipe, image, edit.source_prompt, config, LeditsSettings(skip=skip), torch.Generator().manual_seed(seed))
            for scale in TUNE_GRID["edit_guidance_scale"]:
                for threshold in TUNE_GRID["edit_threshold"]:
                    s = LeditsSettings(scale, threshold, skip)
                    out = leditspp_edit(pipe, edit.source_prompt, edit.target_prompt, s, torch.Generator().manual_seed(seed))
                    scores.setdefault(s, []).append((edit_success(out, edit), mask_iou(changed_region(out, image), edit.true_mask())))
        for s, v in scores.items():
            grid.append(dict(settings=s, success=float(np.mean([a for a, _ in v])), changed_iou=float(np.mean([b for _, b in v]))))
            log(f"  LEDITS++ {s.text()}: success {grid[-1]['success']:.0%}, changed-region IoU {grid[-1]['changed_iou']:.3f}",
                file=sys.stderr, flush=True)
    best = max(grid, key=lambda g: (g["success"], g["changed_iou"]))
    return best["settings"], grid


def run(model, pipe, edits, config, seed, ledits=None, settings=None, log=print):
    """All methods on all edits. Returns (rows, our refined maps, our raw maps, peer maps, example pictures by edit)."""
    rows, our_maps, raw_maps, peer_maps, pictures, mismatches = [], [], [], [], {}, 0
    t_start = time.perf_counter()
    for i, edit in enumerate(edits):
        image, _ = render(edit.source)
        ours, diff_map, raw_map, outs = run_ours(model, edit, config, seed, i, model.vae_scale_factor)
        rows += ours
        our_maps.append(diff_map)  # both encodings share the mask: the same generator draws it first
        raw_maps.append(raw_map)
        row, peer_map, outs["diffusers"], same = run_peer(pipe, edit, image, config, seed, i)
        rows.append(row)
        peer_maps.append(peer_map)
        mismatches += int(not same)
        if ledits is not None:
            row, out = run_leditspp(ledits, edit, image, config, settings, seed, i)
            rows.append(row)
            outs["LEDITS++"] = (out, changed_region(out, image))
        pictures[i] = (image, edit.true_mask(), outs)
        done = time.perf_counter() - t_start
        log(f"  {i + 1}/{len(edits)} {edit.kind:8s} {done:5.0f} s, about {done / (i + 1) * (len(edits) - i - 1):4.0f} s left",
            file=sys.stderr, flush=True)
    if mismatches:
        log(f"warning: the rebuilt peer map disagreed with its own mask on {mismatches} edits", file=sys.stderr)
    return rows, our_maps, raw_maps, peer_maps, pictures


# ----------------------------------------------------------------------------- summaries
def mean(rows, key):
    vals = [r[key] for r in rows if not np.isnan(float(r[key]))]
    return float(np.mean(vals)) if vals else float("nan")


def num(v, fmt=".3f"):
    return "-" if np.isnan(v) else format(v, fmt)


def success_text(rows, key="success") -> str:
    "Success rate with its 95% Wilson interval, e.g. '52% (38-66)'; '-' when the measure does not apply."
    vals = [r[key] for r in rows if not (isinstance(r[key], float) and np.isnan(r[key]))]
    if not vals:
        return "-"
    lo, hi = wilson_interval(int(sum(vals)), len(vals))
    return f"{np.mean(vals):.0%} ({lo:.0%}-{hi:.0%})"


def summary_table(rows, methods) -> str:
    lines = ["| method | n | mask IoU | mask IoU, no refinement | changed-region IoU | bg PSNR as returned (dB) | "
             "bg PSNR before composite | bg PSNR pasted through its mask | success (95% CI) | "
             "success before composite | success pasted | s / edit |",
             "|---|" + "---|" * 11]
    for m in methods:
        sel = [r for r in rows if r["method"] == m]
        lines.append(f"| {m} | {len(sel)} | {num(mean(sel, 'iou'))} | {num(mean(sel, 'iou_unrefined'))} | "
                     f"{num(mean(sel, 'changed_iou'))} | {num(mean(sel, 'psnr'), '.2f')} | {num(mean(sel, 'psnr_raw'), '.2f')} | "
                     f"{num(mean(sel, 'psnr_pasted'), '.2f')} | {success_text(sel)} | {success_text(sel, 'success_raw')} | "
                     f"{success_text(sel, 'success_pasted')} | {float(np.median([r['seconds'] for r in sel])):.2f} |")
    return "\n".join(lines)


def kind_groups(rows):
    "(name, kinds) for each kind present, then colour + shape + pattern when all three are."
    kinds = [k for k in EDIT_KINDS if any(r["kind"] == k for r in rows)]
    groups = [(k, (k,)) for k in kinds]
    if all(k in kinds for k in EVAL_KINDS):
        groups.append((" + ".join(EVAL_KINDS), EVAL_KINDS))
    return groups


def iou_kind_table(rows, methods) -> str:
    "Per kind: our mask IoU refined / unrefined, the latent-grid ceiling, the peer's mask IoU, every method's changed-region IoU."
    head = ["edit kind", "n", "IoU ours", "IoU ours, no refinement", "latent-grid ceiling", "IoU diffusers"]
    head += [f"changed-region IoU {m}" for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, kinds in kind_groups(rows):
        sel = {m: [r for r in rows if r["method"] == m and r["kind"] in kinds] for m in methods}
        cells = [name, str(len(sel["diffusers"])), num(mean(sel["ours (noise)"], "iou")),
                 num(mean(sel["ours (noise)"], "iou_unrefined")), num(mean(sel["ours (noise)"], "iou_ceiling")),
                 num(mean(sel["diffusers"], "iou"))] + [num(mean(sel[m], "changed_iou")) for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def success_kind_table(rows, methods) -> str:
    head = ["edit kind", "n"] + [f"success {m}" for m in methods] + ["diffusers pasted"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, kinds in kind_groups(rows):
        sel = {m: [r for r in rows if r["method"] == m and r["kind"] in kinds] for m in methods}
        cells = [name, str(len(sel["diffusers"]))] + [success_text(sel[m]) for m in methods]
        cells.append(success_text(sel["diffusers"], "success_pasted"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tuning_text(settings, grid, n) -> str:
    if not grid:
        return f"LEDITS++ ran with its settings `{settings.text()}` (not tuned)."
    cells = "; ".join(f"{g['settings'].text()}: {g['success']:.0%} / {g['changed_iou']:.2f}" for g in grid)
    return (f"LEDITS++'s settings were tuned on {n} colour edits of other scenes (seeds from {TUNE_SEED:,}, never the held-out "
            f"ones), over the grid edit_guidance_scale x edit_threshold x skip (success / changed-region IoU): {cells}. "
            f"Chosen (best success, then IoU): `{settings.text()}`.")


def iou_curves(our_maps, raw_maps, peer_maps, truths, config):
    "Mean IoU against the threshold: ours refined, ours unrefined (over THRESHOLDS), the peer (over RATIOS)."
    def ours_at(maps):
        return np.array([np.mean([mask_iou(make_mask(m, t, config.blur, config.fill_holes), tr) for m, tr in zip(maps, truths)])
                         for t in THRESHOLDS])

    peer = [np.mean([mask_iou(pixel_mask(peer_mask_at(m, r), tr.shape), tr) for m, tr in zip(peer_maps, truths)])
            for r in RATIOS]
    return ours_at(our_maps), ours_at(raw_maps), np.array(peer)


def plot_curves(ours, unrefined, peer, config, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3), sharey=True, dpi=100)
    a.plot(THRESHOLDS, ours, marker="o", ms=3, label="refined (default)")
    a.plot(THRESHOLDS, unrefined, marker="o", ms=3, label="no refinement")
    a.axvline(config.threshold, color="gray", ls="--", lw=1)
    a.legend(fontsize=8)
    a.set(title=f"ours (blur {config.blur}, fill holes {config.fill_holes})", xlabel="threshold on the [0, 1] map",
          ylabel="mean mask IoU")
    b.plot(RATIOS, peer, marker="o", ms=3, color="C2")
    b.axvline(PEER_RATIO, color="gray", ls="--", lw=1)
    b.set(title="diffusers", xlabel="mask_thresholding_ratio r (map > r/2 x mean)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def example_grid(pictures, edits, per_kind, path):
    "Rows of: input | true region | our mask | ours (noise) | ours (inversion) | peer's mask | peer | LEDITS++ (if run)."
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
        if "LEDITS++" in outs:
            images.append(outs["LEDITS++"][0])
            titles.append("LEDITS++")
    image_grid(images, titles, ncols=len(images) // max(len(chosen), 1), scale=2).save(path, optimize=True)


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def config_text(config) -> str:
    "The config's mask and edit settings in one line (every field, whatever the version)."
    return ", ".join(f"{k}={v}" for k, v in config.to_dict().items() if k != "mask_batch_size")


def markdown(rows, edits, config, curves, seconds, args, methods, settings, grid) -> str:
    ours, unrefined, peer = curves
    best_t, best_u, best_r = THRESHOLDS[int(np.argmax(ours))], THRESHOLDS[int(np.argmax(unrefined))], RATIOS[int(np.argmax(peer))]
    n_scenes = len({e.source for e in edits})
    kinds = sorted({e.kind for e in edits}, key=EDIT_KINDS.index)
    ledits = "LEDITS++" in methods
    return "\n".join([
        "# Quality on held-out edits",
        "",
        f"{len(edits)} edits of {n_scenes} held-out shapes-world scenes ({', '.join(kinds)}; "
        f"{'every kind on every scene' if args.all_kinds else 'one edit kind per scene, in turn'}), bundled model, "
        f"CPU float32, one thread; {config.steps} DDIM steps, edit from step {config.start_index}, "
        f"{config.n_noise} noise draws at mask strength {config.mask_strength}, guidance {config.guidance} "
        f"(the peer's inversion too); the peer's mask_thresholding_ratio {PEER_RATIO}. Seed {args.seed} for every "
        f"edit. Ours: `{config_text(config)}`. "
        + (f"LEDITS++: `{settings.text()}`, {config.steps} inversion steps, source guidance {config.guidance}, "
           "multistep DPM-Solver++ (sde-dpmsolver++), editing prompts [target, source] with the source reversed. " if ledits else "")
        + f"torch {torch.__version__}, diffusers {__import__('diffusers').__version__}, {platform.machine()}; "
        f"{seconds / 60:.1f} min in all.",
        "",
        summary_table(rows, methods),
        "",
        iou_kind_table(rows, methods),
        "",
        success_kind_table(rows, methods),
        "",
        "Mask IoU: the method's mask against the true region (the object before and after); LEDITS++ has no explicit "
        "mask. Our two encodings share one mask (it is drawn first, from the same generator). No refinement: our raw "
        "difference map, upsampled from the latent grid, thresholded the same way. Latent-grid ceiling: the true mask "
        f"itself carried to the latent grid (a cell is on when half its {args.factor}x{args.factor} pixels are) and back: "
        "the best a mask drawn on that grid can do. Refinement snaps the map onto the image's own edges (a guided "
        "filter), which is why ours can pass that ceiling on flat objects, whose edges are in the input; it cannot "
        "help shape edits, where half of the region to change (the new shape) has no edge in the input to snap to.",
        "",
        f"Changed-region IoU: the pixels a method changed (mean |output - input| over RGB above {CHANGE_THRESHOLD}, "
        "taken before any composite) against the true region: one measure for every method, with or without an "
        "explicit mask. Background PSNR: outside the true region. As returned: ours pastes the edit into the input "
        "pixels through its feathered mask, the peers decode the whole image. Before composite: ours as decoded. "
        "Pasted: the peer's output pasted into the input through its own mask, feathered as ours.",
        "",
        "Success: `diffedit_helpers.world.metrics.edit_success`, strict judges calibrated both ways (a true edit through "
        "the VAE passes at least 95% of the time, the unchanged input and a catalogue of wrong edits at most 5%; "
        "tests/test_judges.py), with 95% Wilson score intervals. Seconds: median wall time per edit.",
        "",
        tuning_text(settings, grid, args.tune_scenes) if ledits else "LEDITS++ was left out of this run.",
        "",
        f"Best fixed threshold on these edits: ours {best_t:.2f} (IoU {ours.max():.3f}), ours without refinement "
        f"{best_u:.2f} (IoU {unrefined.max():.3f}), the peer's ratio {best_r:.2f} (IoU {peer.max():.3f}).",
        "",
        "![mask IoU against threshold](quality_iou.png)",
        "",
        "![example edits](quality_examples.png)",
        "",
    ])


def main(argv=None) -> int:
    args = parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if args.scenes < 1 or args.tune_scenes < 0 or not kinds or any(k not in EDIT_KINDS for k in kinds):
        print(f"error: --scenes must be >= 1, --tune-scenes >= 0, --kinds a selection of {EDIT_KINDS}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    config = DiffEditConfig().validate()
    edits = held_out_edits(args.scenes, kinds, cycle=not args.all_kinds)
    model = load_model(args.model)
    args.factor = model.vae_scale_factor
    pipe = load_peer(args.model)
    methods = METHODS[:3] if args.no_leditspp else METHODS
    ledits, settings, grid = None, LeditsSettings(), []
    t0 = time.perf_counter()
    if not args.no_leditspp:
        ledits = load_leditspp(args.model)
        if args.tune_scenes:
            print(f"tuning LEDITS++ on {args.tune_scenes} colour edits", file=sys.stderr)
            settings, grid = tune_leditspp(ledits, config, args.tune_scenes, args.seed)
    print(f"{len(edits)} edits, {len(methods)} methods", file=sys.stderr)
    rows, our_maps, raw_maps, peer_maps, pictures = run(model, pipe, edits, config, args.seed, ledits, settings)
    seconds = time.perf_counter() - t0
    truths = [e.true_mask() for e in edits]
    curves = iou_curves(our_maps, raw_maps, peer_maps, truths, config)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "quality.csv")
    plot_curves(*curves, config, args.out / "quality_iou.png")
    example_grid(pictures, edits, args.examples, args.out / "quality_examples.png")
    md = markdown(rows, edits, config, curves, seconds, args, methods, settings, grid)
    (args.out / "quality.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
