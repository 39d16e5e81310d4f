"""Still pictures of the notebooks' explorers, for readers whose viewer cannot run widgets (GitHub
shows a widget as one line of text). Builds each explorer as its notebook does, on the bundled model,
sets its controls to what the notebook's text asks the reader to try, draws its controls (sliders,
checkbox, seed box, button, progress bar, as the browser lays them out) beside `widgets.still_picture`,
writes that to images/widgets/<name>.png and embeds it as the attachment of the notebook's markdown cell
that shows `attachment:<name>.png`. Rerun after a retrain:

    OMP_NUM_THREADS=1 python tools/make_widget_stills.py
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import ipywidgets as widgets
import torch
from PIL import Image, ImageDraw

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


ROW, WIDTH, TRACK = 26, 330, (120, 250)  # a control's row height, the panel's width, the x span of a slider's track


def draw_control(draw: ImageDraw.ImageDraw, y: int, control) -> None:
    "One control on the row at height y: its description, then the slider, box, button or bar with its value."
    grey, blue, mid = (170, 170, 170), (33, 150, 243), y + ROW // 2
    if isinstance(control, widgets.Button):
        draw.rounded_rectangle((4, y + 2, 90, y + ROW - 3), radius=3, fill=blue)
        draw.text((16, y + 7), f"> {control.description}", fill="white")
        return
    draw.text((4, y + 7), control.description, fill="black")
    x0, x1 = TRACK
    if isinstance(control, widgets.Checkbox):
        draw.rectangle((x0, mid - 6, x0 + 12, mid + 6), outline="black", fill=blue if control.value else "white")
        if control.value:
            draw.line((x0 + 2, mid, x0 + 5, mid + 4, x0 + 10, mid - 4), fill="white", width=2)
        return
    if isinstance(control, widgets.BoundedIntText):
        draw.rectangle((x0, y + 3, x0 + 60, y + ROW - 4), outline=grey, fill="white")
        draw.text((x0 + 4, y + 7), str(control.value), fill="black")
        return
    if isinstance(control, widgets.SelectionSlider):
        share, text = control.index / max(len(control.options) - 1, 1), control.label or str(control.value)
    else:  # a float slider or a progress bar: the value between min and max
        share = (control.value - control.min) / ((control.max - control.min) or 1)
        progress = isinstance(control, widgets.IntProgress)
        text = f"{control.value} / {control.max}" if progress else f"{control.value:g}"
    knob = x0 + share * (x1 - x0)
    if isinstance(control, widgets.IntProgress):
        draw.rectangle((x0, mid - 5, x1, mid + 5), fill=(230, 230, 230))
        draw.rectangle((x0, mid - 5, knob, mid + 5), fill=blue)
    else:
        draw.line((x0, mid, x1, mid), fill=grey, width=4)
        draw.line((x0, mid, knob, mid), fill=blue, width=4)
        draw.ellipse((knob - 6, mid - 6, knob + 6, mid + 6), fill="white", outline=grey)
    draw.text((x1 + 8, y + 7), text, fill="black")


def controls_of(explorer) -> list:
    "The explorer's controls, in the order its cell shows them."
    masks = getattr(explorer, "masks", explorer)
    found = [masks.threshold, masks.blur, masks.holes]
    if masks is not explorer:  # an edit explorer: its own controls too
        found += [explorer.seed, explorer.guidance, explorer.edit_start, explorer.button, explorer.progress]
    return found


def with_controls(explorer) -> Image.Image:
    "The explorer as a reader sees it: its controls on the left, `still_picture` (what it shows) on the right."
    controls, picture = controls_of(explorer), still_picture(explorer)
    out = Image.new("RGB", (WIDTH + picture.width, max(picture.height, ROW * len(controls) + 8)), "white")
    draw = ImageDraw.Draw(out)
    for k, control in enumerate(controls):
        draw_control(draw, 4 + k * ROW, control)
    out.paste(picture, (WIDTH, 0))
    return out


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
        with_controls(build(model)).save(buffer, format="PNG", optimize=True)
        png = buffer.getvalue()
        (root / "images" / "widgets" / name).write_bytes(png)
        embed(root / "notebooks" / notebook, name, png)
        print(f"{name}: {len(png)} bytes -> images/widgets/, {notebook}")


if __name__ == "__main__":
    main()
