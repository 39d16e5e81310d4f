"""Reliability, case by case: no output is ever overwritten or left half-written, no typo runs
away with the machine, and no edit quietly returns its input unchanged. Root-only situations (a
full disk, a folder without write permission) are simulated, so every test runs anywhere; the
tiny random components stand in for a model except where the bundled model's own record matters.
"""

import errno
import json
import os
import shutil
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from test_bad_input import FAST, SRC, TGT, _cli_args, edit, no_model_work, picture, refused

import diffedit_helpers.outputs as outputs
import diffedit_helpers.preflight as preflight
from diffedit_helpers import (
    BUNDLED_PATH,
    ConfigError,
    DiffEditConfig,
    DiffEditResult,
    DiffEditWarning,
    ImageInputError,
    ModelLoadError,
    diffedit,
    fit_size,
    load_model,
    to_rgb,
)
from diffedit_helpers.cli import OUTPUT_FILES, main
from diffedit_helpers.preflight import prepare_inputs
from diffedit_helpers.inputs import fit_inputs
from diffedit_helpers.plotting import OVERVIEW_MAX_SIDE, overview

QUICK = ["--steps", "2", "--n-noise", "1"]


def input_png(tmp_path, name="in.png", seed=0):
    path = tmp_path / name
    Image.fromarray(picture(seed=seed)).save(path)
    return path


def leftovers(folder):
    "Temporary files a write left behind."
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(outputs.TEMP_SUFFIX))


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# ----------------------------------------------------------------------------- 1. concurrent runs into one --out
def test_two_concurrent_runs_into_one_folder_one_writes_the_other_exits_2_naming_the_file(tmp_path, capsys,
                                                                                           cli_with_tiny_model):
    image = input_png(tmp_path)
    with warnings.catch_warnings():  # the CLI sets the process's warning state; restore it after the threads
        for round_ in range(20):
            out = tmp_path / f"out{round_}"
            codes = [None, None]
            start = threading.Barrier(2)

            def run(i):
                start.wait()
                codes[i] = main(_cli_args(image, out, *QUICK, "--seed", str(i)))

            threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            err = capsys.readouterr().err
            assert sorted(codes) == [0, 2], (round_, codes, err)
            lines = error_lines(err)
            assert len(lines) == 1 and "mask.png" in lines[0] and str(out) in lines[0], err
            assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)  # no temporary file left
            for name in OUTPUT_FILES:
                with Image.open(out / name) as im:
                    im.load()  # whole: a truncated PNG raises here
            # all three from the same run: the overview's last tile is edited.png, scaled up
            edited = np.asarray(Image.open(out / "edited.png"))
            tile = np.asarray(Image.open(out / "overview.png"))[-4 - 256:-4, -4 - 256:-4]
            assert np.array_equal(tile[::4, ::4], edited)


def test_a_name_taken_while_the_edit_runs_is_refused_and_the_other_file_kept(tmp_path, capsys, monkeypatch, tiny_model):
    import diffedit_helpers.models as models

    image, out = input_png(tmp_path), tmp_path / "out"

    def load_while_another_run_writes(name, device=None, dtype=None):
        out.mkdir()
        (out / "edited.png").write_bytes(b"the other run's picture")
        return tiny_model

    monkeypatch.setattr(models, "load_model", load_while_another_run_writes)
    assert main(_cli_args(image, out, *QUICK)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and "edited.png was written by another run meanwhile" in err
    assert (out / "edited.png").read_bytes() == b"the other run's picture"
    assert sorted(p.name for p in out.iterdir()) == ["edited.png"]  # its own mask.png taken back, no temporary file


# ----------------------------------------------------------------------------- 2. writes are whole or absent
def _failing_save(monkeypatch, exc, on_call=2):
    "PIL's save writes part of the file, then raises `exc` on its `on_call`-th call (the 2nd: edited.png)."
    real = Image.Image.save
    calls = []

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == on_call:
            fp.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 25)  # 33 bytes, as a real interrupted write leaves
            raise exc
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)


