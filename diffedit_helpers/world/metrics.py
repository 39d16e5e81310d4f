"""Measures of an edit on the shapes world, where the truth is known.

  - `mask_iou`: a mask against the true region (the object before and after the edit);
  - `background_psnr`: edited against input, over the pixels outside the true region;
  - `edit_success`: a deterministic judge of the whole edited picture against the world's
    known colours, patterns and shapes, one per kind of edit:
      colour: most of the object on the target's coat, its mean colour near the expected, its
        area and place kept, the target pattern still there, the colour nowhere else;
      pattern: the object's coat with the target pattern (`pattern_of` tells plain, striped and
        dotted apart and rejects tartan, flat tints and noise), area and place kept;
      shape: the painted region on the target silhouette (IoU >= 0.6), ahead of the source's
        by a margin and of every other shape's;
      removal: the region looks like the background there (mean colour, palette colours, texture).
    Calibrated both ways (`calibration`, tests/test_judges.py): the target scene through the
    VAE passes, the unchanged input and a catalogue of wrong edits fail.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from scipy.ndimage import binary_closing, binary_dilation, binary_erosion, binary_fill_holes, uniform_filter

from .shapes import (
    BACKGROUND_COLOURS,
    COLOURS,
    SHAPES,
    Edit,
    Scene,
    Thing,
    horse_legs_mask,
    horse_part_masks,
    paint,
    pattern_colour,
    pattern_period,
    render,
    shape_mask,
)

PSNR_CAP = 60.0  # dB reported when the background is untouched (zero error)
BACKGROUND_LABEL = "background"


def mask_iou(pred: np.ndarray, true: np.ndarray) -> float:
    "Intersection over union of two boolean masks of the same shape; two empty masks give 1.0."
    pred, true = np.asarray(pred, dtype=bool), np.asarray(true, dtype=bool)
    if pred.shape != true.shape:
        raise ValueError(f"pred and true must have the same shape, got {pred.shape} and {true.shape}")
    union = np.logical_or(pred, true).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, true).sum() / union)


def background_psnr(edited, source, true_mask: np.ndarray) -> float:
    """PSNR in dB (peak 255) of `edited` against `source` over the pixels outside `true_mask`.

    edited, source: PIL images or (H, W, 3) arrays of the same size; true_mask: (H, W) bool.
    An untouched background gives PSNR_CAP rather than infinity, so means stay finite.
    """
    a, b = np.asarray(edited, dtype=np.float64), np.asarray(source, dtype=np.float64)
    outside = ~np.asarray(true_mask, dtype=bool)
    if a.shape != b.shape or a.shape[:2] != outside.shape:
        raise ValueError(f"edited {a.shape}, source {b.shape} and true_mask {outside.shape} must match in size")
    if not outside.any():
        raise ValueError("true_mask covers the whole image: there is no background to compare")
    mse = float(((a - b) ** 2)[outside].mean())
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


def _segment(px: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Project colours px (..., 3) on the segments a -> b, (K, 3) each: the position t in [0, 1]
    along each segment and the distance to it, both (..., K)."""
    d = b - a  # (K, 3)
    t = np.clip(((px[..., None, :] - a) * d).sum(-1) / (d * d).sum(-1), 0, 1)  # (..., K)
    return t, np.linalg.norm(px[..., None, :] - (a + t[..., None] * d), axis=-1)


