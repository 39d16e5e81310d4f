"""Bad input, case by case: every refusal names the argument (and the accepted range) before any
model work; every conversion says so in a warning; nothing the caller passed is changed.

The model checks build their own broken folders in tmp_path; the rest uses the tiny random
components (`tiny_model` from conftest.py), so each test runs in well under a second.
"""

import contextlib
import copy
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from diffedit_helpers import (
    BUNDLED_PATH,
    DiffEditConfig,
    ImageInputError,
    ModelLoadError,
    decode_latents,
    diffedit,
    encode_prompts,
    load_model,
    make_mask,
    normalise_map,
    to_rgb,
    tokenize,
)
from diffedit_helpers.cli import main
from diffedit_helpers.images import MAX_PIXELS, fit_size
from diffedit_helpers.inputs import fit_inputs

FAST = DiffEditConfig(steps=4, n_noise=2, threshold=0.3, blur=3)
SRC, TGT = "a brown horse on grass", "a zebra on grass"


# ----------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def no_model_work(model):
    "Fail the test if the VAE, the text encoder or the UNet runs inside the block."

    def refuse(module, args):
        raise AssertionError(f"{type(module).__name__} ran before the bad argument was refused")

    handles = [m.register_forward_pre_hook(refuse) for m in (model.vae, model.text_encoder, model.unet)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def refused(model, error, match, image=None, src=SRC, tgt=TGT, config=FAST, **kw):
    "Run diffedit with one bad argument; it must raise `error` matching `match` before any model work."
    image = picture() if image is None else image
    with no_model_work(model), pytest.raises(error, match=match) as info:
        diffedit(model, image, src, tgt, config, generator=torch.Generator().manual_seed(0), progress=False, **kw)
    return str(info.value)


def picture(w=64, h=64, seed=0) -> np.ndarray:
    "A random (h, w, 3) uint8 picture."
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def edit(model, image, src=SRC, tgt=TGT, config=FAST, seed=0, **kw):
    return diffedit(model, image, src, tgt, config, generator=torch.Generator().manual_seed(seed), progress=False, **kw)


def min_side(model) -> int:
    "The smallest side the UNet takes: one latent cell per UNet down-sampling, in pixels."
    return model.vae_scale_factor * 2 ** (len(model.unet.config.block_out_channels) - 1)


def png_header_only(path, w, h):
    "A PNG whose header claims w x h RGB pixels but whose data is a few bytes: decoding it would fail."
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------------------- images
def test_rgba_transparent_pixels_are_composited_on_white_and_said_so(tiny_model):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere
    rgba[:32, ..., 3] = 255  # top half opaque, bottom half fully transparent
    with pytest.warns(UserWarning, match=r"image: transparent pixels composited on white \(alpha dropped\)"):
        r = edit(tiny_model, rgba)
    arr = np.asarray(r.input_image)
    assert r.input_image.mode == "RGB" and arr.shape == (64, 64, 3)
    assert (arr[:32] == (200, 0, 0)).all() and (arr[32:] == 255).all()


def test_opaque_rgba_converts_without_a_warning():
    import warnings

    rgba = np.dstack([picture(), np.full((64, 64), 255, np.uint8)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = to_rgb(rgba)
    assert np.array_equal(np.asarray(out), rgba[..., :3])


@pytest.mark.parametrize("form", ["array", "L", "LA-opaque"])
def test_grayscale_becomes_three_equal_channels(tiny_model, form):
    gray = picture()[..., 0]
    image = {"array": gray, "L": Image.fromarray(gray), "LA-opaque": Image.fromarray(gray).convert("LA")}[form]
    r = edit(tiny_model, image)
    arr = np.asarray(r.input_image)
    assert arr.shape == (64, 64, 3) and r.image.size == (64, 64)
    for c in range(3):
        assert np.array_equal(arr[..., c], gray)


def test_palette_images_keep_their_colours_and_transparent_ones_say_so():
    rgb = Image.fromarray(picture()).quantize(16)  # mode "P", 16 colours
    assert np.array_equal(np.asarray(to_rgb(rgb)), np.asarray(rgb.convert("RGB")))
    with_alpha = rgb.copy()
    with_alpha.info["transparency"] = 0  # palette entry 0 is transparent
    with pytest.warns(UserWarning, match="palette_image: transparent pixels composited"):
        out = to_rgb(with_alpha, "palette_image")
    holes = np.asarray(with_alpha) == 0
    assert holes.any() and (np.asarray(out)[holes] == 255).all()


def test_16_bit_images_are_scaled_to_8_bits_and_said_so(tmp_path):
    levels = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    path = tmp_path / "deep.png"
    Image.fromarray(levels).save(path)  # a 16-bit grayscale PNG ("I;16")
    with pytest.warns(UserWarning, match=r"image: I;16 image scaled to 8 bits"):
        from_file = np.asarray(to_rgb(path))
    with pytest.warns(UserWarning, match=r"image: 16-bit image scaled to 8 bits"):
        from_array = np.asarray(to_rgb(np.dstack([levels] * 3)))
    expected = np.round(levels / 257).astype(np.uint8)
    assert np.abs(from_file[..., 0].astype(int) - expected).max() <= 1
    assert np.array_equal(from_array[..., 1], expected)


def test_a_missing_file_is_refused_before_model_work(tiny_model, tmp_path):
    msg = refused(tiny_model, ImageInputError, "does not exist", image=tmp_path / "nope.png")
    assert msg.startswith("image:") and "nope.png" in msg


@pytest.mark.parametrize("kind", ["text", "folder"])
def test_a_path_that_is_not_an_image_is_refused(tiny_model, tmp_path, kind):
    path = tmp_path / "notes.png"
    if kind == "text":
        path.write_text("not a picture")
    else:
        path.mkdir()
    msg = refused(tiny_model, ImageInputError, "is not an image PIL can read", image=path)
    assert msg.startswith("image:") and "notes.png" in msg


def test_other_python_objects_are_refused(tiny_model):
    refused(tiny_model, ImageInputError, "^image must be a path, a PIL image or a numpy array, got dict", image={"a": 1})


def test_a_size_off_the_vae_grid_is_refused_unless_fit_is_asked(tiny_model):
    f = tiny_model.vae_scale_factor
    side = 64 + f // 2  # half a latent cell too many
    msg = refused(tiny_model, ImageInputError, "multiples of", image=picture(side, side))
    assert f"image is {side}x{side}" in msg and f"multiples of {f}" in msg and "fit='resize'" in msg and "--fit" in msg
    with pytest.warns(UserWarning, match=rf"image resized from {side}x{side} to"):
        resized = edit(tiny_model, fit_inputs(tiny_model, picture(side, side), fit="resize")[0])
    with pytest.warns(UserWarning, match=rf"image cropped from {side}x{side} to 64x64"):
        cropped = edit(tiny_model, fit_inputs(tiny_model, picture(side, side), fit="crop")[0])
    for r in (resized, cropped):
        assert r.image.size[0] % f == 0 and r.image.size[1] % f == 0 and r.mask.shape == r.image.size[::-1]
    assert np.array_equal(np.asarray(cropped.input_image), picture(side, side)[:64, :64])
    with pytest.raises(ValueError, match=r"fit must be one of \('error', 'resize', 'crop'\), got 'stretch'"):
        fit_inputs(tiny_model, picture(side, side), fit="stretch")


def test_an_image_smaller_than_the_unet_takes_is_refused(tiny_model):
    m = min_side(tiny_model)
    small = m - tiny_model.vae_scale_factor  # on the VAE grid, but one latent cell short
    msg = refused(tiny_model, ImageInputError, "needs at least", image=picture(small, 64))
    assert msg == f"image is {small}x64; this model needs at least {m}x{m} pixels"
    assert edit(tiny_model, picture(m, m)).mask.shape == (m, m)  # the smallest size it takes runs


def test_a_huge_image_is_refused_with_a_size_that_fits(tiny_model):
    big = Image.new("RGB", (3000, 2000))
    msg = refused(tiny_model, ImageInputError, "resize it to at most", image=big)
    assert msg.startswith("image is 3000x2000 (6,000,000 pixels, limit")
    fw, fh = map(int, msg.rsplit(" ", 1)[1].split("x"))
    f = tiny_model.vae_scale_factor
    assert fw * fh <= MAX_PIXELS and fw % f == 0 and fh % f == 0
    assert abs(fw / fh - 1.5) < 0.01  # same shape
    assert fit_size(Image.new("RGB", (fw, fh)), f) is not None  # the suggestion is accepted


def test_a_huge_file_is_refused_from_its_header_before_decoding(tmp_path):
    # The header claims 12000x12000; the pixel data is missing, so decoding would fail with
    # "not an image PIL can read". Refusing on size proves nothing was decoded or allocated.
    path = png_header_only(tmp_path / "huge.png", 12000, 12000)
    with pytest.raises(ImageInputError, match=r"image is 12000x12000 \(144,000,000 pixels, limit .*resize it to at most 2048x2048"):
        to_rgb(path)
    bomb = png_header_only(tmp_path / "bomb.png", 30000, 30000)  # past PIL's own decompression-bomb limit
    with pytest.raises(ImageInputError, match=rf"image: .*bomb.png' is far larger than the limit of {MAX_PIXELS:,} pixels"):
        to_rgb(bomb)


def test_a_huge_array_is_refused_from_its_shape():
    huge = np.broadcast_to(np.zeros(3, np.uint8), (3000, 3000, 3))  # no memory behind it
    with pytest.raises(ImageInputError, match=r"photo is 3000x3000 .*resize it to at most"):
        to_rgb(huge, "photo")


# ----------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("which", ["target_prompt"])  # an empty source is allowed: tests/test_user_mask_and_names.py
@pytest.mark.parametrize("empty", ["", "   \n"])
def test_an_empty_prompt_is_refused(tiny_model, which, empty):
    prompts = {"src": SRC, "tgt": TGT, ("src" if which == "source_prompt" else "tgt"): empty}
    refused(tiny_model, ValueError, f"^{which} must be a non-empty string$", **prompts)


def test_identical_prompts_give_an_empty_mask_a_zero_map_and_a_warning(tiny_model):
    image = picture()
    with pytest.warns(UserWarning, match="source_prompt and target_prompt are identical"):
        r = edit(tiny_model, image, SRC, "  " + SRC, FAST.replace(threshold=0.0))
    assert r.mask.dtype == bool and not r.mask.any()
    assert np.isfinite(r.difference_map).all() and (r.difference_map == 0).all()
    assert np.array_equal(np.asarray(r.image), image)


def test_a_prompt_longer_than_the_text_model_takes_is_truncated_with_a_warning(tiny_model):
    limit = tiny_model.max_prompt_tokens
    long = " ".join(["zebra"] * (limit + 10))  # one token per word, plus start and end
    with pytest.warns(UserWarning, match=rf"target_prompt has {limit + 12} tokens, more than the text model's limit "
                                         rf"of {limit}: truncated to {limit} \(the last 12 are ignored\)"):
        r = edit(tiny_model, picture(), SRC, long)
    assert r.mask.shape == (64, 64)
    with pytest.warns(UserWarning, match=r"prompt 'zebra zebra .*'\.\.\. has"):  # unnamed: its first words
        ids, attention = tokenize(tiny_model, [long])
    assert ids.shape == (1, limit) and attention.shape == (1, limit)


@pytest.mark.parametrize("bad", [None, 3, b"a horse", ["a horse"]])
def test_a_prompt_that_is_not_a_string_is_refused(tiny_model, bad):
    msg = refused(tiny_model, TypeError, "^target_prompt must be a string, got ", tgt=bad)
    assert type(bad).__name__ in msg
    with pytest.raises(TypeError, match="prompts must be a string or a list of strings, got "):
        encode_prompts(tiny_model, bad if not isinstance(bad, list) else [bad[0], 7])


def test_a_batch_is_checked_whole_before_any_image_is_edited(tiny_model):
    refused(tiny_model, ValueError, "^target_prompt must be a non-empty string$", image=[picture(), picture(seed=1)],
            tgt=[TGT, ""])
    refused(tiny_model, ValueError, r"one prompt per image \(2\)", image=[picture(), picture(seed=1)], tgt=[TGT])


# ----------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("field, value, message", [
    ("threshold", -0.1, r"threshold must be in \[0, 1\], got -0.1"),
    ("threshold", 1.5, r"threshold must be in \[0, 1\], got 1.5"),
    ("threshold", float("nan"), "threshold must be a finite number, got nan"),
    ("blur", -3, r"blur must be 0 \(off\) or an odd whole number of pixels >= 1, got -3"),
    ("blur", 2.5, r"blur must be 0 \(off\) or an odd whole number of pixels >= 1, got 2.5"),
    ("n_noise", 0, "n_noise must be an integer >= 1, got 0"),
    ("n_noise", 2.0, "n_noise must be an integer >= 1, got 2.0"),
    ("mask_strength", 0.0, r"mask_strength must be in \(0, 1\], got 0.0"),
    ("mask_strength", 1.2, r"mask_strength must be in \(0, 1\], got 1.2"),
    ("steps", 0, "steps must be an integer >= 1, got 0"),
    ("edit_start", 1.0, r"edit_start must be in \[0, 1\), the fraction of the 4 steps skipped; got 1.0"),
    ("edit_start", -0.25, r"edit_start must be in \[0, 1\)"),
    ("guidance", -1.0, "guidance must be >= 0 .*, got -1.0"),
    ("encoding", "inverse", r"encoding must be one of \('noise', 'inversion'\), got 'inverse'"),
])
def test_a_number_out_of_range_is_refused_naming_the_field_and_range(tiny_model, field, value, message):
    refused(tiny_model, ValueError, f"^{message}", config=FAST.replace(**{field: value}))


def test_an_even_blur_is_rounded_up_with_a_warning_and_the_callers_config_is_kept(tiny_model):
    config = FAST.replace(blur=4)
    with pytest.warns(UserWarning, match=r"blur=4 is even; rounded up to 5 \(kernels must be odd\)"):
        r = edit(tiny_model, picture(), config=config)
    assert r.config.blur == 5 and config.blur == 4  # the result says what ran; the caller's object is untouched


def test_the_mask_function_checks_its_numbers_too():
    diff_map = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    with pytest.raises(ValueError, match=r"^threshold must be in \[0, 1\], got 1.5"):
        make_mask(diff_map, 1.5, 3)
    with pytest.raises(ValueError, match="^blur must be 0 .* got -1"):
        make_mask(diff_map, 0.5, -1)
    with pytest.warns(UserWarning, match="blur=4 is even; rounded up to 5"):
        even = make_mask(diff_map, 0.5, 4)
    assert np.array_equal(even, make_mask(diff_map, 0.5, 5))


def test_a_config_or_generator_of_the_wrong_type_is_refused(tiny_model):
    refused(tiny_model, TypeError, "^config must be a DiffEditConfig or None, got dict", config={"steps": 4})
    with no_model_work(tiny_model), pytest.raises(TypeError, match="^generator must be a torch.Generator or None"):
        diffedit(tiny_model, picture(), SRC, TGT, FAST, generator=0, progress=False)


# ----------------------------------------------------------------------------- models
def _copy_bundled(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(BUNDLED_PATH, folder)
    return folder


def _one_line(err) -> str:
    "The error's message, checked to be one short line (paths, as long as the folders they name, not counted)."
    msg = str(err.value)
    assert "\n" not in msg and len(re.sub(r"/[^\s'\"]+", "<path>", msg)) < 400, msg
    return msg


def test_a_missing_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="^model folder .* does not exist$") as err:
        load_model(tmp_path / "sd15")
    assert "sd15" in _one_line(err)


def test_a_folder_that_is_not_a_diffusers_model(tmp_path):
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ModelLoadError, match="is not a diffusers Stable Diffusion folder: missing subfolder") as err:
        load_model(tmp_path / "pictures")
    assert "vae, text_encoder, tokenizer, unet, scheduler" in _one_line(err)
    with pytest.raises(ModelLoadError, match="is a file, not a diffusers model folder"):
        load_model(tmp_path / "pictures" / "cat.jpg")


