"""Still pictures of the notebooks' explorers, for readers whose viewer cannot run widgets (GitHub
shows a widget as one line of text). Builds each explorer as its notebook does, on the bundled model,
sets its controls to what the notebook's text asks the reader to try, renders `widgets.still_picture`,
writes it to images/widgets/<name>.png and embeds it as the attachment of the notebook's markdown cell
that shows `attachment:<name>.png`. Rerun after a retrain:

    OMP_NUM_THREADS=1 python tools/make_widget_stills.py
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import torch

from diffedit_helpers import DiffEditConfig, difference_map, load_model
from diffedit_helpers.generate import example_picture
from diffedit_helpers.paths import repo_root
from diffedit_helpers.widgets import edit_explorer, mask_explorer, still_picture
from diffedit_helpers.world.shapes import make_edit, random_scene, render

SEED = 0


def ring_explorer(model):
    "05 §8: the shape edit's raw map, holes left open, then the box ticked as the text asks."
    config = DiffEditConfig.for_model(model)
    edit = make_edit(random_scene(23), "shape", seed=1)
    image, _ = render(edit.source)
    ring = difference_map(model, image, edit.source_prompt, edit.target_prompt, config.replace(refine=False),
                          torch.Generator().manual_seed(SEED))
    explorer = mask_explorer(image, ring, threshold=config.threshold, blur=0, fill_holes=False)
    explorer.holes.value = True
    return explorer


def horse_explorer(model):
    "06 §7: the horse's explorer at its defaults, after one press of Edit."
    image, _, source, target = example_picture(model)
    explorer = edit_explorer(model, image, source, target, DiffEditConfig.for_model(model), seed=SEED)
    explorer.run()
    return explorer


STILLS = {  # attachment name -> (notebook, how to build the explorer)
    "mask_explorer.png": ("05_threshold_and_blur.ipynb", ring_explorer),
    "edit_explorer.png": ("06_masked_denoising.ipynb", horse_explorer),
}


def embed(notebook: Path, name: str, png: bytes):
    "Set the attachment `name` of every markdown cell of `notebook` that shows it."
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    cells = [c for c in nb["cells"] if c["cell_type"] == "markdown" and f"attachment:{name}" in "".join(c["source"])]
    if not cells:
        raise SystemExit(f"{notebook.name} has no markdown cell showing attachment:{name}")
    for cell in cells:
        cell["attachments"] = {name: {"image/png": base64.b64encode(png).decode("ascii")}}
    notebook.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main():
    root = repo_root()
    model = load_model("bundled")
    for name, (notebook, build) in STILLS.items():
        buffer = io.BytesIO()
        still_picture(build(model)).save(buffer, format="PNG", optimize=True)
        png = buffer.getvalue()
        (root / "images" / "widgets" / name).write_bytes(png)
        embed(root / "notebooks" / notebook, name, png)
        print(f"{name}: {len(png)} bytes -> images/widgets/, {notebook}")


if __name__ == "__main__":
    main()
