"""What a hostile run tries against `edit`, `batch`, URL fetching and the API: a jobs file inside the
output folder, links planted in it, runaway numbers, servers that drip, lines that never end, a full
disk, and pictures that are not what they claim. Each test drives the command or function itself,
with servers only on 127.0.0.1 and every wait bounded."""

import errno
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_batch import CLI_FAST, command_env, job_lines
from test_inputs_as_meant import answer, image, serve  # noqa: F401 - the server fixture and the picture it serves

import diffedit_helpers.images as images

from diffedit_helpers.cli import main


def write_lines(path: Path, lines) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def batch(jobs: Path, out: Path, *extra) -> int:
    return main(["batch", str(jobs), "--out", str(out), *CLI_FAST, *extra])


def error_line(err: str) -> str:
    "The one `error: ...` line of stderr (no traceback)."
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len([line for line in lines if line.startswith("error:")]) >= 1, err
    return next(line for line in lines if line.startswith("error:"))


# ----------------------------------------------------------------------------- high
def test_the_outputs_own_manifest_as_the_jobs_file_is_refused_at_once(tmp_path):
    "It used to be read while each failing line appended to it: the run never ended."
    out = tmp_path / "out"
    out.mkdir()
    jobs = write_lines(out / "manifest.jsonl", ['{"image": "missing.png", "source": "a", "target": "b"}'])
    run = subprocess.run([sys.executable, "-m", "diffedit_helpers", "batch", str(jobs), "--out", str(out), *CLI_FAST],
                         capture_output=True, text=True, timeout=60, env=command_env())
    assert run.returncode == 2
    assert f"jobs file {str(jobs)!r} is inside --out {str(out)!r}" in error_line(run.stderr)
    assert jobs.read_text().count("\n") == 1  # nothing appended to it


def planted(out: Path, name: str, how: str, target: Path):
    "out/<name> as a symbolic link or a hard link to `target`, or as a folder."
    out.mkdir(exist_ok=True)
    if how == "symlink":
        os.symlink(target, out / name)
    elif how == "hardlink":
        os.link(target, out / name)
    else:
        (out / name).mkdir()


@pytest.mark.parametrize("name", [".lock", "manifest.jsonl"])
@pytest.mark.parametrize("how", ["symlink", "hardlink", "folder"])
def test_a_lock_or_manifest_planted_in_out_is_refused_and_nothing_outside_is_written(tmp_path, cli_with_tiny_model, capsys,
                                                                                    name, how):
    jobs = write_lines(tmp_path / "jobs.jsonl", job_lines(tmp_path, 1))
    users = tmp_path / "users-file.txt"
    users.write_text("precious\n")
    out = tmp_path / "out"
    planted(out, name, how, users)
    assert batch(jobs, out) == 2
    assert f"{str(out / name)!r} is not a plain file of this output folder" in error_line(capsys.readouterr().err)
    assert users.read_text() == "precious\n"
    assert cli_with_tiny_model == []  # refused before the model loads
    assert sorted(p.name for p in out.iterdir()) == [name]


def scene_png(tmp_path: Path, name: str = "in.png") -> Path:
    job_lines(tmp_path, 1)
    return (tmp_path / "scene0.png").rename(tmp_path / name)


@pytest.mark.parametrize("n", ["40000", str(2**70)])
def test_n_noise_past_its_bound_is_refused_before_the_model_loads(tmp_path, cli_with_tiny_model, capsys, n):
    image = scene_png(tmp_path)
    assert main(["edit", str(image), "--source", "a", "--target", "b", "--out", str(tmp_path / "o"), "--n-noise", n]) == 2
    assert error_line(capsys.readouterr().err) == f"error: --n-noise: n_noise must be an integer in [1, 1000] (noise draws, two UNet samples each), got {n}"
    assert cli_with_tiny_model == []