def test_a_model_folder_without_weights(tmp_path):
    folder = _copy_bundled(tmp_path)
    for f in (folder / "unet").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelLoadError, match=r"has no weights \(.safetensors or .bin\) in unet/$") as err:
        load_model(folder)
    _one_line(err)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_weights_give_one_line(tmp_path, damage):
    folder = _copy_bundled(tmp_path)
    weights = next((folder / "unet").glob("*.safetensors"))
    if damage == "truncated":
        with open(weights, "r+b") as fh:
            fh.truncate(weights.stat().st_size // 2)
    else:
        weights.write_bytes(os.urandom(4096))
    with pytest.raises(ModelLoadError, match="^could not load model ") as err:
        load_model(folder)
    assert weights.name in _one_line(err)


def test_a_hub_id_while_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="looks like a hub id, but HF_HUB_OFFLINE is set") as err:
        load_model("someone/some-model")
    assert "'someone/some-model'" in _one_line(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_a_device_this_machine_lacks(tmp_path):
    with pytest.raises(ValueError, match="^device='cuda' but CUDA is not available here"):
        load_model("bundled", device="cuda")
    with pytest.raises(ValueError, match="^dtype=torch.float16 needs a CUDA device"):
        load_model("bundled", dtype=torch.float16)
    with pytest.raises(ValueError, match="^device must be a torch device"):
        load_model("bundled", device="gpu")


# ----------------------------------------------------------------------------- numerics
def _half(model):
    "A float16 copy of a tiny model (the CPU runs float16 convolutions in this torch)."
    half = copy.deepcopy(model)
    for m in (half.vae, half.text_encoder, half.unet):
        m.to(torch.float16)
    return half


def _fp16_supported() -> bool:
    try:
        torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3, dtype=torch.float16), torch.ones(1, 1, 1, 1, dtype=torch.float16))
        return True
    except RuntimeError:
        return False


