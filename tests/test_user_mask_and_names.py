"""A mask the caller brings, an empty source prompt, one vocabulary (diffusers' names are the
pipeline's), and tensor and URL inputs, on the tiny random components (fast)."""

import http.server
import inspect
import threading
import warnings
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from test_bad_input import no_model_work

from diffedit_helpers import DiffEditConfig, ImageInputError, diffedit, difference_map
from diffedit_helpers.cli import main
from diffedit_helpers.config import ConfigError
from diffedit_helpers.edit import encode_inputs
from diffedit_helpers.world.shapes import horse_scene, render

FAST = DiffEditConfig(steps=6, n_noise=2, threshold=0.3)
SRC, TGT = "a brown horse on grass", "a zebra on grass"


@pytest.fixture(scope="module")
def image():
    return render(horse_scene())[0]  # 64 x 64 RGB


def box_mask(shape=(64, 64), box=(slice(12, 40), slice(20, 50))) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[box] = True
    return mask


def edit(model, image, src=SRC, tgt=TGT, config=FAST, seed=0, **kw):
    return diffedit(model, image, src, tgt, config, generator=torch.Generator().manual_seed(seed), progress=False, **kw)


def same_picture(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- your own mask
@pytest.mark.parametrize("feather", [0, 5, 9])
def test_outside_the_callers_mask_every_pixel_is_the_inputs(tiny_model, image, feather):
    mask = box_mask()
    r = edit(tiny_model, image, config=FAST.replace(composite=True, feather=feather), mask=mask)
    out, src = np.asarray(r.image), np.asarray(image)
    assert np.array_equal(out[~mask], src[~mask])  # bit for bit, whatever the feather
    assert not np.array_equal(out[mask], src[mask])  # and the inside was edited
    assert np.array_equal(r.mask, mask) and r.raw_map is None
    assert np.array_equal(r.difference_map, mask.astype(np.float32))


def test_every_form_of_mask_gives_the_same_edit(tiny_model, image, tmp_path):
    mask = box_mask()
    grey = np.where(mask, 0.8, 0.3).astype(np.float32)  # binarised at 0.5
    path = tmp_path / "mask.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    forms = [grey, mask.astype(np.float64), mask.astype(np.int64), Image.open(path), str(path), path,
             Image.fromarray(mask).convert("1"), torch.from_numpy(grey)]
    first = edit(tiny_model, image, mask=mask)
    for form in forms:
        r = edit(tiny_model, image, mask=form)
        assert np.array_equal(r.mask, mask), type(form)
        assert same_picture(r.image, first.image), type(form)


def test_the_result_hands_back_a_mask_image_and_the_mask_step_runs_no_model(tiny_model, image):
    calls, stages = [], []
    current = {}
    handle = tiny_model.unet.register_forward_pre_hook(lambda m, a: calls.append(current.get("stage")))
    try:
        r = edit(tiny_model, image, mask=box_mask(),
                 on_stage=lambda s, e: (stages.append((s, e)), current.update(stage=s if e == "start" else None)))
    finally:
        handle.remove()
    assert "mask" not in calls and "denoising" in calls  # the mask stage ran no UNet; the edit did
    assert ("mask", "start") in stages and ("mask", "end") in stages  # but it is still named
    m = r.mask_image
    assert m.mode == "L" and m.size == image.size
    assert set(np.unique(np.asarray(m))) <= {0, 255} and np.array_equal(np.asarray(m) == 255, r.mask)
    computed = edit(tiny_model, image)  # any edit has one
    assert np.array_equal(np.asarray(computed.mask_image) == 255, computed.mask)


