"""The shapes world: procedural scenes whose true object masks are known.

A scene is a textured background (grass, sky, sand, brick) with one or two objects. Each
object is a shape (circle, square, triangle, diamond, or a four-legged animal silhouette, the
"horse"), a colour and a pattern (plain, striped, dotted). A black striped horse is a
"zebra": the same animal in black and white stripes, so the classic DiffEdit edit
"a brown horse on grass" -> "a zebra on grass" works on the bundled model too.

Everything is deterministic from a seed: `random_scene(seed)` gives a `Scene`, `render(scene)`
gives `(image, masks)` with one exact boolean mask per object, and `scene.caption` is the
text the bundled model was trained on. `make_edit(scene, kind)` turns a scene into an edit
(source prompt, target prompt, the target scene and the true region that must change).
Seeds from `HELD_OUT_SEED` on are the held-out split: training never renders them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
# scenes with seeds from here on are never trained on: the held-out split every evaluation uses
HELD_OUT_SEED = 1_000_000
# salts that give each use of a seed its own random stream (a scene, the demo horse, an edit)
SCENE_SALT, HORSE_SALT, EDIT_SALT = 7, 11, 13

BACKGROUNDS = ("grass", "sky", "sand", "brick")
SHAPES = ("circle", "square", "triangle", "diamond", "horse")
PATTERNS = ("plain", "striped", "dotted")
COLOURS = {
    "red": (210, 35, 35),
    "orange": (240, 130, 20),
    "yellow": (245, 220, 40),
    "green": (40, 170, 60),
    "blue": (35, 70, 220),
    "purple": (140, 50, 190),
    "pink": (250, 130, 200),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "brown": (125, 70, 30),
}
# colours an object never takes on a background, so that every object stands out
CLASHES = {
    "grass": {"green"},
    "sky": {"blue", "white"},
    "sand": {"yellow", "orange"},
    "brick": {"red", "brown", "orange"},
}
EDIT_KINDS = ("colour", "shape", "pattern", "removal")
# each background's base colours (RGB) before its texture: grass; sky top and bottom; sand; brick and mortar
BACKGROUND_COLOURS = {
    "grass": ((70, 150, 55),),
    "sky": ((80, 140, 230), (170, 210, 250)),
    "sand": ((225, 195, 140),),
    "brick": ((170, 80, 60), (205, 200, 190)),
}


def pattern_colour(colour: str) -> str:
    "The colour of the stripes or dots on an object of `colour`: white, or black on a white object."
    return "black" if colour == "white" else "white"


@dataclass(frozen=True)
class Thing:
    "One object: what it is and where. `size` is the side of its bounding box in pixels."
    shape: str
    colour: str
    pattern: str
    cx: float
    cy: float
    size: float

    @property
    def name(self) -> str:
        if self.shape == "horse" and self.colour == "black" and self.pattern == "striped":
            return "zebra"
        pattern = "" if self.pattern == "plain" else f"{self.pattern} "
        return f"{self.colour} {pattern}{self.shape}"

    @property
    def noun(self) -> str:
        "The word of its caption that names the object itself: its shape, or 'zebra'."
        return self.name.split()[-1]

    @property
    def phrase(self) -> str:
        return f"an {self.name}" if self.name[0] in "aeiou" else f"a {self.name}"


@dataclass(frozen=True)
class Scene:
    background: str
    things: tuple[Thing, ...] = ()
    texture_seed: int = 0
    size: int = IMAGE_SIZE

    @property
    def caption(self) -> str:
        if not self.things:
            return self.background
        return " and ".join(t.phrase for t in self.things) + f" on {self.background}"


# ----------------------------------------------------------------------------- backgrounds
def _noise(rng, size, scale):
    "Smooth value noise in [-1, 1]: random values on a coarse grid, upsampled bilinearly."
    coarse = rng.uniform(-1, 1, (scale, scale)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR)
    return np.asarray(img)


def background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    "A textured background as float32 RGB in [0, 255], shape (size, size, 3)."
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    fine = rng.normal(0, 1, (size, size)).astype(np.float32)
    base = [np.array(c, np.float32) for c in BACKGROUND_COLOURS.get(name, ())]
    if name == "grass":
        blades = _noise(rng, size, size // 2)
        shade = 18 * fine + 14 * blades + 20 * _noise(rng, size, 4)
        img = base[0] + shade[..., None] * np.array([0.5, 1.0, 0.4], np.float32)
    elif name == "sky":
        top, bottom = base
        img = top + (bottom - top) * y[..., None]
        clouds = np.clip(_noise(rng, size, 5) * 2 - 0.6, 0, 1)
        img = img + (250 - img) * clouds[..., None] + 3 * fine[..., None]
    elif name == "sand":
        waves = np.sin(2 * np.pi * (6 * y + 0.8 * _noise(rng, size, 3)))
        img = base[0] + (10 * waves + 9 * fine)[..., None]
    elif name == "brick":
        rows, cols = 6, 4
        row = np.floor(y * rows)
        shifted = x * cols + 0.5 * (row % 2)
        mortar = (np.abs(y * rows - np.round(y * rows)) < 0.08) | (np.abs(shifted - np.round(shifted)) < 0.06)
        img = np.where(mortar[..., None], base[1], base[0] + 12 * fine[..., None])
    else:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {name!r}")
    return np.clip(img, 0, 255).astype(np.float32)


# ----------------------------------------------------------------------------- objects
def _polygon_mask(size, points):
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in points], fill=255)
    return np.asarray(img) > 0


HORSE_LEGS, LEG_WIDTH = (3.2, 5.2, 9.6, 11.4), 1.3  # each leg's left edge and its width, in the 16-unit box
HORSE_HEAD = ((11.5, 1.5), (15.5, 3.5), (15, 5), (12.5, 4))  # the head's corners in the 16-unit box
HORSE_BODY = (2.5, 5, 12.5, 10.5)  # the body ellipse's bounding box (left, top, right, bottom) in the 16-unit box
LEGS_FROM = 10.8  # in the horse's 16-unit box, below the body (to 10.5) and the tail (to 10.8) only legs remain


def _horse_mask(size, cx, cy, s):
    "A side-view four-legged animal: body, neck, head, four legs, tail. Facing right."
    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    u = s / 16  # one unit: the silhouette is drawn in a 16 x 16 box centred on (cx, cy)
    X = lambda v: cx + (v - 8) * u  # noqa: E731
    Y = lambda v: cy + (v - 8) * u  # noqa: E731
    left, top, right, bottom = HORSE_BODY
    d.ellipse([X(left), Y(top), X(right), Y(bottom)], fill=255)  # body
    d.polygon([(X(10), Y(6.5)), (X(12), Y(2)), (X(14), Y(2.5)), (X(12.5), Y(7.5))], fill=255)  # neck
    d.polygon([(X(v), Y(w)) for v, w in HORSE_HEAD], fill=255)  # head
    for left in HORSE_LEGS:  # legs
        d.rectangle([X(left), Y(9), X(left + LEG_WIDTH), Y(15.5)], fill=255)
    d.polygon([(X(3), Y(6)), (X(0.8), Y(10.5)), (X(1.8), Y(10.8)), (X(3.5), Y(7.5))], fill=255)  # tail
    return np.asarray(img) > 0


def horse_legs_mask(thing: Thing, size: int) -> np.ndarray:
    "The part of a horse's four legs below its body and tail (the same 16 x 16 box as `_horse_mask`): (size, size) bool."
    if thing.shape != "horse":
        raise ValueError(f"thing must be a horse, got a {thing.shape}")
    u = thing.size / 16
    below_body = np.mgrid[0:size, 0:size][0] + 0.5 > thing.cy + (LEGS_FROM - 8) * u  # (size, size)
    return shape_mask(thing, size) & below_body


def horse_part_masks(thing: Thing, size: int) -> dict[str, np.ndarray]:
    """A horse's parts in the same 16 x 16 box as `_horse_mask`, each (size, size) bool: "leg 1" to
    "leg 4" (left to right, below the body and tail), "head", and "body" (the ellipse)."""
    if thing.shape != "horse":
        raise ValueError(f"thing must be a horse, got a {thing.shape}")
    u = thing.size / 16
    X = lambda v: thing.cx + (v - 8) * u  # noqa: E731
    Y = lambda v: thing.cy + (v - 8) * u  # noqa: E731
    silhouette, legs = shape_mask(thing, size), horse_legs_mask(thing, size)
    parts = {}
    for i, left in enumerate(HORSE_LEGS, start=1):
        parts[f"leg {i}"] = legs & _polygon_mask(size, [(X(left), Y(9)), (X(left + LEG_WIDTH), Y(9)),
                                                        (X(left + LEG_WIDTH), Y(15.5)), (X(left), Y(15.5))])
    parts["head"] = silhouette & _polygon_mask(size, [(X(v), Y(w)) for v, w in HORSE_HEAD])
    img = Image.new("L", (size, size), 0)
    left, top, right, bottom = HORSE_BODY
    ImageDraw.Draw(img).ellipse([X(left), Y(top), X(right), Y(bottom)], fill=255)
    parts["body"] = np.asarray(img) > 0
    return parts


def shape_mask(thing: Thing, size: int) -> np.ndarray:
    "The exact boolean mask of one object, shape (size, size)."
    cx, cy, r = thing.cx, thing.cy, thing.size / 2
    if thing.shape == "circle":
        y, x = np.mgrid[0:size, 0:size] + 0.5
        return (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    if thing.shape == "square":
        s = r * 0.9
        return _polygon_mask(size, [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)])
    if thing.shape == "triangle":
        return _polygon_mask(size, [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)])
    if thing.shape == "diamond":
        return _polygon_mask(size, [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)])
    if thing.shape == "horse":
        return _horse_mask(size, cx, cy, thing.size)
    raise ValueError(f"shape must be one of {SHAPES}, got {thing.shape!r}")


def pattern_period(thing: Thing) -> float:
    "The period in pixels of the object's stripes (a fifth of its size) or dots (a quarter), at least 4 and 5 px."
    return max(thing.size / 5, 4.0) if thing.pattern == "striped" else max(thing.size / 4, 5.0)


def paint(thing: Thing, size: int, period_scale: float = 1.0) -> np.ndarray:
    """The object's colours over the whole canvas (its mask picks them), float32 (size, size, 3);
    its stripes or dots drawn at `period_scale` times their period (1: the world's own)."""
    colour = np.array(COLOURS[thing.colour], np.float32)
    second = np.array(COLOURS[pattern_colour(thing.colour)], np.float32)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    if thing.pattern == "plain":
        use_second = np.zeros((size, size), bool)
    elif thing.pattern == "striped":  # vertical stripes, period about a fifth of the object
        period = pattern_period(thing) * period_scale
        use_second = ((x - thing.cx) / period) % 1 < 0.5
    elif thing.pattern == "dotted":
        period = pattern_period(thing) * period_scale
        fx, fy = ((x - thing.cx) / period) % 1 - 0.5, ((y - thing.cy) / period) % 1 - 0.5
        use_second = fx**2 + fy**2 < 0.22**2 * 2
    else:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {thing.pattern!r}")
    return np.where(use_second[..., None], second, colour)


def render(scene: Scene) -> tuple[Image.Image, list[np.ndarray]]:
    "The scene as an RGB PIL image, and one exact boolean mask (H, W) per object."
    rng = np.random.default_rng(scene.texture_seed)
    img = background(scene.background, scene.size, rng)
    masks = []
    for thing in scene.things:
        m = shape_mask(thing, scene.size)
        img = np.where(m[..., None], paint(thing, scene.size), img)
        masks.append(m)
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8)), masks


