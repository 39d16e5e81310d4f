"""Shared fixtures: tiny random components (fast, any architecture choice) and the bundled model."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from diffedit_helpers.models import DiffEditModel, load_model
from diffedit_helpers.world.tiny_model import build_components


def tiny_model_from_components(prediction_type="epsilon", seed=0) -> DiffEditModel:
    "A DiffEditModel of randomly initialised tiny components (the bundled architecture)."
    c = build_components(seed=seed, prediction_type=prediction_type)
    for m in (c["vae"], c["text_encoder"], c["unet"]):
        m.requires_grad_(False).eval()
    return DiffEditModel(c["vae"], c["tokenizer"], c["text_encoder"], c["unet"], dict(c["scheduler"].config), name="tiny-random")


@pytest.fixture(scope="session")
def tiny_model():
    return tiny_model_from_components()


@pytest.fixture(scope="session")
def tiny_vpred_model():
    return tiny_model_from_components(prediction_type="v_prediction", seed=1)


@pytest.fixture(scope="session")
def bundled():
    return load_model("bundled")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture
def cli_with_tiny_model(monkeypatch, tiny_model):
    "The CLI loading the tiny random model (fast); `loads` counts the loads."
    import diffedit_helpers.models as models

    loads = []

    def fake_load(name, device=None, dtype=None):
        loads.append(name)
        return tiny_model

    monkeypatch.setattr(models, "load_model", fake_load)
    return loads