@pytest.mark.parametrize("bad, error, match", [
    (np.zeros((32, 64), bool), ValueError, r"^mask is 64x32, but it must be \(H, W\) at the image's size 64x64"),
    (np.zeros((64, 64, 3), bool), ValueError, r"^mask is shape \(64, 64, 3\), but it must be \(H, W\)"),
    (np.full((64, 64), 1.5, np.float32), ValueError, r"^mask: float values must be in \[0, 1\], got \[1.5, 1.5\]"),
    (np.full((64, 64), np.nan, np.float32), ValueError, r"^mask: float values must be in \[0, 1\].*NaN or inf"),
    (np.full((64, 64), 255, np.uint8), ValueError, r"^mask: integer arrays must hold only 0 and 1"),
    ([[0, 1]], TypeError, r"^mask must be a bool or float array, a PIL 'L' image or a path, got list"),
    ("no/such/mask.png", ValueError, r"^mask: file 'no/such/mask.png' does not exist"),
])
def test_a_bad_mask_is_refused_before_any_model_work(tiny_model, image, bad, error, match):
    with no_model_work(tiny_model), pytest.raises(error, match=match):
        edit(tiny_model, image, mask=bad)


def test_a_colour_mask_is_converted_with_a_warning_and_an_empty_one_changes_nothing(tiny_model, image):
    rgb = Image.fromarray(np.dstack([box_mask().astype(np.uint8) * 255] * 3))
    with pytest.warns(UserWarning, match=r"mask: RGB image converted to grey \(L\)"):
        r = edit(tiny_model, image, mask=rgb)
    assert np.array_equal(r.mask, box_mask())
    with pytest.warns(UserWarning, match="mask is empty"):
        r = edit(tiny_model, image, mask=np.zeros((64, 64), bool))
    assert same_picture(r.image, image)


def test_identical_prompts_with_a_mask_still_edit_inside_it(tiny_model, image):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "identical prompts" warning: the mask is given
        r = edit(tiny_model, image, SRC, SRC, mask=box_mask())
    assert not same_picture(r.image, image)


def test_a_batch_takes_one_mask_per_image_or_one_for_all(tiny_model, image):
    other = box_mask(box=(slice(0, 20), slice(0, 20)))
    batch = edit(tiny_model, [image, image], mask=[box_mask(), other])
    assert np.array_equal(batch[0].mask, box_mask()) and np.array_equal(batch[1].mask, other)
    assert same_picture(batch[1].image, edit(tiny_model, image, mask=other).image)
    shared = edit(tiny_model, [image, image], mask=other)
    assert all(np.array_equal(r.mask, other) for r in shared)
    with no_model_work(tiny_model), pytest.raises(ValueError, match=r"^mask lists must have one entry per image \(2\)"):
        edit(tiny_model, [image, image], mask=[other])


def test_the_explorers_mask_goes_straight_back_into_diffedit(tiny_model, image):
    pytest.importorskip("ipywidgets")
    from diffedit_helpers.widgets import mask_explorer

    first = edit(tiny_model, image)
    explorer = mask_explorer(first.input_image, first.difference_map, threshold=0.5)
    explorer.threshold.value = 0.2  # tuned by hand
    r = edit(tiny_model, image, mask=explorer.mask)
    assert np.array_equal(r.mask, explorer.mask) and not np.array_equal(r.mask, first.mask)


# ----------------------------------------------------------------------------- an empty source prompt
@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_source_takes_the_map_against_the_unconditional_prediction(tiny_model, image, empty):
    x0, src, tgt, unc = encode_inputs(tiny_model, image, empty, TGT)
    if empty == "":
        assert torch.equal(src, unc)  # the source embedding is the unconditional one
    r = edit(tiny_model, image, empty, TGT)
    assert r.raw_map.max() > 0.5 and r.mask.any()  # a real map, not the zero map of identical prompts
    alone = difference_map(tiny_model, image, empty, TGT, FAST, torch.Generator().manual_seed(0))
    assert np.array_equal(alone, r.difference_map)
    with no_model_work(tiny_model), pytest.raises(ValueError, match="^target_prompt must be a non-empty string$"):
        edit(tiny_model, image, empty, empty)