def test_a_full_disk_leaves_no_file_names_the_file_and_the_next_run_starts(tmp_path, capsys, monkeypatch, cli_with_tiny_model):
    image, out = input_png(tmp_path), tmp_path / "out"
    real_save = Image.Image.save
    _failing_save(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    assert main(_cli_args(image, out, *QUICK)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not write ") and "edited.png" in err and "No space left on device" in err
    assert list(out.iterdir()) == []  # neither mask.png nor a truncated edited.png
    monkeypatch.setattr(Image.Image, "save", real_save)  # space again
    assert main(_cli_args(image, out, *QUICK)) == 0  # the next run is not refused
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)


def test_ctrl_c_while_saving_prints_interrupted_exits_130_and_leaves_nothing(tmp_path, capsys, monkeypatch,
                                                                            cli_with_tiny_model):
    image, out = input_png(tmp_path), tmp_path / "out"
    _failing_save(monkeypatch, KeyboardInterrupt())
    assert main(_cli_args(image, out, *QUICK)) == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert list(out.iterdir()) == []


def test_ctrl_c_during_the_edit_exits_130(tmp_path, capsys, monkeypatch, cli_with_tiny_model):
    import diffedit_helpers.edit as edit_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(edit_module, "diffedit", interrupted)
    assert main(_cli_args(input_png(tmp_path), tmp_path / "out", *QUICK)) == 130
    assert capsys.readouterr().err == "interrupted\n" and not (tmp_path / "out").exists()


def test_an_out_folder_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch,
                                                                                cli_with_tiny_model):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # root may write anywhere: simulate a folder this user may not write into
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(locked) else real_access(p, mode, **kw))
    image = input_png(tmp_path)
    for out, where in ((locked, ""), (locked / "new" / "deeper", "its parent")):
        assert main(_cli_args(image, out, *QUICK)) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {str(out)!r} is not a writable folder") and where in err
    (tmp_path / "a-file").write_text("x")
    assert main(_cli_args(image, tmp_path / "a-file" / "out", *QUICK)) == 2
    assert "cannot be created" in capsys.readouterr().err
    assert cli_with_tiny_model == []


