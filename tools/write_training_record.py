"""Write diffedit_helpers/bundled/training.json: what the bundled model was trained on (its image
size and the words of its captions), for weights trained before `save_folder` wrote it itself.

    python tools/write_training_record.py [--scenes 16000]

The captions are those `make train` renders (scenes 0 .. scenes - 1); the weights are not touched.
"""

import argparse
import json

from diffedit_helpers.models import BUNDLED_PATH
from diffedit_helpers.world.shapes import IMAGE_SIZE, random_scene
from diffedit_helpers.world.train import TRAINING_FILE, training_record


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=16000, help="training scenes (train.py's --scenes, default 16000)")
    args = p.parse_args()
    captions = [random_scene(seed).caption for seed in range(args.scenes)]
    path = BUNDLED_PATH / TRAINING_FILE
    path.write_text(json.dumps(training_record(captions, IMAGE_SIZE), indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