# ----------------------------------------------------------------------------- diffusers' names
def test_diffedit_speaks_one_vocabulary_and_diffusers_names_are_the_pipelines(tiny_model, image):
    params = inspect.signature(diffedit).parameters
    assert len(params) <= 10
    theirs = {"num_inference_steps", "guidance_scale", "strength", "output_type", "callback_on_step_end", "negative_prompt"}
    assert not theirs & set(params) and not {"fit", "max_side"} & set(params)  # the image is fitted at the door (inputs)
    with no_model_work(tiny_model), pytest.raises(TypeError, match="unexpected keyword argument 'num_inference_steps'"):
        edit(tiny_model, image, num_inference_steps=8)
    r = edit(tiny_model, image)
    assert r.images == [r.image]  # the result still hands diffusers' `.images` list back


@pytest.mark.parametrize("steps, strength", [(50, 0.8), (50, 0.75), (30, 0.7), (10, 0.3), (50, 1.0), (100, 0.71)])
def test_strength_runs_the_last_steps_as_diffusers_img2img_does(tiny_model, image, steps, strength):
    from diffedit_helpers.config import with_diffusers_names

    config = with_diffusers_names(DiffEditConfig(), num_inference_steps=steps, strength=strength)
    assert config.steps - config.start_index == int(steps * strength)  # diffusers' init_timestep
    assert abs(config.edit_start - (1 - strength)) < 1 / steps


@pytest.mark.parametrize("kw, config, match", [
    (dict(num_inference_steps=30), FAST.replace(steps=8), r"^num_inference_steps=30 and config.steps=8 disagree"),
    (dict(guidance_scale=3.0), FAST.replace(guidance=9.0), r"^guidance_scale=3.0 and config.guidance=9.0 disagree"),
    (dict(strength=0.5), FAST.replace(edit_start=0.4), r"^strength=0.5 and config.edit_start=0.4 disagree"),
    (dict(strength=0.01), None, r"^strength: edit_start must be in \[0, 1\)"),  # 50 * 0.01 rounds to no step at all
    (dict(num_inference_steps=0), None, r"^num_inference_steps: steps must be an integer >= 1, got 0"),
    (dict(guidance_scale=-1.0), None, r"^guidance_scale: guidance must be >= 0"),
    (dict(strength=0.0), FAST, r"^strength must be in \(0, 1\]"),
    (dict(strength=1.5), FAST, r"^strength must be in \(0, 1\]"),
])
def test_diffusers_names_are_checked_and_must_agree_with_the_config(kw, config, match):
    from diffedit_helpers.config import with_diffusers_names  # the batch's door for a job's diffusers names

    with pytest.raises(ConfigError, match=match) as err:
        with_diffusers_names(config or DiffEditConfig(), **kw)
    assert err.value.field == next(iter(kw))


def test_a_negative_prompt_steers_the_denoising_but_not_the_mask(tiny_model, image):
    plain = edit(tiny_model, image)
    negative = edit(tiny_model, image, config=FAST.replace(negative_prompt="a red circle"))
    assert np.array_equal(plain.mask, negative.mask) and np.array_equal(plain.difference_map, negative.difference_map)
    assert not same_picture(plain.image, negative.image)
    assert FAST.negative_prompt == ""  # the empty prompt: the usual unconditional
    with no_model_work(tiny_model), pytest.raises(ConfigError, match="^negative_prompt must be a string, got int"):
        edit(tiny_model, image, config=FAST.replace(negative_prompt=3))


# ----------------------------------------------------------------------------- tensors and URLs
def test_a_tensor_image_is_taken_as_diffusers_takes_it(tiny_model, image):
    arr = np.array(image)  # a writable copy, for torch.from_numpy
    tensor = torch.from_numpy(arr).permute(2, 0, 1).float() / 255  # (3, H, W) in [0, 1]
    expected = edit(tiny_model, image)
    for form in (tensor, tensor[None], torch.from_numpy(arr).permute(2, 0, 1).contiguous()):
        r = edit(tiny_model, form)
        assert np.array_equal(np.asarray(r.input_image), arr) and same_picture(r.image, expected.image)
    with no_model_work(tiny_model), pytest.raises(ImageInputError, match=r"pass a list of images for a batch"):
        edit(tiny_model, torch.stack([tensor, tensor]))
    with pytest.raises(ImageInputError, match=r"^image: float arrays must hold values in \[0, 1\], got \[-0"):
        edit(tiny_model, tensor * 2 - 1)


