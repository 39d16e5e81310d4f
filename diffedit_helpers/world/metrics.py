"""Measures of an edit on the shapes world, where the truth is known.

  - `mask_iou`: a mask against the true region (the object before and after the edit);
  - `background_psnr`: edited against input, over the pixels outside the true region;
  - `edit_success`: a deterministic judge of the edited pixels against the world's known
    colours and shapes (did the object take the target colour, the target shape, the target
    pattern, did it disappear). Every judge passes on the target scene's own render and fails
    on the unedited input (tests/test_evaluate.py).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np
from scipy.ndimage import binary_erosion

from .shapes import BACKGROUND_COLOURS, COLOURS, Edit, Thing, paint, pattern_colour, shape_mask

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


def _fraction(labels, where, name) -> float:
    return float((labels[where] == name).mean()) if where.any() else 0.0


def colour_success(edit: Edit, image, labels) -> bool:
    "Where the target object shows its colour, the most common label is the target colour."
    target = edit.target.things[edit.index]
    votes = Counter(labels[main_colour_mask(target, edit.target.size)].tolist())
    return bool(votes) and votes.most_common(1)[0][0] == target.colour


def shape_success(edit: Edit, image, labels) -> bool:
    """In the edit region, the pixels of the object's colour match the target shape (where it
    shows that colour) better than the source shape (IoU)."""
    src, tgt = edit.source.things[edit.index], edit.target.things[edit.index]
    found = (labels == tgt.colour) & edit.true_mask()
    size = edit.source.size
    return mask_iou(found, main_colour_mask(tgt, size)) > mask_iou(found, main_colour_mask(src, size))


def pattern_share(image, thing: Thing, where: np.ndarray) -> np.ndarray:
    """Per pixel in `where`, how far its colour lies from `thing`'s colour towards its pattern
    colour, in [0, 1] (0: the object's colour, 1: the stripe/dot colour). Blurring keeps the
    mean, so the mean is the pattern's share of the area even when the stripes are soft."""
    px = np.asarray(image, dtype=np.float32)[..., :3][where]  # (N, 3)
    a = np.array([COLOURS[thing.colour]], np.float32)
    b = np.array([COLOURS[pattern_colour(thing.colour)]], np.float32)
    return _segment(px, a, b)[0][:, 0]  # (N,)


def pattern_success(edit: Edit, image, labels) -> bool:
    """Inside the object (less a 1-pixel rim), at least half of the pixels show the target's
    colour or its pattern colour and a quarter its colour (an object erased into background,
    or left in its old colour, fails), and their mean pattern share is nearer the target pattern's than the
    source pattern's (both painted in the target's colours). When the colour changes too (a
    horse <-> a zebra), the colour check must pass as well; a striped horse -> zebra edit
    keeps the stripes, so the colours alone decide it."""
    src, tgt = edit.source.things[edit.index], edit.target.things[edit.index]
    size = edit.source.size
    inside = shape_mask(tgt, size)  # a pattern edit keeps the shape
    inner = binary_erosion(inside)
    inside = inner if inner.sum() >= 10 else inside
    kept = inside & np.isin(labels, [tgt.colour, pattern_colour(tgt.colour)])
    if kept.sum() < 0.5 * inside.sum() or (inside & (labels == tgt.colour)).sum() < 0.25 * inside.sum():
        return False
    found = pattern_share(image, tgt, kept).mean()
    want_src, want_tgt = (pattern_share(paint(t, size), tgt, inside).mean() for t in (replace(src, colour=tgt.colour), tgt))
    if src.colour != tgt.colour and not colour_success(edit, image, labels):
        return False
    return bool(want_src == want_tgt or abs(found - want_tgt) < abs(found - want_src))


def removal_success(edit: Edit, image, labels, keep_limit: float = 0.25) -> bool:
    "Fewer than `keep_limit` of the pixels that showed the object's colour still show it."
    thing = edit.source.things[edit.index]
    return _fraction(labels, main_colour_mask(thing, edit.source.size), thing.colour) < keep_limit


SUCCESS_CHECKS = {"colour": colour_success, "shape": shape_success, "pattern": pattern_success, "removal": removal_success}


def edit_success(edited, edit: Edit) -> bool:
    "Did `edited` (PIL image or (H, W, 3) array) make `edit`? The check for its kind, on nearest known colours."
    arr = np.asarray(edited)
    size = edit.source.size
    if arr.shape[:2] != (size, size):
        raise ValueError(f"edited must be {size}x{size} like the scene, got {arr.shape[:2]}")
    return SUCCESS_CHECKS[edit.kind](edit, arr, colour_labels(arr, edit.source.background))