fp16 = pytest.mark.skipif(not _fp16_supported(), reason="this torch has no float16 convolution on the CPU")


@fp16
def test_a_float16_edit_stays_finite(tiny_model):
    half = _half(tiny_model)
    r = edit(half, picture(32, 32))  # small: float16 is slow on a CPU
    assert half.dtype == torch.float16
    assert r.difference_map.dtype == np.float32 and np.isfinite(r.difference_map).all()
    assert 0 <= r.difference_map.min() and r.difference_map.max() <= 1 and r.difference_map.max() > 0
    assert r.mask.dtype == bool and r.image.size == (32, 32)


@fp16
def test_a_float16_vae_overflow_is_decoded_again_in_float32():
    from diffusers import AutoencoderKL

    from diffedit_helpers.models import DiffEditModel
    from diffedit_helpers.world.tiny_model import vae_config

    torch.manual_seed(0)
    vae32 = AutoencoderKL(**vae_config()).eval()
    with torch.no_grad():
        vae32.decoder.conv_in.weight.mul_(3e4)  # activations far past float16's 65504
    vae16 = copy.deepcopy(vae32).to(torch.float16)
    latents = torch.randn(1, vae32.config.latent_channels, 4, 4)  # a 16 x 16 picture: float16 is slow on a CPU
    with torch.no_grad():
        raw16 = vae16.decode(latents.half() / vae16.config.scaling_factor).sample
    assert not torch.isfinite(raw16).all()  # the situation: float16 alone overflows
    model = DiffEditModel(vae16, None, None, torch.nn.Linear(1, 1).half(), {})
    pixels = decode_latents(model, latents.half())
    expected = decode_latents(DiffEditModel(vae32, None, None, torch.nn.Linear(1, 1), {}), latents)
    assert torch.isfinite(pixels).all() and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels, expected, rtol=1e-3, atol=1e-3)
    assert vae16.dtype == torch.float16  # put back as it was