# ----------------------------------------------------------------------------- sampling
def _colour_for(rng, bg, exclude=()):
    choices = [c for c in COLOURS if c not in CLASHES[bg] and c not in exclude]
    return str(rng.choice(choices))


def _random_thing(rng, bg, size, lo, hi, avoid=None):
    for _ in range(50):
        s = float(rng.uniform(lo, hi))
        cx, cy = (float(rng.uniform(s / 2 + 1, size - s / 2 - 1)) for _ in range(2))
        if avoid is None or abs(cx - avoid.cx) > (s + avoid.size) / 2 + 1 or abs(cy - avoid.cy) > (s + avoid.size) / 2 + 1:
            break
    else:
        return None
    shape = str(rng.choice(SHAPES, p=[0.18, 0.18, 0.18, 0.18, 0.28]))
    pattern = str(rng.choice(PATTERNS, p=[0.5, 0.3, 0.2]))
    return Thing(shape, _colour_for(rng, bg), pattern, cx, cy, s)


def random_scene(seed: int, size: int = IMAGE_SIZE, p_two: float = 0.25, p_empty: float = 0.05) -> Scene:
    "A random scene, the same for the same seed: one object (sometimes two, sometimes none)."
    rng = np.random.default_rng([seed, SCENE_SALT])
    bg = str(rng.choice(BACKGROUNDS))
    k = rng.random()
    if k < p_empty:
        things = ()
    elif k < p_empty + p_two:
        a = _random_thing(rng, bg, size, 0.30 * size, 0.45 * size)
        b = _random_thing(rng, bg, size, 0.30 * size, 0.45 * size, avoid=a)
        things = (a,) if b is None else (a, b)
    else:
        things = (_random_thing(rng, bg, size, 0.40 * size, 0.70 * size),)
    return Scene(bg, things, texture_seed=int(rng.integers(2**31)), size=size)


