"""Write the pictures in images/ that the notebooks use.

Shapes-world scenes (64 x 64, for the bundled model) come from `diffedit_helpers.world.shapes` and are
the same on every run. The photos (512 x 512, for Stable Diffusion) are cut from the sample data
that ships inside the scikit-image wheel; only pictures released to the public domain or under
CC0 are taken (see images/README.md for each one's author and licence).

Usage:
    python tools/make_images.py                      # the shapes-world scenes only
    pip download --no-deps scikit-image -d /tmp/skimg && unzip -q /tmp/skimg/*.whl 'skimage/data/*' -d /tmp/skimg
    python tools/make_images.py --skimage-data /tmp/skimg/skimage/data
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image

from diffedit_helpers.world.shapes import horse_scene, random_scene, render

OUT = Path(__file__).resolve().parent.parent / "images"
PHOTO_SIZE = 512
MAX_BYTES = 300_000  # a PNG larger than this is stored as a JPEG instead

# file name -> the scene; every word of the name is in the scene's caption
SCENES = {
    "horse_on_grass": horse_scene,  # "a brown horse on grass"
    "red_square_on_sand": lambda: random_scene(2),  # "a red square on sand"
    "purple_circle_on_grass": lambda: random_scene(28),  # "a purple circle on grass"
    "pink_diamond_on_brick": lambda: random_scene(36),  # "a pink diamond on brick"
}

# file name -> file in skimage/data (public domain or CC0 only)
PHOTOS = {
    "cat": "chelsea.png",  # CC0, Stefan van der Walt
    "coffee": "coffee.png",  # CC0, Rachel Michetti
    "astronaut": "astronaut.png",  # public domain, NASA
}


def write_scenes(out: Path) -> list[Path]:
    "Render each scene and save it as a PNG; check the file name matches the caption."
    paths = []
    for name, make in SCENES.items():
        scene = make()
        if not set(name.split("_")) <= set(scene.caption.split()):
            raise ValueError(f"scene {name!r} shows {scene.caption!r}: name the file by what it shows")
        image, _ = render(scene)
        path = out / f"{name}.png"
        image.save(path, optimize=True)
        paths.append(path)
    return paths


def centre_square(image: Image.Image, size: int) -> Image.Image:
    "The largest centred square of `image`, resized to size x size (Lanczos)."
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square if side == size else square.resize((size, size), Image.LANCZOS)


def save_small(image: Image.Image, stem: Path) -> Path:
    "Save as PNG if that stays under MAX_BYTES, else as a quality-90 JPEG."
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    if buf.tell() <= MAX_BYTES:
        path = stem.with_suffix(".png")
        path.write_bytes(buf.getvalue())
    else:
        path = stem.with_suffix(".jpg")
        image.save(path, format="JPEG", quality=90, optimize=True)
    for other in (".png", ".jpg"):  # never leave both versions behind
        if stem.with_suffix(other) != path and stem.with_suffix(other).exists():
            stem.with_suffix(other).unlink()
    return path


def write_photos(data: Path, out: Path) -> list[Path]:
    "Crop and resize the photos from an unpacked skimage/data folder."
    paths = []
    for name, file in PHOTOS.items():
        src = data / file
        if not src.exists():
            raise FileNotFoundError(f"--skimage-data: {str(src)!r} not found (unzip the scikit-image wheel's skimage/data/)")
        with Image.open(src) as im:
            photo = centre_square(im.convert("RGB"), PHOTO_SIZE)
        paths.append(save_small(photo, out / name))
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skimage-data", type=Path, help="an unpacked skimage/data folder: also write the photos")
    p.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = write_scenes(args.out)
    if args.skimage_data is not None:
        paths += write_photos(args.skimage_data, args.out)
    for path in paths:
        print(f"{path.name}: {Image.open(path).size[0]}x{Image.open(path).size[1]}, {path.stat().st_size / 1000:.0f} kB")


if __name__ == "__main__":
    main()
