# make demo   set up (first time) and edit a shapes-world horse into a zebra with the bundled model
# make test   set up (first time) and run the tests and every notebook under nbval (also on an SD-shaped model)
# make bench  regenerate the README's Results section (benchmarks/; about an hour on one thread)
# make notebooks  re-execute every notebook in place on the bundled model (the outputs nbval checks)
# make train  retrain the bundled model from scratch in the background (CPU, about an hour; run again to resume)
# make train ARCH=32x32 CPU_HOURS=20 CHECKPOINTS=$HOME/diffedit-long-run THREADS=1
#             the long run: open-ended, one thread, checkpoints and snapshots kept outside the work tree; run again to resume
# make probe-snapshots CHECKPOINTS=... RUN_NAME=...   probe its new snapshots (benchmarks/results/training_curve.md)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# one thread: torch with two threads on a busy two-core machine can be 50x slower
RUN := OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PY)
# test worker processes, one thread each (pytest-xdist; a notebook's cells stay together on one: conftest.py)
WORKERS ?= 2

.PHONY: setup demo test test-compat test-colab-browser test-fast bench train probe-snapshots notebooks

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# keep an installed torch (Colab, Kaggle); on a bare CPU machine take the CPU wheel, never a CUDA build
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	@# then the rest; accelerate (the batch command) only now, so that it finds torch installed
	$(PY) -m pip install -q -r requirements-dev.txt -e ".[accelerate]"
	touch $@

demo: setup
	$(RUN) -m diffedit_helpers demo

test: setup
	$(RUN) -m pytest -q -p no:cacheprovider -n $(WORKERS) --dist loadscope tests notebooks --nbval --nbval-sanitize-with notebooks/sanitize.cfg
	$(MAKE) --no-print-directory test-compat

# the versions our users have: Colab's ipywidgets 7.7.1 for the widget tests, transformers at the floor
# requirements.txt allows for the bundled text encoder, and a dry-run install beside Colab's and Kaggle's pins
test-compat: setup
	rm -rf .compat
	$(PY) -m pip install -q --target .compat/ipywidgets7 --no-deps ipywidgets==7.7.1 widgetsnbextension==3.6.10 \
		jupyterlab_widgets==1.1.11 ipython_genutils==0.2.0
	PYTHONPATH=.compat/ipywidgets7 $(RUN) -m pytest -q -p no:cacheprovider tests/test_widgets.py
	$(PY) -m pip install -q --target .compat/transformers-floor --no-deps transformers==4.56.2 huggingface_hub==0.35.3 \
		tokenizers==0.22.1
	DIFFEDIT_TRANSFORMERS_FLOOR=.compat/transformers-floor DIFFEDIT_CHECK_INSTALL=1 $(RUN) -m pytest -q -p no:cacheprovider \
		tests/test_install.py

# the explorers in a browser as on Colab: JupyterLab 3 with jupyterlab_widgets 1.1 (the front end nearest to Colab's
# that runs here) in front of a kernel with Colab's ipywidgets 7.7.1 and ipykernel 6.17.1 (tests/lab_browser.py)
test-colab-browser: setup
	rm -rf .compat/lab3 .compat/colab-kernel
	$(PYTHON) -m venv .compat/lab3
	.compat/lab3/bin/python -m pip install -q jupyterlab==3.6.8 jupyterlab_widgets==1.1.11 jupyterlab_pygments==0.2.2
	$(PY) -m pip install -q --target .compat/colab-kernel --no-deps ipywidgets==7.7.1 widgetsnbextension==3.6.10 \
		jupyterlab_widgets==1.1.11 ipython_genutils==0.2.0 ipykernel==6.17.1
	DIFFEDIT_LAB_PYTHON=$(abspath .compat/lab3/bin/python) PYTHONPATH=.compat/colab-kernel PYDEVD_DISABLE_FILE_VALIDATION=1 \
		$(RUN) -m pytest -q -s -p no:cacheprovider -W ignore::DeprecationWarning tests/test_widget_browser.py

test-fast: setup
	$(RUN) -m pytest -q -p no:cacheprovider -n $(WORKERS) --dist loadscope tests -m "not slow"

# the stored outputs come from the bundled model on the CPU; widget state is not saved (an explorer's is megabytes of
# pictures, and GitHub shows the stills in images/widgets/ instead), which keeps every notebook under 1 MB
notebooks: setup
	for nb in notebooks/*.ipynb; do DIFFEDIT_MODEL=bundled $(RUN) -m nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=1200 --ExecutePreprocessor.store_widget_state=False $$nb || exit 1; done

bench: setup
	$(RUN) benchmarks/quality.py --all-kinds && $(RUN) benchmarks/speed.py --notebooks && $(RUN) benchmarks/update_readme.py

# training, as the bundled model was made: both cores of an idle machine (PASSIVE keeps idle threads from spinning).
# It runs in the background and checkpoints as it goes: `make train` again after a stop resumes it; `tail -f TRAIN_OUT.log`.
# A long run names its checkpoint folder (kept, with snapshots of the model to probe) and a CPU budget instead of steps.
TRAIN_OUT ?= runs/bundled-retrained
ARCH ?= 16x16
THREADS ?= 2
CHECKPOINTS ?=
CPU_HOURS ?=
RUN_NAME ?= long run $(ARCH)
train: setup
	@mkdir -p $(dir $(TRAIN_OUT))
	@if [ -d $(TRAIN_OUT)/unet ]; then echo "$(TRAIN_OUT) is finished; move it away or name another TRAIN_OUT"; exit 1; fi
	OMP_NUM_THREADS=$(THREADS) OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 nohup $(PY) -m diffedit_helpers.world.train \
		--out $(TRAIN_OUT) --arch $(ARCH) $(if $(CHECKPOINTS),--checkpoints $(CHECKPOINTS)) $(if $(CPU_HOURS),--cpu-hours $(CPU_HOURS)) \
		>> $(TRAIN_OUT).log 2>&1 &
	@echo "training in the background: tail -f $(TRAIN_OUT).log"

probe-snapshots: setup
	@if [ -z "$(CHECKPOINTS)" ]; then echo "name the run's checkpoint folder: make probe-snapshots CHECKPOINTS=..."; exit 1; fi
	$(RUN) benchmarks/probes.py snapshots --run "$(RUN_NAME)" --checkpoints $(CHECKPOINTS)