def test_the_mask_draws_its_noise_in_chunks_and_gets_the_same_map(tiny_model, monkeypatch):
    "Memory does not grow with n_noise: no more than DRAWS_AT_ONCE draws are held, and the map is the same."
    import torch

    import diffedit_helpers.mask as mask_module
    from diffedit_helpers.edit import encode_inputs
    from diffedit_helpers.noising import make_scheduler
    from diffedit_helpers.world.shapes import horse_scene, render

    x0, src, tgt, _ = encode_inputs(tiny_model, render(horse_scene())[0], "a brown horse on grass", "a zebra on grass")
    scheduler = make_scheduler(tiny_model, 10)

    def raw(n, generator_seed=5):
        return mask_module.noise_difference(tiny_model, x0, src, tgt, scheduler, n, 0.5,
                                            torch.Generator().manual_seed(generator_seed), batch_size=4)

    whole = raw(7)
    drawn = []
    real_draw = mask_module.draw_noise
    monkeypatch.setattr(mask_module, "draw_noise", lambda shape, *a: drawn.append(shape[0]) or real_draw(shape, *a))
    monkeypatch.setattr(mask_module, "DRAWS_AT_ONCE", 3)
    chunked = raw(7)
    assert drawn == [3, 3, 1]
    assert chunked.shape == whole.shape and torch.allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def drip_headers(request):
    "A status line, then headers one byte every 0.1 s (at most 100 of them)."
    request.wfile.write(b"HTTP/1.1 200 OK\r\n")
    for byte in b"X-Slow: " + b"x" * 92:
        try:
            request.wfile.write(bytes([byte]))
            request.wfile.flush()
        except OSError:
            return
        time.sleep(0.1)


def slow_redirect(request):
    "Wait 0.4 s, then redirect to the next of /r1 ... /r9, then to the picture."
    time.sleep(0.4)
    n = int(request.path.strip("/r") or 0) + 1
    request.send_response(302)
    request.send_header("Location", f"/r{n}" if n < 10 else "/ok.png")
    request.send_header("Content-Length", "0")
    request.end_headers()


@pytest.mark.parametrize("handler", [drip_headers, slow_redirect])
def test_one_deadline_covers_the_headers_and_every_redirect(serve, handler):
    start = time.monotonic()
    with pytest.raises(images.FetchError, match=r"^not finished within 1 s"):
        images.fetch_url(serve(handler) + "/r0", deadline_s=1.0)
    assert time.monotonic() - start < 2.5


def test_a_body_shorter_than_its_content_length_is_refused(serve):
    short = answer(200, {"Content-Length": "1000"}, b"x" * 10)
    with pytest.raises(images.ImageInputError, match=r"the server closed the connection 990 bytes before the end its "
                                                     r"Content-Length announced \(10 bytes came\)"):
        images.to_rgb(serve(short) + "/a.png")


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]


def test_two_ids_doing_the_same_work_each_get_their_folder_and_record(tmp_path, cli_with_tiny_model, capsys):
    line = json.loads(job_lines(tmp_path, 1)[0])
    jobs = write_lines(tmp_path / "jobs.jsonl", [json.dumps(dict(line, id=i)) for i in ("A", "B")])
    out = tmp_path / "out"
    assert batch(jobs, out) == 0
    assert "2 of 2 jobs done" in capsys.readouterr().out
    for name in ("A", "B"):
        assert sorted(p.name for p in (out / name).iterdir()) == ["edited.png", "job.json", "mask.png"]
    assert sorted(r["id"] for r in records(out) if r["status"] == "ok") == ["A", "B"]
    assert (out / "A" / "edited.png").read_bytes() == (out / "B" / "edited.png").read_bytes()  # the same work


def test_a_finished_job_renamed_before_a_rerun_gets_its_folder(tmp_path, cli_with_tiny_model, capsys):
    line = json.loads(job_lines(tmp_path, 1)[0])
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    write_lines(jobs, [json.dumps(dict(line, id="first"))])
    assert batch(jobs, out) == 0
    write_lines(jobs, [json.dumps(dict(line, id="renamed"))])
    capsys.readouterr()
    assert batch(jobs, out) == 0
    assert "1 of 1 jobs done" in capsys.readouterr().out
    assert (out / "renamed" / "edited.png").is_file() and (out / "first" / "edited.png").is_file()
    assert [r["id"] for r in records(out)] == ["first", "renamed"]


