# make demo   set up (first time) and edit a shapes-world horse into a zebra with the bundled model
# make test   set up (first time) and run the tests and every notebook under nbval
# make bench  regenerate the README's Results section (benchmarks/; about an hour on one thread)
# make train  retrain the bundled model from scratch (CPU, under an hour)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# one thread: torch with two threads on a busy two-core machine can be 50x slower
RUN := OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PY)

.PHONY: setup demo test test-fast bench train

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# keep an installed torch (Colab, Kaggle); on a bare CPU machine take the CPU wheel, never a CUDA build
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt -e .
	touch $@

demo: setup
	$(RUN) -m diffedit_helpers demo

test: setup
	$(RUN) -m pytest -q -p no:cacheprovider tests notebooks --nbval --nbval-sanitize-with notebooks/sanitize.cfg

test-fast: setup
	$(RUN) -m pytest -q -p no:cacheprovider tests -m "not slow"

bench: setup
	$(RUN) benchmarks/quality.py --all-kinds && $(RUN) benchmarks/speed.py --notebooks && $(RUN) benchmarks/update_readme.py

# training is the one job on an idle machine: both cores (PASSIVE keeps idle threads from spinning)
train: setup
	OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 $(PY) -m diffedit_helpers.world.train --out runs/bundled-retrained