def colour_labels(image, background: str, along: float = 0.5) -> np.ndarray:
    """Per pixel, the name of the nearest known colour: a palette colour (`shapes.COLOURS`) or
    "background" (the scene background's own base colours). (H, W, 3) -> (H, W) str.

    A decoded image blurs an object's stripes or dots into its colour, so the distance to a
    palette colour c is measured to the segment between c and its pattern colour, with the
    way along the segment at `along` of its length: a red-white mix is still "red", a white
    pixel stays "white".
    """
    names = list(COLOURS)
    main = np.array([COLOURS[n] for n in names], np.float32)  # (K, 3)
    second = np.array([COLOURS[pattern_colour(n)] for n in names], np.float32)  # (K, 3)
    px = np.asarray(image, dtype=np.float32)[..., :3]  # (H, W, 3)
    t, off = _segment(px, main, second)  # (H, W, K) each
    cost = off + along * t * np.linalg.norm(second - main, axis=-1)  # (H, W, K)
    refs = np.array(BACKGROUND_COLOURS[background], np.float32)  # (R, 3)
    cost_bg = np.linalg.norm(px[..., None, :] - refs, axis=-1)  # (H, W, R)
    labels = np.array(names + [BACKGROUND_LABEL] * len(refs))
    return labels[np.concatenate([cost, cost_bg], axis=-1).argmin(-1)]


def main_colour_mask(thing: Thing, size: int) -> np.ndarray:
    "Where the object shows its own colour (its shape minus stripes or dots): (size, size) bool."
    own = np.all(paint(thing, size) == np.array(COLOURS[thing.colour], np.float32), axis=-1)
    return shape_mask(thing, size) & own


def core(mask: np.ndarray, min_pixels: int = 10) -> np.ndarray:
    "The mask less a 1-pixel rim (a decoded edge is soft), or the mask itself when too little would be left."
    inner = binary_erosion(mask)
    return inner if inner.sum() >= min_pixels else np.asarray(mask, bool)


def _fraction(labels, where, names) -> float:
    "The share of the pixels in `where` whose label is one of `names` (0 where `where` is empty)."
    return float(np.isin(labels[where], names).mean()) if where.any() else 0.0


def others_mask(scene: Scene, index: int, grow: int = 1) -> np.ndarray:
    "The scene's objects other than `index`, grown by `grow` pixels: (size, size) bool."
    out = np.zeros((scene.size, scene.size), bool)
    for i, t in enumerate(scene.things):
        if i != index:
            out |= shape_mask(t, scene.size)
    return binary_dilation(out, iterations=grow) if grow and out.any() else out