# ----------------------------------------------------------------------------- 3. inputs by inode
def test_an_input_hard_linked_as_an_output_is_never_replaced(tmp_path, capsys, cli_with_tiny_model):
    image = input_png(tmp_path, "photo.png")
    before = image.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    os.link(image, out / "edited.png")  # the same file under the output's name
    assert main(_cli_args(image, out, *QUICK, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "would overwrite the input image" in err and "photo.png" in err
    assert image.read_bytes() == before and cli_with_tiny_model == []


def test_demo_overwrite_never_replaces_a_users_input_png(tmp_path, capsys, cli_with_tiny_model):
    folder = tmp_path / "photos"
    folder.mkdir()
    mine = input_png(folder, "input.png", seed=5)
    before = mine.read_bytes()
    assert main(["demo", "--out", str(folder), "--overwrite", "--quiet", *QUICK]) == 2
    assert "already holds an input.png that is not the demo scene" in capsys.readouterr().err
    assert mine.read_bytes() == before and cli_with_tiny_model == []
    # a previous demo's input.png is the demo scene: --overwrite reuses it
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quiet", *QUICK]) == 0
    assert main(["demo", "--out", str(tmp_path / "demo"), "--overwrite", "--quiet", *QUICK]) == 0


# ----------------------------------------------------------------------------- 4. --out ""
def test_an_empty_out_is_refused_and_nothing_is_written_here(tmp_path, capsys, monkeypatch, cli_with_tiny_model):
    image = input_png(tmp_path)
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(_cli_args(image, "", *QUICK)) == 2
    assert capsys.readouterr().err == "error: --out must name a folder, got an empty string\n"
    assert list(here.iterdir()) == [] and cli_with_tiny_model == []


# ----------------------------------------------------------------------------- 5, 6. bounded work
@pytest.mark.parametrize("field, value, message", [
    ("refine_radius", 10**6, r"^refine_radius must be an integer in \[1, 1024\] \(latent cells\), got 1000000$"),
    ("refine_radius", 10**10, r"^refine_radius must be an integer in \[1, 1024\]"),
    ("blur", 99999999, r"^blur must be 0 \(off\) or an odd whole number of pixels >= 1 and at most 4095, got 99999999$"),
    ("feather", 10**7, r"^feather must be 0 \(off\) or an odd whole number of pixels >= 1 and at most 4095"),
    ("refine_eps", 1e300, r"^refine_eps must be > 0 and at most 1 \(larger flattens the map\), got 1e\+300$"),
    ("guidance", 1e38, r"^guidance must be >= 0 .* and at most 1000, got 1e\+38$"),
])
def test_runaway_settings_are_refused_by_the_config_with_the_range(field, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        DiffEditConfig(**{field: value}).validate()
    assert err.value.field == field


@pytest.mark.parametrize("field, value, message", [
    ("blur", 65, r"^blur=65 is wider than the 64x64 image; use an odd kernel of at most 63 pixels$"),
    ("feather", 101, r"^feather=101 is wider than the 64x64 image"),
    ("refine_radius", 17, r"^refine_radius=17 is 68 px, wider than the 64x64 image; use at most 16 \(latent cells of 4 px\)$"),
])
def test_settings_wider_than_the_image_are_refused_before_model_work(tiny_model, field, value, message):
    assert tiny_model.vae_scale_factor == 4
    refused(tiny_model, ConfigError, message, config=FAST.replace(**{field: value}))


def test_cli_refuses_a_blur_wider_than_the_image_before_loading(tmp_path, capsys, cli_with_tiny_model):
    assert main(_cli_args(input_png(tmp_path), tmp_path / "out", "--blur", "99")) == 2
    assert capsys.readouterr().err == "error: --blur: blur=99 is wider than the 64x64 image; use an odd kernel of at most 63 pixels\n"
    assert cli_with_tiny_model == []


# ----------------------------------------------------------------------------- 7. large images
def test_the_cost_estimate_grows_with_the_size_and_counts_every_unet_sample(tiny_model):
    cfg = DiffEditConfig()
    small, large = (preflight.estimate_seconds(tiny_model, (s, s), cfg) for s in (64, 256))
    assert 0 < small and large >= 16 * small * 0.9  # 16x the pixels: at least ~16x the work (attention grows faster)
    assert preflight.unet_samples(cfg) == 2 * 10 + (50 - 12) * 2
    assert preflight.unet_samples(cfg.replace(encoding="inversion", guidance=1.0)) == 20 + 38 + 38


def test_an_edit_estimated_over_a_minute_warns_with_the_estimate_and_the_way_out(tiny_model, monkeypatch):
    seconds = preflight.estimate_seconds(tiny_model, (64, 64), FAST)
    # a device 1,000 times slower than it would need to be for a minute
    slow = preflight.device_speed(tiny_model.device, tiny_model.dtype) * seconds / (preflight.SLOW_SECONDS * 1000)
    monkeypatch.setattr(preflight, "device_speed", lambda device, dtype: slow)
    native = tiny_model.unet.config.sample_size * tiny_model.vae_scale_factor
    with no_model_work(tiny_model), pytest.warns(DiffEditWarning, match=rf"this edit of a 128x128 image will take about [\d.]+ "
                                                 rf"(minutes|hours) on cpu \(10 UNet evaluations\); shrink it first: fit='resize' "
                                                 rf"with max_side={native} \(CLI: --fit resize --size {native}"):
        prepare_inputs(tiny_model, picture(128, 128), SRC, TGT, FAST)
    with no_model_work(tiny_model), pytest.warns(DiffEditWarning, match=r"this edit of a 64x64 image will take about .*; use fewer "
                                                                        r"steps or noise draws \(--steps, --n-noise\)"):
        prepare_inputs(tiny_model, picture(native, native), SRC, TGT, FAST)


def test_fit_resize_shrinks_a_large_picture_to_a_target_size(tiny_model, tmp_path, capsys, cli_with_tiny_model):
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    with pytest.warns(DiffEditWarning, match=r"image resized from 300x200 to 64x44 \(fit='resize', longer side at most 64\)"):
        r = edit(tiny_model, fit_inputs(tiny_model, big, fit="resize", max_side=64)[0])
    assert r.image.size == (64, 44) and r.mask.shape == (44, 64)
    with pytest.raises(ValueError, match="only fit='resize' does"):
        fit_size(big, 4, fit="crop", max_side=64)
    path = tmp_path / "big.png"
    big.save(path)
    assert main(_cli_args(path, tmp_path / "out", *QUICK, "--size", "64")) == 0
    assert Image.open(tmp_path / "out" / "edited.png").size == (64, 44)


def test_the_overview_of_a_large_image_stays_openable(tmp_path):
    side = 2048
    image = Image.new("RGB", (side, side), (10, 20, 30))
    zeros = np.zeros((side, side), np.float32)
    result = DiffEditResult(image=image, mask=zeros > 0, difference_map=zeros, input_image=image, source_prompt=SRC,
                            target_prompt=TGT)
    picture_ = overview(result)
    assert max(picture_.size) <= OVERVIEW_MAX_SIDE and 900 < picture_.width < 1200  # four panels of about 256 px
    small = Image.fromarray(picture())
    r64 = DiffEditResult(image=small, mask=np.zeros((64, 64), bool), difference_map=np.zeros((64, 64), np.float32),
                         input_image=small, source_prompt=SRC, target_prompt=TGT)
    assert overview(r64).size == (4 * (64 * 4 + 4) + 4, 64 * 4 + 14 + 8)  # small inputs: as before, 4 times


# ----------------------------------------------------------------------------- 8. checked up front
def test_more_steps_than_the_model_was_trained_with_is_refused_up_front(tiny_model, tmp_path, capsys, cli_with_tiny_model):
    refused(tiny_model, ConfigError, r"^steps must be an integer in \[1, 1000\] \(this model's training timesteps\), got 1001$",
            config=FAST.replace(steps=1001))
    assert main(_cli_args(input_png(tmp_path), tmp_path / "out", "--steps", "1001")) == 2
    assert capsys.readouterr().err.startswith("error: --steps: steps must be an integer in [1, 1000]")


def test_a_seed_torch_cannot_take_is_refused_before_loading(tmp_path, capsys, cli_with_tiny_model):
    for seed in (2**70, -1):
        assert main(_cli_args(input_png(tmp_path), tmp_path / "out", "--seed", str(seed))) == 2
        assert capsys.readouterr().err == f"error: --seed must be an integer in [0, 2**64 - 1], got {seed}\n"
    assert cli_with_tiny_model == []


def test_a_generator_on_the_meta_device_is_refused_before_model_work(tiny_model):
    try:
        meta = torch.Generator(device="meta")
    except RuntimeError:
        pytest.skip("this torch cannot make a generator on the meta device")
    refused(tiny_model, ValueError, "^generator is on the meta device", generator=meta)


# ----------------------------------------------------------------------------- 9. what the bundled model knows
def test_the_bundled_model_on_a_photo_warns_what_it_was_trained_on(bundled):
    with no_model_work(bundled), pytest.warns(DiffEditWarning) as caught:
        prepare_inputs(bundled, picture(128, 128), "a photo of a cat", "a photo of a dog")
    messages = [str(w.message) for w in caught if "trained only on" in str(w.message)]
    assert len(messages) == 1
    msg = messages[0]
    assert msg.startswith("the bundled model was trained only on 64x64 shapes-world scenes")
    assert "this image is 128x128" in msg and "'cat', 'dog', 'of', 'photo'" in msg and "Stable Diffusion" in msg
    with no_model_work(bundled), warnings.catch_warnings():
        warnings.simplefilter("error", DiffEditWarning)  # its own world: not a word
        prepare_inputs(bundled, picture(), "a brown horse on grass", "A Zebra on grass")


def test_the_bundled_models_record_holds_its_training_words_and_size():
    record = json.loads((BUNDLED_PATH / preflight.TRAINING_FILE).read_text())
    from diffedit_helpers.world.shapes import random_scene
    from diffedit_helpers.world.train import training_record

    assert record["image_size"] == [64, 64]
    captions = [random_scene(seed).caption for seed in range(300)]
    assert set(training_record(captions)["words"]) <= set(record["words"])
    assert {"zebra", "horse", "striped", "grass", "on", "a"} <= set(record["words"]) and "photo" not in record["words"]


def test_a_model_without_a_training_record_gets_no_such_warning(tiny_model):
    with no_model_work(tiny_model), warnings.catch_warnings():
        warnings.simplefilter("error", DiffEditWarning)
        prepare_inputs(tiny_model, picture(128, 128), "a photo of a cat", "a photo of a dog")


# ----------------------------------------------------------------------------- 10. components that load but cannot work
def test_a_tokenizer_folder_without_its_vocabulary_is_refused(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(BUNDLED_PATH, folder)
    shutil.rmtree(folder / "tokenizer")
    (folder / "tokenizer").mkdir()
    try:
        model = load_model(folder)
    except ModelLoadError:
        return  # refused while loading: as good
    with no_model_work(model), pytest.raises(ModelLoadError, match=r"its tokenizer knows only \d+ tokens .* tokenizer/ folder is incomplete"):
        diffedit(model, picture(), SRC, TGT, FAST, progress=False)


def test_a_tokenizer_that_encodes_different_words_alike_is_refused(tiny_model, tmp_path):
    import copy

    from transformers import CLIPTokenizer

    # a vocabulary of thousands of tokens, none of them a letter or a word: every word becomes unknowns, one per letter
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{f"q{i}</w>": i + 2 for i in range(2000)}}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    shutil.copy(BUNDLED_PATH / "tokenizer" / "tokenizer_config.json", tmp_path)
    broken = copy.copy(tiny_model)
    broken.tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    assert broken.tokenizer("a brown horse").input_ids == broken.tokenizer("a zebra horse").input_ids  # the situation
    with no_model_work(broken), pytest.raises(ModelLoadError, match="encodes the different words 'cat' and 'dog' alike"):
        diffedit(broken, picture(), SRC, TGT, FAST, progress=False)


def test_a_scheduler_config_that_is_not_a_mapping_is_refused_before_model_work(tiny_model):
    import copy

    broken = copy.copy(tiny_model)
    broken.scheduler_config = [1, 2]
    with no_model_work(broken), pytest.raises(ModelLoadError, match=r"scheduler_config.json must hold a JSON object .* got list"):
        diffedit(broken, picture(), SRC, TGT, FAST, progress=False)


# ----------------------------------------------------------------------------- 11. value scales
def test_a_float_tiff_in_0_1_keeps_its_brightness(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    path = tmp_path / "ramp.tif"
    Image.fromarray(ramp, mode="F").save(path)
    with pytest.warns(DiffEditWarning, match=r"image: F image scaled to 8 bits from the range \[0, 1\] \(its values are all in \[0, 1\]\)"):
        out = np.asarray(to_rgb(path))
    assert np.abs(out[..., 0].astype(int) - np.round(ramp * 255)).max() <= 1 and out.max() == 255


def test_a_16_bit_png_holding_8_bit_levels_keeps_them(tmp_path):
    levels = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint16)
    path = tmp_path / "levels.png"
    Image.fromarray(levels).save(path)
    with pytest.warns(DiffEditWarning, match=r"I;16 image scaled to 8 bits from the range \[0, 255\] .*read as 8-bit levels, not 16-bit"):
        out = np.asarray(to_rgb(path))
    assert np.array_equal(out[..., 0], levels.astype(np.uint8))


# ----------------------------------------------------------------------------- 12. prompts the text model cannot tell apart
def test_prompts_differing_only_in_case_warn_which_case(tiny_model):
    with pytest.warns(DiffEditWarning, match="cannot tell them apart: they are the same tokens after lower-casing"):
        r = edit(tiny_model, picture(), "A brown horse on grass", "a brown horse on grass")
    assert not r.mask.any()


def test_prompts_differing_only_past_the_token_limit_warn_which_case(tiny_model):
    limit = tiny_model.max_prompt_tokens
    words = ["grass"] * (limit + 5)
    a, b = " ".join(words + ["horse"]), " ".join(words + ["zebra"])
    with pytest.warns(DiffEditWarning, match=rf"they differ only past the text model's limit of {limit} tokens"):
        r = edit(tiny_model, picture(), a, b)
    assert not r.mask.any()


# ----------------------------------------------------------------------------- 13. one warning category, shown by the CLI
def test_the_truncation_warning_reaches_the_cli(tmp_path, capsys, cli_with_tiny_model, tiny_model):
    long = " ".join(["zebra"] * (tiny_model.max_prompt_tokens + 3))
    args = _cli_args(input_png(tmp_path), tmp_path / "out", *QUICK)
    args[args.index("--target") + 1] = long
    assert main(args) == 0
    assert f"warning: target_prompt has {tiny_model.max_prompt_tokens + 5} tokens, more than the text model's limit" in capsys.readouterr().err


def test_every_warning_of_an_edit_is_a_diffedit_warning(tiny_model, tmp_path):
    path = tmp_path / "frames.gif"
    frames = [Image.fromarray(picture(seed=s)).convert("P") for s in range(2)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        edit(tiny_model, path, SRC, "A BROWN horse on grass", FAST.replace(blur=4))
    ours = [w for w in caught if "diffedit_helpers" in w.filename or issubclass(w.category, DiffEditWarning)]
    assert len(ours) >= 3 and all(issubclass(w.category, DiffEditWarning) for w in ours), [str(w.message) for w in ours]
    assert issubclass(DiffEditWarning, UserWarning)


# ----------------------------------------------------------------------------- 14. silent no-ops
def test_a_threshold_nothing_passes_warns_that_the_mask_is_empty_and_why(tiny_model):
    with pytest.warns(DiffEditWarning, match=r"the mask is empty: no point of the difference map is above threshold=1 "
                                             r"\(its highest is [\d.]+\); the image is returned unchanged: lower the threshold"):
        r = edit(tiny_model, picture(), config=FAST.replace(threshold=1.0, blur=0))
    assert not r.mask.any() and np.array_equal(np.asarray(r.image), picture())


# ----------------------------------------------------------------------------- 15. errors name the file or the option
def test_a_corrupt_ppm_names_the_file(tmp_path):
    path = tmp_path / "broken.ppm"
    path.write_bytes(b"P6\n64 sixty-four\n255\n" + b"\0" * 100)
    with pytest.raises(ImageInputError, match=r"^image: '.*broken.ppm' is (damaged or )?not an image PIL can read"):
        to_rgb(path)


def test_a_png_with_a_huge_text_chunk_names_the_file(tmp_path):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ok = tmp_path / "ok.png"
    Image.fromarray(picture()).save(ok)
    raw = ok.read_bytes()
    ztxt = chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"x" * (80 * 2**20), 9))  # 80 MB of text, decompressed
    path = tmp_path / "chatty.png"
    path.write_bytes(raw[:33] + ztxt + raw[33:])  # after the 8-byte signature and the 25-byte IHDR chunk
    with pytest.raises(ImageInputError, match=r"^image: '.*chatty.png' is damaged or not an image PIL can read \(ValueError: "
                                              r"Decompressed data too large"):
        to_rgb(path)


# ----------------------------------------------------------------------------- 19. regular files only
def _finishes(fn, seconds=20.0):
    "Run fn in a thread; return (finished in time, its exception or None)."
    box = {}

    def run():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive(), box.get("error"), t


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_given_as_the_image_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    done, error, thread = _finishes(lambda: to_rgb(fifo))
    if not done:  # let the stuck reader go: a writer that opens and closes
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
    assert done, "reading a FIFO blocked"
    assert isinstance(error, ImageInputError) and "is not a regular file" in str(error) and "pipe.png" in str(error)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_device_given_as_the_image_is_refused():
    done, error, _ = _finishes(lambda: to_rgb("/dev/zero"))
    assert done and isinstance(error, ImageInputError) and "'/dev/zero' is not a regular file" in str(error)


# ----------------------------------------------------------------------------- 20. frames and orientation
def test_an_animated_gif_warns_that_only_its_first_frame_is_edited(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.fromarray(picture(seed=s)).quantize(32) for s in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.warns(DiffEditWarning, match=r"image: '.*anim.gif' has 3 frames \(pages\); only the first is edited"):
        out = to_rgb(path)
    assert np.array_equal(np.asarray(out), np.asarray(frames[0].convert("RGB")))


def test_exif_orientation_is_applied(tmp_path):
    arr = picture(64, 32)  # 64 wide, 32 tall, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.png"
    Image.fromarray(arr).save(path, exif=exif)
    out = np.asarray(to_rgb(path))
    assert out.shape == (64, 32, 3)
    assert np.array_equal(out, np.rot90(arr, k=-1))  # clockwise
