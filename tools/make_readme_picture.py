"""Make images/readme_demo.png: before | mask | after, by the bundled model with the demo's settings
(DEMO_GUIDANCE and DEMO_SEED in diffedit_helpers/cli.py).

    OMP_NUM_THREADS=1 python tools/make_readme_picture.py
"""

from pathlib import Path

import torch

from diffedit_helpers import DiffEditConfig, diffedit, load_model
from diffedit_helpers.cli import DEMO_GUIDANCE, DEMO_SEED
from diffedit_helpers.plotting import image_grid, overlay
from diffedit_helpers.world.shapes import HELD_OUT_SEED, horse_scene, make_edit, random_scene, render

CONFIG = DiffEditConfig(guidance=DEMO_GUIDANCE)  # the demo's settings: `make demo` repeats the top row
OUT = Path(__file__).resolve().parents[1] / "images" / "readme_demo.png"


def main():
    model = load_model("bundled")
    rows, titles = [], []
    edits = [make_edit(horse_scene(), "pattern"), make_edit(random_scene(HELD_OUT_SEED + 3), "colour")]
    for edit in edits:
        image = render(edit.source)[0]
        r = diffedit(model, image, edit.source_prompt, edit.target_prompt, CONFIG, generator=torch.Generator().manual_seed(DEMO_SEED),
                     progress=False)
        rows += [image, overlay(image, r.mask), r.image]
        titles += [edit.source_prompt, "mask", edit.target_prompt]
    image_grid(rows, titles, ncols=3, scale=4, title_height=14).save(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