def coat_position(image, thing: Thing) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, where its colour lies along the segment from `thing`'s colour to its pattern
    colour (0: the object's colour, 1: the stripe/dot colour) and how far off that segment it
    is (RGB): (H, W, 3) -> two (H, W) arrays. Blurring keeps the mean position, so over an
    object it is the pattern's share of the area even when the stripes are soft."""
    a = np.array([COLOURS[thing.colour]], np.float32)
    b = np.array([COLOURS[pattern_colour(thing.colour)]], np.float32)
    t, off = _segment(np.asarray(image, dtype=np.float32)[..., :3], a, b)
    return t[..., 0], off[..., 0]


def painted_region(image, labels: np.ndarray, thing: Thing, scene: Scene, index: int) -> np.ndarray:
    """Where the picture shows `thing`'s coat, anywhere but on the scene's other objects: pixels
    labelled its colour or near its colour on its coat (within COAT_OFF of the colour-to-pattern-
    colour segment, nearer the colour end, not labelled background), with the coat pixels next
    to them (stripes, dots), gaps closed and holes filled. (H, W) bool."""
    t, off = coat_position(image, thing)
    coat = (off <= COAT_OFF) & (labels != BACKGROUND_LABEL)
    own = (labels == thing.colour) | (coat & (t <= 0.75))
    own |= coat & binary_dilation(own, iterations=2)
    own = binary_fill_holes(binary_closing(own))
    return own & ~others_mask(scene, index)


def silhouette_scores(painted: np.ndarray, thing: Thing, size: int) -> tuple[float, float]:
    """IoU of the painted region with `thing`'s silhouette, and the best IoU with the silhouette of
    any other shape at the same place, drawn at the same size or at the same area (a circle and
    a square of one size overlap by 0.87; a disc of a diamond's area covers most of it)."""
    target = shape_mask(thing, size)
    best = 0.0
    for s in SHAPES:
        if s != thing.shape:
            other = replace(thing, shape=s)
            same_area = replace(other, size=thing.size * (target.sum() / max(shape_mask(other, size).sum(), 1)) ** 0.5)
            best = max(best, mask_iou(painted, shape_mask(other, size)), mask_iou(painted, shape_mask(same_area, size)))
    return mask_iou(painted, target), best


def lag_correlation(share: np.ndarray, where: np.ndarray, lag: int = 1) -> float:
    "Correlation of the values of `share` `lag` pixels apart across, both pixels in `where` (1.0 when constant)."
    both = where[:, :-lag] & where[:, lag:]
    a, b = share[:, :-lag][both], share[:, lag:][both]
    if a.size < 3 or a.std() < 1e-3 or b.std() < 1e-3:
        return 1.0
    return float(np.corrcoef(a, b)[0, 1])


def on_coat_mask(image, labels: np.ndarray, thing: Thing) -> np.ndarray:
    "Pixels in either of `thing`'s coat colours (near its colour-to-pattern-colour segment, not labelled background): (H, W) bool."
    return (coat_position(image, thing)[1] <= COAT_OFF) & (labels != BACKGROUND_LABEL)


def keeps_place(painted: np.ndarray, thing: Thing, size: int, coat: np.ndarray | None = None) -> bool:
    """The painted region keeps the object's area and place: its area within AREA_RANGE
    times the object's and its IoU with the silhouette at least SILHOUETTE_IOU (thin legs may blur away);
    a horse also keeps at least LEGS_COVER of its legs (a legless, stubby animal keeps IoU >= 0.5),
    counted on the painted region or, given `coat` ((H, W) bool, `on_coat_mask`), on either coat
    colour (a zebra's leg may fall on a white stripe)."""
    area = painted.sum() / max(shape_mask(thing, size).sum(), 1)
    if thing.shape == "horse":
        legs = horse_legs_mask(thing, size)
        shown = painted if coat is None else painted | coat
        if legs.any() and shown[legs].mean() < LEGS_COVER:
            return False
    return AREA_RANGE[0] <= area <= AREA_RANGE[1] and silhouette_scores(painted, thing, size)[0] >= SILHOUETTE_IOU


def pattern_features(share: np.ndarray, where: np.ndarray) -> dict:
    """What tells plain, striped and dotted apart, from the pattern share in `where` ((H, W) each):
    mean (the pattern colour's share of the area: 0 plain, 0.5 stripes, 0.3 dots, 0.75 tartan),
    spread (its standard deviation: near 0 for plain objects and flat tints), and the parts of its
    variance explained by its column means and by its row means (stripes are vertical: columns
    explain nearly all of it, rows nearly none; dots need both), and the correlation of
    neighbouring pixels, the higher of across and down (near 1 for a pattern, near 0 for pixel noise)."""
    v = share[where]
    ys, xs = np.nonzero(where)
    mean, var = float(v.mean()), float(v.var())

    def explained(index):
        count = np.bincount(index)
        ok = count > 0
        means = np.bincount(index, weights=v)[ok] / count[ok]
        return float((count[ok] * (means - mean) ** 2).sum() / count[ok].sum() / var) if var > 1e-6 else 0.0

    neighbours = max(lag_correlation(share, where), lag_correlation(share.T, where.T))
    return dict(mean=mean, spread=var**0.5, columns=explained(xs), rows=explained(ys), neighbours=neighbours)


def within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def pattern_of(image, thing: Thing, where: np.ndarray) -> str | None:
    """The pattern the picture shows in `where`, in `thing`'s colours: "plain", "striped",
    "dotted", or None for anything else (tartan, a flat tint, noise)."""
    share = coat_position(image, thing)[0]
    f = pattern_features(share, where)
    if f["mean"] < 0.12 and f["spread"] < 0.12:
        return "plain"
    if f["neighbours"] < 0.4:  # a pattern is smooth along at least one direction; pixel noise is not
        return None

    def repeats(pattern):  # the pattern repeats across at its period: blurred noise does not
        period = pattern_period(replace(thing, pattern=pattern))
        return max(lag_correlation(share, where, lag) for lag in {int(period), int(np.ceil(period))}) >= REPEAT

    def stripe_periods():  # lags in PERIOD_RANGE at which the share repeats and turns over half a lag on, over the world's period
        period = pattern_period(replace(thing, pattern="striped"))
        return [lag / period for lag in range(max(2, int(PERIOD_RANGE[0] * period)), int(np.ceil(PERIOD_RANGE[1] * period)) + 1)
                if lag_correlation(share, where, lag) >= REPEAT and lag_correlation(share, where, round(lag / 2)) <= -HALF_PERIOD]

    if f["spread"] >= 0.2 and f["columns"] >= 0.85 and within(f["mean"], PATTERN_SHARE["striped"]):
        found = stripe_periods()
        # at the world's period (within 15%) as before; further off, where blurred dots can repeat too, only
        # stripes whose column means explain STRIPE_COLUMNS of the coat's variance
        if any(abs(r - 1) <= 0.15 for r in found) or (found and f["columns"] >= STRIPE_COLUMNS):
            return "striped"
    if (f["spread"] >= 0.15 and f["columns"] < 0.85 and f["rows"] < 0.85 and within(f["mean"], PATTERN_SHARE["dotted"])
            and repeats("dotted")):
        return "dotted"
    return None


def on_coat(image, thing: Thing, where: np.ndarray) -> float:
    "The share of the pixels in `where` near `thing`'s coat (within COAT_OFF of its colour-to-pattern-colour segment)."
    return float((coat_position(image, thing)[1][where] <= COAT_OFF).mean()) if where.any() else 0.0


def mean_colour_error(image, thing: Thing, where: np.ndarray) -> float:
    """Distance (RGB) between the picture's mean colour in `where` and that of `thing` painted there.
    A striped or dotted coat's mean depends on how its pattern falls on the silhouette, so for one
    the distance is to the nearest mean a coat of that pattern can have: its colour mixed with the
    pattern colour at a share within PATTERN_SHARE."""
    mean = np.asarray(image, np.float32)[..., :3][where].mean(0)  # (3,)
    if thing.pattern == "plain":
        return float(np.linalg.norm(mean - paint(thing, where.shape[0])[where].mean(0)))
    a, b = np.float32(COLOURS[thing.colour]), np.float32(COLOURS[pattern_colour(thing.colour)])
    lo, hi = PATTERN_SHARE[thing.pattern]
    share = np.clip(float((mean - a) @ (b - a) / ((b - a) @ (b - a))), lo, hi)
    return float(np.linalg.norm(mean - (a + share * (b - a))))


def colour_elsewhere(labels: np.ndarray, colour: str, scene: Scene, grow: int = 1, own: np.ndarray | None = None) -> int:
    """Pixels labelled `colour` where the scene shows no such colour (grown by `grow` pixels), nor
    inside `own` (the edited object's silhouette, (H, W) bool, whose stripes may lie anywhere on it):
    how far the colour spilled onto the background or the other objects."""
    shown = np.all(np.asarray(render(scene)[0]) == np.array(COLOURS[colour], np.uint8), axis=-1)
    if own is not None:
        shown = shown | own
    allowed = binary_dilation(shown, iterations=grow) if shown.any() else shown
    return int(((labels == colour) & ~allowed).sum())


def own_colour_in_place(image, thing: Thing, where: np.ndarray) -> bool:
    """Does the picture show `thing`'s own colour where `thing` shows it (in `where`)? A plain
    object: OWN_COLOUR_SHARE of those pixels near its colour (on its coat, nearer its colour
    than its pattern colour). A striped or dotted one: those pixels nearer its colour, on
    average, than the pixels of its stripes or dots (a black zebra is not a white striped horse)."""
    size = where.shape[0]
    own = where & main_colour_mask(thing, size)
    if not own.any():
        return False
    t, off = coat_position(image, thing)
    if thing.pattern == "plain":
        return float(((t[own] < 0.5) & (off[own] <= COAT_OFF)).mean()) >= OWN_COLOUR_SHARE
    second = where & ~main_colour_mask(thing, size)
    return bool(second.any()) and float(t[own].mean()) + 0.1 < float(t[second].mean())


# limits of the judges, calibrated on held-out scenes (tests/test_judges.py)
COAT_OFF = 45.0  # RGB distance from an object's colour-to-pattern-colour segment that still counts as its coat
OWN_COLOUR_SHARE = 0.6  # colour edits: of the pixels where the object shows its own colour, the share near it
ON_COAT = 0.65  # share of the object's pixels (less its rim) that must show its coat
MEAN_COLOUR_ERROR = 35.0  # RGB distance of the object's mean colour from the expected
SILHOUETTE_IOU = 0.5  # painted region vs the object's silhouette (colour and pattern edits)
LEGS_COVER = 0.3  # horses: share of the legs painted (the target through the VAE: 5th percentile 0.61, minimum 0.35)
AREA_RANGE = (0.6, 1.5)  # painted area over the object's (colour and pattern edits)
SHAPE_IOU, SHAPE_MARGIN = 0.6, 0.05  # shape edits: IoU with the target shape, and its lead over the source's
PATTERN_SHARE = {"striped": (0.3, 0.7), "dotted": (0.12, 0.5)}  # the pattern colour's share of a coat of each pattern
REPEAT = 0.3  # a pattern's correlation with itself one period across (and its anticorrelation half a period across)
PERIOD_RANGE = (0.7, 1.45)  # stripe periods, as multiples of the world's, that still count as its stripes
STRIPE_COLUMNS = 0.9  # stripes off the world's period: the share of the coat's variance its column means explain (blurred dots reach 0.86)
HALF_PERIOD = 0.1  # stripes: their anticorrelation half a period across (blurred noise stays positive)
SPILL = 0.1  # target-colour pixels elsewhere, as a share of the object's area
BACKGROUND_ERROR = 30.0  # removal: RGB distance of the region's mean colour from the background's
PALETTE_EXCESS = 0.15  # removal: share of palette-coloured pixels beyond what the background has
PART_SHOWN = 0.4  # whole_zebra: the share of each leg and of the head that must show the coat
TEXTURE_RATIO = 0.1  # removal: the region's fine texture against the background's


def colour_success(edit: Edit, image, labels) -> bool:
    """The object took the target colour and kept its shape, place and pattern, and nothing else
    took that colour: most of its pixels on the target's coat, its own colour where it was (a
    colour edit keeps the stripes where they were), its mean colour near the expected, the
    painted region on its silhouette, the target pattern, no spill."""
    tgt, size = edit.target.things[edit.index], edit.target.size
    inside = core(shape_mask(tgt, size))
    return (on_coat(image, tgt, inside) >= ON_COAT
            and (edit.kind != "colour" or own_colour_in_place(image, tgt, inside))
            and mean_colour_error(image, tgt, inside) <= MEAN_COLOUR_ERROR
            and keeps_place(painted_region(image, labels, tgt, edit.target, edit.index), tgt, size, on_coat_mask(image, labels, tgt))
            and pattern_of(image, tgt, inside) == tgt.pattern
            and colour_elsewhere(labels, tgt.colour, edit.target, own=shape_mask(tgt, size)) <= SPILL * shape_mask(tgt, size).sum())


def shape_success(edit: Edit, image, labels) -> bool:
    """The region painted in the object's colours matches the target shape's silhouette: IoU >=
    SHAPE_IOU, SHAPE_MARGIN more than with the source's silhouette, and no less than with any
    other shape's (at the same size or area): a circle where a square should be fails."""
    src, tgt, size = edit.source.things[edit.index], edit.target.things[edit.index], edit.target.size
    painted = painted_region(image, labels, tgt, edit.target, edit.index)
    iou, other = silhouette_scores(painted, tgt, size)
    return iou >= SHAPE_IOU and iou - mask_iou(painted, shape_mask(src, size)) >= SHAPE_MARGIN and iou >= other


def pattern_success(edit: Edit, image, labels) -> bool:
    """Inside the object (less its rim) the picture shows the object's coat with the mean colour
    of the target pattern, the pattern detector sees the target pattern, and the painted region
    stays on the silhouette. When the colour changes too (a horse <-> a zebra), the colour judge
    must pass as well."""
    src, tgt = edit.source.things[edit.index], edit.target.things[edit.index]
    if src.colour != tgt.colour:
        return colour_success(edit, image, labels)  # it checks the pattern too
    size = edit.target.size
    inside = core(shape_mask(tgt, size))
    return (on_coat(image, tgt, inside) >= ON_COAT
            and mean_colour_error(image, tgt, inside) <= MEAN_COLOUR_ERROR
            and pattern_of(image, tgt, inside) == tgt.pattern
            and keeps_place(painted_region(image, labels, tgt, edit.target, edit.index), tgt, size, on_coat_mask(image, labels, tgt)))


def fine_texture(image, where: np.ndarray) -> float:
    "Standard deviation in `where` of the brightness minus its 5x5 local mean: the fine texture."
    lum = np.asarray(image, np.float32)[..., :3].mean(-1)
    return float((lum - uniform_filter(lum, 5))[where].std())


def removal_success(edit: Edit, image, labels) -> bool:
    """Where the object was (less its rim and the other objects) the picture looks like the
    scene's background there: its mean colour near the background's, no more palette colours
    than the background shows (clouds are white), and some of its fine texture (a flat fill fails)."""
    src, size = edit.source.things[edit.index], edit.source.size
    region = core(shape_mask(src, size)) & ~others_mask(edit.source, edit.index, grow=2)
    if not region.any():
        return False
    truth = np.asarray(render(edit.target)[0], np.float32)  # the scene without the object
    error = float(np.linalg.norm(np.asarray(image, np.float32)[..., :3][region].mean(0) - truth[region].mean(0)))
    palette = _fraction(labels, region, list(COLOURS))
    expected = _fraction(colour_labels(truth, edit.source.background), region, list(COLOURS))
    texture = fine_texture(image, region) >= TEXTURE_RATIO * fine_texture(truth, region)
    return error <= BACKGROUND_ERROR and palette - expected <= PALETTE_EXCESS and texture


def horse_parts_shown(image, thing: Thing, background: str) -> dict[str, float]:
    """The share of each of a horse's parts (`shapes.horse_part_masks`: four legs, head) that shows
    its coat in either colour, on a scene of `background`: {part: share in [0, 1]}."""
    arr = np.asarray(image)
    coat = on_coat_mask(arr, colour_labels(arr, background), thing)
    parts = horse_part_masks(thing, arr.shape[0])
    return {name: float(coat[m].mean()) for name, m in parts.items() if name != "body"}


def whole_zebra(edited, edit: Edit) -> bool:
    """A stricter judge of a horse -> zebra edit: the edit passes `edit_success`, each of the four
    legs and the head shows the zebra's coat over at least PART_SHOWN of its pixels, and the body
    (less its rim) is striped."""
    tgt = edit.target.things[edit.index]
    if tgt.name != "zebra":
        raise ValueError(f"edit must turn a horse into a zebra, its target is {tgt.phrase!r}")
    arr = np.asarray(edited)
    body = core(horse_part_masks(tgt, arr.shape[0])["body"])
    shown = horse_parts_shown(arr, tgt, edit.target.background)
    return edit_success(arr, edit) and min(shown.values()) >= PART_SHOWN and pattern_of(arr, tgt, body) == "striped"


SUCCESS_CHECKS = {"colour": colour_success, "shape": shape_success, "pattern": pattern_success, "removal": removal_success}


def edit_success(edited, edit: Edit) -> bool:
    "Did `edited` (PIL image or (H, W, 3) array) make `edit`? The check for its kind, on nearest known colours."
    arr = np.asarray(edited)
    size = edit.source.size
    if arr.shape[:2] != (size, size):
        raise ValueError(f"edited must be {size}x{size} like the scene, got {arr.shape[:2]}")
    return SUCCESS_CHECKS[edit.kind](edit, arr, colour_labels(arr, edit.source.background))
