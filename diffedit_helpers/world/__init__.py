"""The shapes world and what is built on it: the bundled model's laboratory.

- `shapes`: procedural scenes with exact object masks, captions, edits, the held-out seed split;
- `tiny_model`: the bundled architecture's configs and `build_components`;
- `train`: trains the bundled model on the shapes world (`python -m diffedit_helpers.world.train`);
- `metrics`: mask IoU, background PSNR and the edit-success judges;
- `calibration`: the judges' true and wrong edits and their pass rates (`python -m diffedit_helpers.world.calibration`);
- `evaluate`: held-out edits run through `diffedit` and measured (`python -m diffedit_helpers.world.evaluate`).

The teaching modules one level up never import from here; only the CLI's demo does.
"""