def horse_scene(seed: int = 0, size: int = IMAGE_SIZE, colour: str = "brown") -> Scene:
    "The demo scene: one large plain horse on grass."
    rng = np.random.default_rng([seed, HORSE_SALT])
    s = 0.62 * size
    c = size / 2 + rng.uniform(-0.06, 0.06, 2) * size
    return Scene("grass", (Thing("horse", colour, "plain", float(c[0]), float(c[1]), float(s)),), int(rng.integers(2**31)), size)


# ----------------------------------------------------------------------------- edits
@dataclass(frozen=True)
class Edit:
    "An edit of one object of a scene, with the region that truly has to change."
    kind: str
    source: Scene
    target: Scene
    index: int  # which object changes

    @property
    def source_prompt(self) -> str:
        return self.source.caption

    @property
    def target_prompt(self) -> str:
        return self.target.caption

    def true_mask(self) -> np.ndarray:
        "Union of the object's masks before and after the edit, bool (H, W)."
        _, src = render(self.source)
        m = src[self.index].copy()
        if self.kind != "removal":
            _, tgt = render(self.target)
            m |= tgt[self.index]
        return m


def make_edit(scene: Scene, kind: str, seed: int = 0, index: int = 0) -> Edit:
    """Change one attribute of object `index`: its colour, shape or pattern, or remove it.

    The horse keeps its world's rules: a black striped horse is a zebra, so the
    "pattern" edit of a horse is horse <-> zebra.
    """
    if kind not in EDIT_KINDS:
        raise ValueError(f"kind must be one of {EDIT_KINDS}, got {kind!r}")
    if not scene.things:
        raise ValueError("the scene has no object to edit")
    rng = np.random.default_rng([seed, EDIT_SALT])
    thing = scene.things[index]
    if kind == "colour":
        new = replace(thing, colour=_colour_for(rng, scene.background, exclude={thing.colour}))
    elif kind == "shape":
        new = replace(thing, shape=str(rng.choice([s for s in SHAPES if s != thing.shape])))
    elif kind == "pattern" and thing.shape == "horse":
        new = replace(thing, colour="black", pattern="striped") if thing.name != "zebra" else replace(thing, colour="brown", pattern="plain")
    elif kind == "pattern":
        new = replace(thing, pattern=str(rng.choice([p for p in PATTERNS if p != thing.pattern])))
    else:
        things = tuple(t for i, t in enumerate(scene.things) if i != index)
        return Edit(kind, scene, replace(scene, things=things), index)
    if new.colour in CLASHES[scene.background]:
        new = replace(new, colour=_colour_for(rng, scene.background))
    things = tuple(new if i == index else t for i, t in enumerate(scene.things))
    return Edit(kind, scene, replace(scene, things=things), index)
