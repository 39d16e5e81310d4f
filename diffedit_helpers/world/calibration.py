"""Calibration of the success judges (`metrics.edit_success`) both ways, on held-out scenes.

A judge is worth something only if the edits it should pass pass, and the edits it should
fail fail. Here both are built from the shapes world, where the answer is known:

  - true edits: the target scene rendered, then passed through the model's VAE (encode +
    decode), so it carries the blur and colour shifts every decoded edit has;
  - wrong edits (`WRONG_EDITS`, by kind): the unchanged input, and edits that look right to a
    loose judge: the target colour on only part of the object, the whole picture in the
    target colour, a flat tint where a pattern should be, the wrong pattern or shape, the
    object shrunk or moved, the colour on the other object, a blurred blob, a removed object
    painted over instead of replaced by background.

    python -m diffedit_helpers.world.calibration --scenes 50     # pass rate of every case, by kind

Every wrong edit is judged as rendered and after the same VAE round trip as the true edits.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import numpy as np
from scipy.ndimage import gaussian_filter

from .metrics import edit_success
from .shapes import (
    CLASHES,
    COLOURS,
    PATTERNS,
    SHAPES,
    Edit,
    Thing,
    horse_legs_mask,
    paint,
    pattern_colour,
    pattern_period,
    render,
    shape_mask,
)

TRUE_CASE = "target (through the VAE)"
# pattern edits a person calls right that differ from the rendered target: stripes drawn at another
# period (a colour edit must keep its stripes where they were, so it has no such case)
STRIPE_FACTORS = {"target, stripes 30% wider (through the VAE)": 1.3, "target, stripes 20% narrower (through the VAE)": 0.8}
MIN_STRIPE_PERIOD = 5.0  # pixels: narrower stripes (2 px each) blur into a flat tint through the VAE, so no case is built


# ----------------------------------------------------------------------------- helpers
def _rgb(scene) -> np.ndarray:
    "A scene's render as float32 (H, W, 3)."
    return np.asarray(render(scene)[0], dtype=np.float32)


def _with_thing(edit: Edit, thing: Thing | None, scene=None) -> np.ndarray:
    "The edit's scene (its source by default) with object `index` replaced by `thing` (None: removed)."
    scene = scene or edit.source
    things = [thing if i == edit.index else t for i, t in enumerate(scene.things)]
    return _rgb(replace(scene, things=tuple(t for t in things if t is not None)))


def _paint_pixels(image: np.ndarray, where: np.ndarray, colours, shares, rng) -> np.ndarray:
    "Each pixel in `where` takes one of `colours` (names) at random with probabilities `shares`."
    out = image.copy()
    pick = rng.choice(len(colours), size=int(where.sum()), p=shares)
    out[where] = np.array([COLOURS[c] for c in colours], np.float32)[pick]
    return out


def _other_colour(*avoid, background=None) -> str:
    "The first palette colour not in `avoid` (nor clashing with `background`)."
    clash = CLASHES.get(background, set())
    return next(c for c in COLOURS if c not in avoid and c not in clash)


def _shrunk(thing: Thing, area: float = 0.5) -> Thing:
    "The same object at `area` of its area, same centre."
    return replace(thing, size=thing.size * area**0.5)


def _shifted(thing: Thing, size: int, by: float = 0.5) -> Thing:
    "The same object moved sideways by `by` of its size (to the left when there is no room on the right)."
    dx = by * thing.size
    cx = thing.cx + dx if thing.cx + dx + thing.size / 2 <= size else thing.cx - dx
    return replace(thing, cx=cx)


def _blob(image: np.ndarray, where: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    "The picture with the region `where` (grown by the blur) replaced by its heavy Gaussian blur."
    blurred = np.stack([gaussian_filter(image[..., c], sigma) for c in range(3)], -1)
    grown = gaussian_filter(where.astype(np.float32), sigma) > 0.05
    return np.where(grown[..., None], blurred, image)


def restriped(edit: Edit, factor: float):
    """The target with its stripes redrawn at `factor` times their period (None unless the target is
    striped with a redrawn period of at least MIN_STRIPE_PERIOD)."""
    tgt, size = edit.target.things[edit.index], edit.target.size
    if tgt.pattern != "striped" or pattern_period(tgt) * factor < MIN_STRIPE_PERIOD:
        return None
    m = shape_mask(tgt, size)
    out = _rgb(edit.target)
    out[m] = paint(tgt, size, period_scale=factor)[m]
    return out


# ----------------------------------------------------------------------------- wrong edits
# each takes (edit, rng) and returns an (H, W, 3) float32 picture, or None where it does not apply
def unchanged(edit, rng):
    return _rgb(edit.source)


def colour_mixed_with_white(edit, rng):
    "The object's pixels 55% the target colour, 45% white (black on a white object), at random."
    tgt = edit.target.things[edit.index]
    other = "black" if tgt.colour == "white" else "white"
    return _paint_pixels(_rgb(edit.target), shape_mask(tgt, edit.target.size), [tgt.colour, other], [0.55, 0.45], rng)


def colour_three_way(edit, rng):
    "40% of the object's pixels the target colour, 30% the old colour, 30% a third colour."
    src, tgt = edit.source.things[edit.index], edit.target.things[edit.index]
    third = _other_colour(src.colour, tgt.colour, "white", "black")
    return _paint_pixels(_rgb(edit.target), shape_mask(tgt, edit.target.size), [tgt.colour, src.colour, third],
                         [0.4, 0.3, 0.3], rng)


def colour_everywhere(edit, rng):
    "The whole picture in the target colour."
    tgt = edit.target.things[edit.index]
    return np.broadcast_to(np.array(COLOURS[tgt.colour], np.float32), _rgb(edit.source).shape).copy()


def target_shrunk(edit, rng):
    "The target object at half its area (same centre); the rest of its place is background."
    return _with_thing(edit, _shrunk(edit.target.things[edit.index]), edit.target)


def target_shifted(edit, rng):
    "The target object moved sideways by half its size."
    return _with_thing(edit, _shifted(edit.target.things[edit.index], edit.target.size), edit.target)


def horse_without_legs(edit, rng):
    "Horse targets: the target animal with background where its legs are (a stubby zebra)."
    tgt = edit.target.things[edit.index]
    if tgt.shape != "horse":
        return None
    picture, background = _rgb(edit.target), _with_thing(edit, None, edit.target)
    legs = horse_legs_mask(tgt, edit.target.size)
    picture[legs] = background[legs]
    return picture


def colour_on_the_other_object(edit, rng):
    "Two-object scenes: the target colour lands on the other object; the edited one keeps its colour."
    if len(edit.source.things) < 2:
        return None
    tgt = edit.target.things[edit.index]
    things = tuple(t if i == edit.index else replace(t, colour=tgt.colour) for i, t in enumerate(edit.source.things))
    return _rgb(replace(edit.source, things=things))


def colour_on_both_objects(edit, rng):
    "Two-object scenes: the edited object and the other one both take the target colour."
    tgt = edit.target.things[edit.index]
    if len(edit.source.things) < 2:
        return None
    other = edit.source.things[1 - edit.index]
    if other.colour == tgt.colour or (other.pattern != "plain" and pattern_colour(other.colour) == tgt.colour):
        return None  # it shows that colour already (a white-striped object turned white just swaps its stripes)
    return _rgb(replace(edit.target, things=tuple(replace(t, colour=tgt.colour) for t in edit.target.things)))


def blurred_blob(edit, rng):
    "A striped or dotted target object smeared into a blurred blob (Gaussian, sigma 3 px): its pattern gone."
    tgt = edit.target.things[edit.index]
    if tgt.pattern == "plain":  # a soft-edged plain object is still the target
        return None
    return _blob(_rgb(edit.target), shape_mask(tgt, edit.target.size))


def pattern_flat_tint(edit, rng):
    "A plain object in the target pattern's average colour (its stripes or dots mixed in)."
    tgt = edit.target.things[edit.index]
    if tgt.pattern == "plain":  # that is the target itself
        return None
    size = edit.target.size
    m = shape_mask(tgt, size)
    out = _rgb(edit.target)
    out[m] = paint(tgt, size)[m].mean(0)
    return out


def pattern_third(edit, rng):
    "The object in the pattern that is neither the source's nor the target's (target colours)."
    src, tgt = edit.source.things[edit.index], edit.target.things[edit.index]
    third = [p for p in PATTERNS if p not in (src.pattern, tgt.pattern)]
    if len(third) != 1:  # horse <-> zebra changes colour and pattern: the third is the other patterned coat
        third = [p for p in ("dotted", "striped") if p != tgt.pattern]
    return _with_thing(edit, replace(tgt, pattern=third[0]), edit.target)


def _tartan_coat(thing: Thing, size: int) -> np.ndarray:
    "The object's colours as tartan: vertical and horizontal stripes of its pattern colour, (size, size, 3)."
    vertical = paint(replace(thing, pattern="striped"), size)
    horizontal = paint(replace(thing, pattern="striped", cx=thing.cy), size).transpose(1, 0, 2)
    second = np.array(COLOURS[pattern_colour(thing.colour)], np.float32)
    either = np.all(vertical == second, -1) | np.all(horizontal == second, -1)
    return np.where(either[..., None], second, np.array(COLOURS[thing.colour], np.float32))


def pattern_tartan(edit, rng):
    "The object in tartan (stripes both ways) in the target's colours."
    tgt = edit.target.things[edit.index]
    size = edit.target.size
    m = shape_mask(tgt, size)
    out = _rgb(edit.target)
    out[m] = _tartan_coat(tgt, size)[m]
    return out


def round_blob(edit, rng):
    "A blurred disc of the object's area, colours and place instead of the target shape (not for circles)."
    tgt = edit.target.things[edit.index]
    if tgt.shape == "circle":
        return None
    size = edit.target.size
    disc = replace(tgt, shape="circle", size=2 * (shape_mask(tgt, size).sum() / np.pi) ** 0.5)
    return _blob(_with_thing(edit, disc, edit.target), shape_mask(disc, size), sigma=1.5)


def shape_third(edit, rng):
    "The object in a shape that is neither the source's nor the target's."
    src, tgt = edit.source.things[edit.index], edit.target.things[edit.index]
    third = [s for s in SHAPES if s not in (src.shape, tgt.shape)]
    return _with_thing(edit, replace(tgt, shape=third[int(rng.integers(len(third)))]), edit.target)


def removal_repainted(edit, rng):
    "The object still there, in another colour."
    src = edit.source.things[edit.index]
    return _with_thing(edit, replace(src, colour=_other_colour(src.colour, background=edit.source.background)))


def removal_black(edit, rng):
    "The object's place filled black."
    out = _rgb(edit.target)
    out[shape_mask(edit.source.things[edit.index], edit.source.size)] = COLOURS["black"]
    return out


def removal_half(edit, rng):
    "Half the object removed: it stays at half its area."
    return _with_thing(edit, _shrunk(edit.source.things[edit.index]))


def removal_blob(edit, rng):
    "The object smeared into its surroundings (Gaussian, sigma 3 px) instead of removed."
    return _blob(_rgb(edit.source), shape_mask(edit.source.things[edit.index], edit.source.size))


WRONG_EDITS = {
    "colour": {
        "unchanged input": unchanged,
        "55% target colour, 45% white": colour_mixed_with_white,
        "40% target, 30% old, 30% a third colour": colour_three_way,
        "whole picture in the target colour": colour_everywhere,
        "object shrunk to half its area": target_shrunk,
        "object shifted by half its size": target_shifted,
        "a horse without its legs": horse_without_legs,
        "target colour on the other object": colour_on_the_other_object,
        "target colour on both objects": colour_on_both_objects,
        "patterned object smeared into a blob": blurred_blob,
    },
    "pattern": {
        "unchanged input": unchanged,
        "plain, in the pattern's average colour": pattern_flat_tint,
        "the wrong third pattern": pattern_third,
        "tartan": pattern_tartan,
        "object shrunk to half its area": target_shrunk,
        "object shifted by half its size": target_shifted,
        "a horse without its legs": horse_without_legs,
        "patterned object smeared into a blob": blurred_blob,
    },
    "shape": {
        "unchanged input": unchanged,
        "a wrong third shape": shape_third,
        "object shrunk to half its area": target_shrunk,
        "object shifted by half its size": target_shifted,
        "a blurred round blob": round_blob,
    },
    "removal": {
        "unchanged input": unchanged,
        "object repainted another colour": removal_repainted,
        "object filled black": removal_black,
        "half of the object removed": removal_half,
        "object smeared into its surroundings": removal_blob,
    },
}


# ----------------------------------------------------------------------------- pass rates
def vae_round_trip(model, pictures, batch: int = 32) -> list[np.ndarray]:
    "Pictures ((H, W, 3) arrays in [0, 255]) encoded and decoded by the model's VAE: uint8 arrays."
    from PIL import Image

    from ..latents import decode_to_images, encode_image

    out = []
    for i in range(0, len(pictures), batch):
        ims = [Image.fromarray(np.clip(np.asarray(p), 0, 255).round().astype(np.uint8)) for p in pictures[i : i + batch]]
        out += [np.asarray(im) for im in decode_to_images(model, encode_image(model, ims))]
    return out


def is_true_case(case: str) -> bool:
    "Is `case` an edit that must pass (the target, or a restriped target), judged through the VAE only?"
    return case == TRUE_CASE or case in STRIPE_FACTORS


def calibration_cases(edits, seed: int = 0) -> dict:
    """Every case's pictures: {(kind, case): [(edit, picture), ...]}, the true cases (TRUE_CASE and
    STRIPE_FACTORS' restriped targets) as rendered (pass them through `vae_round_trip`), wrong cases
    as built (None results dropped)."""
    cases = {}
    for i, e in enumerate(edits):
        cases.setdefault((e.kind, TRUE_CASE), []).append((e, _rgb(e.target)))
        for name, factor in STRIPE_FACTORS.items():
            if e.kind == "pattern" and (pic := restriped(e, factor)) is not None:
                cases.setdefault((e.kind, name), []).append((e, pic))
        for name, build in WRONG_EDITS[e.kind].items():
            pic = build(e, np.random.default_rng([seed, i]))
            if pic is not None:
                cases.setdefault((e.kind, name), []).append((e, pic))
    return cases


def pass_rates(model, edits, seed: int = 0) -> dict:
    """{(kind, case): (n, pass rate as rendered, pass rate through the VAE)}; the true case is
    judged through the VAE only (its plain render is the target itself)."""
    rates = {}
    for key, items in calibration_cases(edits, seed).items():
        pictures = [p for _, p in items]
        decoded = vae_round_trip(model, pictures)
        through = float(np.mean([edit_success(d, e) for (e, _), d in zip(items, decoded)]))
        raw = float("nan") if is_true_case(key[1]) else float(np.mean([edit_success(p, e) for e, p in items]))
        rates[key] = (len(items), raw, through)
    return rates


def format_rates(rates: dict) -> str:
    lines = ["| edit kind | case | n | passes (as rendered) | passes (through the VAE) |", "|---|---|---|---|---|"]
    for (kind, case), (n, raw, through) in rates.items():
        raw_text = "-" if np.isnan(raw) else f"{raw:.0%}"
        lines.append(f"| {kind} | {case} | {n} | {raw_text} | {through:.0%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from ..models import load_model
    from .evaluate import held_out_edits
    from .shapes import EDIT_KINDS

    p = argparse.ArgumentParser(prog="python -m diffedit_helpers.world.calibration", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=50, help="held-out scenes, every kind on each (default 50)")
    p.add_argument("--model", default="bundled", help="whose VAE decodes the pictures (default: bundled)")
    args = p.parse_args(argv)
    try:
        edits = held_out_edits(args.scenes, EDIT_KINDS)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_rates(pass_rates(load_model(args.model), edits)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