@fp16
def test_a_float16_unet_overflow_is_refused_not_turned_into_a_picture(tiny_model):
    half = _half(tiny_model)
    with torch.no_grad():
        half.unet.conv_out.weight.mul_(1e6)
    with pytest.raises(RuntimeError, match=r"the UNet produced NaN or inf in torch.float16 .*load the model with dtype=torch.float32"):
        edit(half, picture(32, 32))


def test_the_difference_map_normalisation_never_gives_nan():
    raw = torch.rand(16, 16)
    raw[0, 0], raw[1, 1], raw[2, 2] = float("nan"), float("inf"), float("-inf")
    out = normalise_map(raw)
    assert torch.isfinite(out).all() and out.min() == 0 and out.max() == 1
    for constant in (torch.zeros(8, 8), torch.full((8, 8), float("nan")), torch.full((8, 8), 3.0)):
        assert torch.equal(normalise_map(constant), torch.zeros(8, 8))
    half = (torch.rand(16, 16) * 60000).half()
    assert normalise_map(half).dtype == torch.float32 and torch.isfinite(normalise_map(half)).all()


# ----------------------------------------------------------------------------- inputs untouched, outputs kept
def test_inputs_are_never_modified_in_memory(tiny_model):
    arr = picture()
    arr_before = arr.copy()
    pil = Image.fromarray(picture(seed=2)).convert("RGBA")
    pil_before = np.asarray(pil).copy()
    config = FAST.replace(blur=4)
    config_before = config.to_dict()
    with pytest.warns(UserWarning):
        results = diffedit(tiny_model, [arr, pil], SRC, TGT, config, torch.Generator().manual_seed(0), progress=False)
    assert np.array_equal(arr, arr_before) and arr.flags.writeable
    assert np.array_equal(np.asarray(pil), pil_before) and pil.mode == "RGBA"
    assert config.to_dict() == config_before
    assert [r.input_image.mode for r in results] == ["RGB", "RGB"]