def test_a_line_past_the_length_limit_is_skipped_naming_it_and_never_held_whole(tmp_path, cli_with_tiny_model, capsys):
    import tracemalloc

    from diffedit_helpers.jobs import MAX_LINE_BYTES, iter_jobs

    jobs = write_lines(tmp_path / "jobs.jsonl", job_lines(tmp_path, 1))
    with open(jobs, "ab") as fh:
        fh.write(b'{"image": "' + b"x" * (20 * MAX_LINE_BYTES))  # 20 MB and no newline
    tracemalloc.start()
    try:
        found = list(iter_jobs(jobs))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_LINE_BYTES
    assert [(j.line, j.error) for j in found] == [
        (1, None), (2, f"line 2 is longer than the limit of {MAX_LINE_BYTES:,} bytes (a job is a short JSON object); skipped")]
    assert batch(jobs, tmp_path / "out") == 1
    captured = capsys.readouterr()
    assert "error: line 2: ValueError: line 2 is longer than the limit" in captured.err
    assert "1 of 2 jobs done" in captured.out


# ----------------------------------------------------------------------------- medium
def test_a_full_disk_during_the_manifest_append_is_one_line_and_leaves_no_torn_line(tmp_path, cli_with_tiny_model,
                                                                                   capsys, monkeypatch):
    import diffedit_helpers.manifest as manifest_module

    jobs = write_lines(tmp_path / "jobs.jsonl", job_lines(tmp_path, 2))
    out = tmp_path / "out"
    assert batch(jobs, out, "--seed", "0") == 0
    before = (out / "manifest.jsonl").read_bytes()
    write_lines(jobs, job_lines(tmp_path, 3))  # one new job
    real_write = os.write

    def disk_full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("manifest.jsonl"):
            real_write(fd, data[: len(data) // 2])  # a part lands, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(manifest_module.os, "write", disk_full)
    capsys.readouterr()
    assert batch(jobs, out) == 2
    monkeypatch.setattr(manifest_module.os, "write", real_write)
    assert error_line(capsys.readouterr().err) == (f"error: could not append to {str(out / 'manifest.jsonl')!r} (No space "
                                                   f"left on device); it is kept as it was: free some space and run again")
    assert (out / "manifest.jsonl").read_bytes() == before
    assert batch(jobs, out) == 0  # the next run adopts the folder whose record was not written
    assert "3 of 3 jobs done" in capsys.readouterr().out
    assert len(records(out)) == 3


def finished_job(tmp_path, capsys, ids=("A",)):
    "A batch run of one job per id (different work each); (jobs file, out)."
    lines = [json.dumps(dict(json.loads(line), id=i)) for line, i in zip(job_lines(tmp_path, len(ids)), ids)]
    jobs, out = write_lines(tmp_path / "jobs.jsonl", lines), tmp_path / "out"
    assert batch(jobs, out) == 0
    capsys.readouterr()
    return jobs, out


def test_a_finished_folder_that_lost_a_file_is_redone(tmp_path, cli_with_tiny_model, capsys):
    jobs, out = finished_job(tmp_path, capsys)
    whole = (out / "A" / "mask.png").read_bytes()
    (out / "A" / "mask.png").unlink()
    assert batch(jobs, out) == 0
    assert "1 of 1 jobs done" in capsys.readouterr().out
    assert (out / "A" / "mask.png").read_bytes() == whole
    assert not [p for p in out.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("damage, why", [("{not json", "its job.json is damaged"), (None, "it has no job.json")])
def test_a_finished_folder_whose_record_is_damaged_says_what_to_remove(tmp_path, cli_with_tiny_model, capsys, damage, why):
    jobs, out = finished_job(tmp_path, capsys)
    record = out / "A" / "job.json"
    record.write_text(damage) if damage is not None else record.unlink()
    assert batch(jobs, out, "--retry-failed") == 1
    assert (f"{str(out / 'A')!r} exists and is not this job's folder ({why}); remove it and run again with --retry-failed "
            "to redo this job"
            in capsys.readouterr().err)
    shutil.rmtree(out / "A")  # as it says
    assert batch(jobs, out, "--retry-failed") == 0 and (out / "A" / "edited.png").is_file()


def test_swapped_job_folders_do_not_pass_as_done(tmp_path, cli_with_tiny_model, capsys):
    jobs, out = finished_job(tmp_path, capsys, ids=("A", "B"))
    (out / "A").rename(out / "swap")
    (out / "B").rename(out / "A")
    (out / "swap").rename(out / "B")
    assert batch(jobs, out) == 1
    err = capsys.readouterr().err
    assert f"{str(out / 'A')!r} exists and is not this job's folder (its job.json is job 'B''s)" in err
    assert f"{str(out / 'B')!r} exists and is not this job's folder (its job.json is job 'A''s)" in err


KILLED_WHILE_OVERWRITING = """
import os, sys
from pathlib import Path
from PIL import Image
import diffedit_helpers.outputs as outputs

real = outputs._place

def place_then_die(tmp, path, overwrite):
    real(tmp, path, overwrite)
    os._exit(9)  # kill -9 once the first file of the set is replaced

outputs._place = place_then_die
out = Path(sys.argv[1])
outputs.save_all([(Image.new("RGB", (8, 8), "red"), out / name) for name in ("mask.png", "edited.png", "overview.png")],
                 overwrite=True)
"""


def test_a_kill_during_overwrite_leaves_no_new_file_beside_an_old_one(tmp_path):
    from PIL import Image

    from diffedit_helpers.cli import OUTPUT_FILES, check_outputs

    out = tmp_path / "out"
    out.mkdir()
    for name in OUTPUT_FILES:
        Image.new("RGB", (8, 8), "blue").save(out / name)
    run = subprocess.run([sys.executable, "-c", KILLED_WHILE_OVERWRITING, str(out)], env=command_env(), timeout=60,
                         capture_output=True, text=True)
    assert run.returncode == -9 or run.returncode == 9, run.stderr
    assert Image.open(out / "mask.png").getpixel((0, 0)) == (255, 0, 0)  # the new mask beside the old pictures
    check_outputs(out, overwrite=False)  # the next run: the partly placed set is removed, and the folder is free
    assert sorted(p.name for p in out.iterdir()) == []


def tiff(tmp_path: Path, values, mode: str) -> Path:
    "An 8x8 TIFF of `mode` ('F' float32, 'I' int32) holding one value everywhere."
    import numpy as np
    from PIL import Image

    dtype = np.float32 if mode == "F" else np.int32
    path = tmp_path / f"{mode}-{values}.tif"
    Image.fromarray(np.full((8, 8), values, dtype=dtype), mode=mode).save(path)
    return path


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_float_tiff_of_nan_or_inf_is_refused(tmp_path, value):
    with pytest.raises(images.ImageInputError, match=r"^image: F image holds NaN or inf values; pass finite pixel values$"):
        images.to_rgb(tiff(tmp_path, value, "F"))


@pytest.mark.parametrize("value, mode", [(-5.0, "F"), (-100, "I")])
def test_a_negative_tiff_warns_its_true_range(tmp_path, value, mode):
    from diffedit_helpers.config import DiffEditWarning

    with pytest.warns(DiffEditWarning, match=rf"^image: {mode} image holds values in \[{value:g}, {value:g}\]: scaled to 8 "
                                             rf"bits from the range \[0, \d+\], those below 0 clipped to black$"):
        assert images.to_rgb(tiff(tmp_path, value, mode)).getextrema() == ((0, 0),) * 3


def test_a_1x1_png_is_refused_for_its_size_not_for_the_default_feather(tmp_path, cli_with_tiny_model, capsys):
    from PIL import Image

    Image.new("RGB", (1, 1), "white").save(tmp_path / "dot.png")
    assert main(["edit", str(tmp_path / "dot.png"), "--source", "a", "--target", "b", "--out", str(tmp_path / "o")]) == 2
    assert re.fullmatch(r"error: image is 1x1; this model needs at least (\d+)x\1 pixels",
                        error_line(capsys.readouterr().err))
    assert main(["edit", str(tmp_path / "dot.png"), "--source", "a", "--target", "b", "--out", str(tmp_path / "o"),
                 "--feather", "5"]) == 2  # a feather the user gives is still checked before the model loads
    assert error_line(capsys.readouterr().err).startswith("error: --feather: feather=5 is wider than the 1x1 image")
    assert not (tmp_path / "o").exists()


def test_a_prompt_byte_that_is_not_utf8_is_refused_naming_the_option(tmp_path, cli_with_tiny_model, capsys):
    image = scene_png(tmp_path)
    target = os.fsdecode(b"a zebra \xff")  # how Python hands over a command-line byte that is not UTF-8
    assert main(["edit", str(image), "--source", "a", "--target", target, "--out", str(tmp_path / "o")]) == 2
    assert error_line(capsys.readouterr().err) == ("error: --target is not UTF-8 text (character 9, '\\udcff', stands for a "
                                                   "byte that is not UTF-8); pass the prompt as UTF-8")
    assert cli_with_tiny_model == []


def test_a_bfloat16_image_and_mask_are_taken_as_their_float32_values(tiny_model):
    import numpy as np
    import torch

    from diffedit_helpers import DiffEditConfig, diffedit
    from diffedit_helpers.world.shapes import horse_scene, render

    picture = render(horse_scene())[0]
    pixels = torch.from_numpy(np.array(picture)).permute(2, 0, 1).float() / 255  # (3, H, W) in [0, 1]
    mask = torch.zeros(picture.height, picture.width)
    mask[16:48, 16:48] = 1
    config = DiffEditConfig(steps=4, n_noise=2)

    def edit(image, m):
        return diffedit(tiny_model, image, "a", "b", config, generator=torch.Generator().manual_seed(0), progress=False,
                        mask=m)

    result = edit(pixels.bfloat16(), mask.bfloat16())
    expected = edit(pixels.bfloat16().float(), mask)
    assert np.array_equal(result.mask, mask.numpy() > 0.5)
    assert np.array_equal(np.asarray(result.image), np.asarray(expected.image))


@pytest.mark.parametrize("which", ["image", "mask"])
def test_a_meta_tensor_is_refused_naming_the_argument(tiny_model, which):
    import torch

    from diffedit_helpers import diffedit

    image = torch.rand(3, 64, 64)
    args = dict(image=torch.empty(3, 64, 64, device="meta") if which == "image" else image,
                mask=torch.empty(64, 64, device="meta") if which == "mask" else None)
    with pytest.raises(ValueError, match=rf"^{which}: the tensor is on the meta device and holds no values; pass one on "
                                         r"the CPU or a GPU$"):
        diffedit(tiny_model, source_prompt="a", target_prompt="b", progress=False, **args)


# ----------------------------------------------------------------------------- low
def test_a_redirect_loop_is_one_line(serve):
    loop = answer(302, {"Location": "/loop.png", "Content-Length": "0"})
    with pytest.raises(images.ImageInputError) as caught:
        images.to_rgb(serve(loop) + "/loop.png")
    assert re.fullmatch(r"image: 'http://127.0.0.1:\d+/loop.png' redirects in a loop or more than 10 times \(HTTP 302\)",
                        str(caught.value))


@pytest.mark.parametrize("command", ["edit", "batch"])
def test_a_warning_about_an_option_is_said_once_as_one_line(tmp_path, cli_with_tiny_model, capsys, command):
    image = scene_png(tmp_path)
    out = tmp_path / "o"
    if command == "edit":
        argv = ["edit", str(image), "--source", "a brown horse", "--target", "a zebra", "--out", str(out)]
    else:
        jobs = write_lines(tmp_path / "jobs.jsonl", [json.dumps({"image": image.name, "source": "a", "target": "b"})])
        argv = ["batch", str(jobs), "--out", str(out)]
    assert main([*argv, *CLI_FAST, "--blur", "2"]) == 0
    err = capsys.readouterr().err
    assert err.count("blur=2 is even") == 1
    assert "warning: blur=2 is even; rounded up to 3 (kernels must be odd)\n" in err


def test_a_truncated_jpeg_is_said_to_be_damaged(tmp_path):
    from PIL import Image

    whole = tmp_path / "whole.jpg"
    Image.effect_noise((64, 64), 64).convert("RGB").save(whole, quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(images.ImageInputError, match=rf"^image: {re.escape(repr(str(cut)))} is a damaged JPEG file "
                                                     r"\(image file is truncated"):
        images.to_rgb(cut)


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "LAB", "1"])
def test_a_picture_in_another_colour_space_is_converted_with_a_warning(tmp_path, mode):
    from PIL import Image

    from diffedit_helpers.config import DiffEditWarning

    picture = Image.new("RGB", (16, 16), (200, 40, 40)).convert(mode)
    with pytest.warns(DiffEditWarning, match=rf"^image: {mode} image converted to RGB \(PIL's conversion: colours may shift\)$"):
        assert images.to_rgb(picture).mode == "RGB"


def test_thousands_of_failing_lines_give_a_short_summary(tmp_path, cli_with_tiny_model, capsys):
    jobs = write_lines(tmp_path / "jobs.jsonl", ["[1]"] * 2000)  # every line fails: not a JSON object
    assert batch(jobs, tmp_path / "out") == 1
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("0 of 2000 jobs done in ")
    assert summary.endswith("; failed: " + ", ".join(f"line {i}" for i in range(1, 11)) + " and 1,990 more (see manifest.jsonl)")


def test_a_huge_prompt_in_a_batch_job_is_refused_at_once(tmp_path, cli_with_tiny_model, capsys):
    image = scene_png(tmp_path)
    huge = "a zebra on grass " * 50_000  # 850,000 characters: under the line limit
    jobs = write_lines(tmp_path / "jobs.jsonl", [json.dumps({"image": image.name, "source": "a horse", "target": huge})])
    start = time.monotonic()
    assert batch(jobs, tmp_path / "out") == 1
    assert time.monotonic() - start < 30
    assert ("error: line 1: ValueError: target_prompt is 850,000 characters long, over the limit of 10,000 (the text model "
            "reads only its first few dozen words)") in capsys.readouterr().err


@pytest.mark.parametrize("key", ["image", "mask"])
def test_a_file_url_in_a_batch_job_is_refused_as_edit_refuses_it(tmp_path, cli_with_tiny_model, capsys, key):
    image = scene_png(tmp_path)
    (tmp_path / "FILE:").mkdir()  # where the URL would be read from as a relative path
    (tmp_path / "FILE:" / "etc").symlink_to("/etc")
    spec = {"image": image.name, "source": "a", "target": "b", key: "FILE:///etc/passwd"}
    jobs = write_lines(tmp_path / "jobs.jsonl", [json.dumps(spec)])
    assert batch(jobs, tmp_path / "out") == 1
    assert (f"error: line 1: ValueError: line 1: {key}: only http:// and https:// URLs are accepted, got file:// "
            "('FILE:///etc/passwd')") in capsys.readouterr().err


@pytest.mark.parametrize("empty", [[], ()])
def test_an_empty_list_of_images_is_refused(tiny_model, empty):
    from diffedit_helpers import diffedit

    with pytest.raises(ValueError, match=r"^image: an empty list holds no image to edit; pass an image, or a list of one or more$"):
        diffedit(tiny_model, empty, "a", "b", progress=False)


def test_a_colour_photo_as_a_mask_is_refused(tiny_model, tmp_path):
    from PIL import Image

    from diffedit_helpers import diffedit
    from diffedit_helpers.world.shapes import horse_scene, render

    photo = render(horse_scene())[0]  # a colour picture, 64 x 64 like the image
    photo.save(tmp_path / "photo.png")
    for mask in (photo, tmp_path / "photo.png", photo.convert("CMYK")):
        with pytest.raises(ValueError, match=r"^mask: the mask is a colour picture \(its \w+ channels differ\), not a mask: "
                                             r"pass a grey image, white = edit, black = keep$"):
            diffedit(tiny_model, photo, "a", "b", progress=False, mask=mask)
    assert Image.open(tmp_path / "photo.png").mode == "RGB"