@pytest.fixture
def local_server(tmp_path):
    "A static file server on 127.0.0.1 (a free port) serving tmp_path, in a thread."
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_image_url_is_fetched_and_edited_like_the_file(tiny_model, image, tmp_path, local_server):
    image.save(tmp_path / "horse.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    r = edit(tiny_model, f"{local_server}/horse.png")
    assert same_picture(r.input_image, image) and same_picture(r.image, edit(tiny_model, tmp_path / "horse.png").image)
    with no_model_work(tiny_model):
        with pytest.raises(ImageInputError, match=r"^image: 'http://127.0.0.1:\d+/missing.png' answered HTTP 404"):
            edit(tiny_model, f"{local_server}/missing.png")
        with pytest.raises(ImageInputError, match=r"/notes.txt' did not serve an image PIL can read"):
            edit(tiny_model, f"{local_server}/notes.txt")


def test_an_unreachable_url_or_another_scheme_is_a_clear_error(tiny_model):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with no_model_work(tiny_model):
        with pytest.raises(ImageInputError, match=rf"^image: could not fetch 'http://127.0.0.1:{port}/a.png' \(.*\); offline\?"):
            edit(tiny_model, f"http://127.0.0.1:{port}/a.png")
        with pytest.raises(ImageInputError, match=r"^image: only http:// and https:// URLs are accepted, got ftp://"):
            edit(tiny_model, "ftp://example.org/a.png")


# ----------------------------------------------------------------------------- the command line
@pytest.fixture
def cli_tiny(monkeypatch, tiny_model):
    import diffedit_helpers.models as models

    monkeypatch.setattr(models, "load_model", lambda name, device=None, dtype=None: tiny_model)


def _cli(image_path, out, *extra):
    return ["edit", str(image_path), "--source", SRC, "--target", TGT, "--out", str(out), "--steps", "6",
            "--n-noise", "2", "--quiet", *extra]


def test_cli_mask_edits_inside_the_given_mask(tmp_path, image, cli_tiny):
    image.save(tmp_path / "in.png")
    Image.fromarray(box_mask().astype(np.uint8) * 255).save(tmp_path / "m.png")
    assert main(_cli(tmp_path / "in.png", tmp_path / "out", "--mask", str(tmp_path / "m.png"))) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "mask.png")) == 255, box_mask())
    edited = np.asarray(Image.open(tmp_path / "out" / "edited.png"))
    assert np.array_equal(edited[~box_mask()], np.asarray(image)[~box_mask()])


def test_cli_mask_only_stops_after_step_one(tmp_path, image, cli_tiny, tiny_model, capsys):
    image.save(tmp_path / "in.png")
    calls = []
    handle = tiny_model.unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        assert main(_cli(tmp_path / "in.png", tmp_path / "out", "--mask-only")) == 0
    finally:
        handle.remove()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["difference_map.png", "mask.png"]
    assert calls == [2 * 2]  # one batched call: 2 noise draws x 2 prompts, no denoising
    mask = np.asarray(Image.open(tmp_path / "out" / "mask.png"))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert "wrote mask.png, difference_map.png" in capsys.readouterr().out
    assert main(_cli(tmp_path / "in.png", tmp_path / "o2", "--mask-only", "--mask", str(tmp_path / "out" / "mask.png"))) == 2
    assert "--mask and --mask-only exclude each other" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_cli_accepts_an_empty_source(tmp_path, image, cli_tiny):
    image.save(tmp_path / "in.png")
    args = _cli(tmp_path / "in.png", tmp_path / "out")
    args[args.index("--source") + 1] = ""
    assert main(args) == 0 and (tmp_path / "out" / "edited.png").exists()