def _cli_args(image, out, *extra):
    return ["edit", str(image), "--source", SRC, "--target", TGT, "--out", str(out), "--steps", "4", "--n-noise", "2",
            "--quiet", *extra]


def test_cli_never_overwrites_outputs_unless_asked(tmp_path, capsys, cli_with_tiny_model):
    image = tmp_path / "in.png"
    Image.fromarray(picture()).save(image)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mask.png").write_bytes(b"my mask")
    assert main(_cli_args(image, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and "already holds mask.png" in err and "--overwrite" in err
    assert (out / "mask.png").read_bytes() == b"my mask" and not (out / "edited.png").exists()
    assert cli_with_tiny_model == []  # refused before loading a model
    assert main(_cli_args(image, out, "--overwrite")) == 0
    assert Image.open(out / "mask.png").size == (64, 64)


def test_cli_never_touches_the_input_file(tmp_path, cli_with_tiny_model):
    image = tmp_path / "in.png"
    Image.fromarray(picture()).convert("RGBA").save(image)
    os.utime(image, ns=(1_000_000_000, 1_000_000_000))
    before = image.read_bytes(), image.stat().st_mtime_ns
    assert main(_cli_args(image, tmp_path / "out")) == 0
    assert (image.read_bytes(), image.stat().st_mtime_ns) == before


def test_cli_refuses_an_output_folder_that_would_overwrite_the_input(tmp_path, capsys, cli_with_tiny_model):
    image = tmp_path / "edited.png"
    Image.fromarray(picture()).save(image)
    before = image.read_bytes()
    assert main(_cli_args(image, tmp_path, "--overwrite")) == 2
    assert "would overwrite the input image" in capsys.readouterr().err
    assert image.read_bytes() == before and cli_with_tiny_model == []


def test_cli_prints_the_packages_warnings(tmp_path, capsys, cli_with_tiny_model):
    rgba = np.dstack([picture(), np.zeros((64, 64), np.uint8)])  # fully transparent
    image = tmp_path / "clear.png"
    Image.fromarray(rgba).save(image)
    assert main(_cli_args(image, tmp_path / "out", "--blur", "4")) == 0
    err = capsys.readouterr().err
    assert "warning: blur=4 is even; rounded up to 5" in err
    assert "warning: image: transparent pixels composited on white (alpha dropped)" in err


@pytest.mark.parametrize("extra, message", [
    (["--threshold", "2"], r"error: --threshold: threshold must be in \[0, 1\], got 2.0"),
    (["--blur", "-1"], "error: --blur: blur must be 0"),
    (["--n-noise", "0"], "error: --n-noise: n_noise must be an integer >= 1, got 0"),
    (["--mask-strength", "0"], r"error: --mask-strength: mask_strength must be in \(0, 1\]"),
    (["--steps", "0"], "error: --steps: steps must be an integer >= 1, got 0"),
    (["--start", "1"], r"error: --start: edit_start must be in \[0, 1\)"),
    (["--guidance", "-2"], "error: --guidance: guidance must be >= 0"),
    (["--target", " "], "error: --target must be a non-empty string"),
])
def test_cli_names_the_option_and_loads_no_model(tmp_path, capsys, cli_with_tiny_model, extra, message):
    image = tmp_path / "in.png"
    Image.fromarray(picture()).save(image)
    assert main(_cli_args(image, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert __import__("re").match(message, err), err
    assert cli_with_tiny_model == [] and not (tmp_path / "out").exists()


def test_cli_model_and_image_errors_are_one_line(tmp_path, capsys):
    image = tmp_path / "in.png"
    Image.fromarray(picture()).save(image)
    assert main(_cli_args(image, tmp_path / "out", "--model", str(tmp_path / "no-model"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model folder ") and "does not exist" in err and len(err.strip().splitlines()) == 1
    assert main(_cli_args(tmp_path / "missing.png", tmp_path / "out")) == 2
    assert capsys.readouterr().err.startswith("error: image: file ")


def test_cli_exits_2_without_a_traceback_in_a_real_process(tmp_path):
    cmd = [sys.executable, "-m", "diffedit_helpers", "edit", str(tmp_path / "missing.jpg"), "--source", SRC,
           "--target", TGT, "--out", str(tmp_path / "out")]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: image: file ") and "missing.jpg" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- reproducibility
def test_the_same_seed_gives_bit_identical_masks_and_images(tiny_model):
    a, b = edit(tiny_model, picture(), seed=7), edit(tiny_model, picture(), seed=7)
    assert a.mask.any()  # something to compare
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.difference_map, b.difference_map)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_a_batch_of_mixed_inputs_gives_each_the_mask_it_gets_alone(tiny_model, tmp_path):
    path = tmp_path / "third.png"
    Image.fromarray(picture(seed=3)).save(path)
    images = [picture(seed=1), Image.fromarray(picture(seed=2)), path]
    batch = diffedit(tiny_model, images, SRC, TGT, FAST, torch.Generator().manual_seed(4), progress=False)
    for image, r in zip(images, batch):
        alone = edit(tiny_model, image, seed=4)
        assert np.array_equal(alone.mask, r.mask) and np.array_equal(np.asarray(alone.image), np.asarray(r.image))


def test_other_entry_points_can_run_the_same_checks(tiny_model):
    from diffedit_helpers.preflight import prepare_inputs

    with no_model_work(tiny_model):
        image, config = prepare_inputs(tiny_model, picture(), SRC, TGT, FAST.replace(blur=5))
        assert image.mode == "RGB" and image.size == (64, 64) and config == FAST.replace(blur=5) and config is not FAST
        with pytest.raises(TypeError, match="^source_prompt must be a string, got int"):
            prepare_inputs(tiny_model, picture(), 1, TGT)
        with pytest.raises(ImageInputError, match="^image is 8x8"):
            prepare_inputs(tiny_model, picture(8, 8), SRC, TGT)
