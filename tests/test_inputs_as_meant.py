"""Inputs read the way they were meant: URLs fetched within a deadline and a size, mask files read
with the images' value-scale rules, the edit command's checks made before the model loads, a mask
fitted with its image, a memory bound on the mask's batches, and diffusers' step-end callbacks."""

import http.server
import json
import os
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from test_bad_input import no_model_work

import diffedit_helpers.images as images
from diffedit_helpers import DiffEditConfig, ImageInputError, diffedit
from diffedit_helpers.cli import main
from diffedit_helpers.config import ConfigError
from diffedit_helpers.inputs import fit_inputs
from diffedit_helpers.mask import user_mask
from diffedit_helpers.world.shapes import horse_scene, render

FAST = DiffEditConfig(steps=6, n_noise=2, threshold=0.3)
SRC, TGT = "a brown horse on grass", "a zebra on grass"


@pytest.fixture(scope="module")
def image():
    return render(horse_scene())[0]  # 64 x 64 RGB


def edit(model, image, mask=None, **kw):
    return diffedit(model, image, SRC, TGT, kw.pop("config", FAST), generator=torch.Generator().manual_seed(0),
                    progress=False, mask=mask, **kw)


# ----------------------------------------------------------------------------- URLs
def png(picture) -> bytes:
    import io

    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def serve(image):
    """serve(handler) -> base URL: a server on 127.0.0.1 in a thread whose GET runs handler(request);
    `/ok.png` always serves the horse."""
    servers = []
    data = png(image)

    def start(answer=None):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if self.path.startswith("/ok.png") or answer is None:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                else:
                    answer(self)
                self.close_connection = True

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def trickle(request):
    "Headers, then one byte every 0.1 s (at most 100 of them)."
    request.send_response(200)
    request.send_header("Content-Length", "100")
    request.end_headers()
    for _ in range(100):
        try:
            request.wfile.write(b"x")
            request.wfile.flush()
        except OSError:
            return
        time.sleep(0.1)


def test_a_url_has_one_deadline_for_the_whole_fetch(serve, monkeypatch):
    monkeypatch.setattr(images, "FETCH_SECONDS", 1.0)
    with pytest.raises(ImageInputError, match=r"^image: could not fetch 'http://127.0.0.1:\d+/slow.png': not finished within 1 s"):
        images.to_rgb(serve(trickle) + "/slow.png")


def answer(status: int, headers: dict, body: bytes = b""):
    "A handler that answers `status` with `headers` and `body`, then closes."

    def handler(request):
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(body)

    return handler


def test_a_response_over_the_size_limit_is_refused_from_its_header_or_while_read(serve, monkeypatch):
    huge_header = answer(200, {"Content-Length": str(300 * 2**20)}, b"x" * 1000)
    long_body = answer(200, {"Connection": "close"}, b"x" * 5000)  # no length: the body ends when the connection closes
    with pytest.raises(ImageInputError, match=r"it is 314,572,800 bytes, over the limit of 268,435,456"):
        images.to_rgb(serve(huge_header) + "/a.png")
    monkeypatch.setattr(images, "FETCH_BYTES", 1000)
    with pytest.raises(ImageInputError, match=r"more than the limit of 1,000 bytes"):
        images.to_rgb(serve(long_body) + "/a.png")


def test_a_broken_chunked_response_is_a_clear_error(serve):
    broken = answer(200, {"Transfer-Encoding": "chunked"}, b"100\r\n" + b"x" * 10)  # promises 256 bytes, sends 10
    with pytest.raises(ImageInputError, match=r"^image: could not fetch .*: the server closed the connection before the end"):
        images.to_rgb(serve(broken) + "/a.png")


def test_a_redirect_is_followed_only_to_http(serve):
    to_ftp = answer(302, {"Location": "ftp://127.0.0.1/a.png", "Content-Length": "0"})
    with pytest.raises(ImageInputError, match=r"it redirects to 'ftp://127.0.0.1/a.png'; only http:// and https://"):
        images.to_rgb(serve(to_ftp) + "/a.png")
    redirect = serve(answer(302, {"Location": serve() + "/ok.png", "Content-Length": "0"}))
    assert images.to_rgb(redirect + "/a.png").size == (64, 64)


def test_batch_reads_an_upper_case_url_as_a_url(serve, tmp_path, cli_with_tiny_model, capsys):
    base = serve().replace("http://", "HTTP://")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": base + "/ok.png", "source": SRC, "target": TGT}) + "\n")
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--steps", "6", "--n-noise", "2", "--quiet"]) == 0


def test_a_mask_url_is_fetched_and_named_as_a_url(serve, tiny_model, image):
    def missing(request):
        request.send_error(404)

    base = serve(missing)
    with no_model_work(tiny_model), pytest.raises(ImageInputError, match=rf"^mask: '{base}/m.png' answered HTTP 404"):
        edit(tiny_model, image, mask=base + "/m.png")


# ----------------------------------------------------------------------------- mask files
def saved(tmp_path, picture: Image.Image, name: str) -> str:
    path = tmp_path / name
    picture.save(path)
    return str(path)


def test_a_16_bit_ramp_mask_is_half_inside(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (64, 1))  # (64, 64), 0 ... 65535
    mask = user_mask(saved(tmp_path, Image.fromarray(ramp), "ramp.png"), (64, 64))
    assert mask.mean() == 0.5 and mask[:, 32:].all() and not mask[:, :32].any()


def test_float_and_0_1_integer_mask_files_mean_what_they_hold(tmp_path):
    half = np.zeros((64, 64), np.float32)
    half[:, 32:] = 1.0
    for picture, name in ((Image.fromarray(half, mode="F"), "f.tif"),
                          (Image.fromarray(half.astype(np.int32), mode="I"), "i.tif"),
                          (Image.fromarray(half.astype(np.uint16)), "i16.png")):
        mask = user_mask(saved(tmp_path, picture, name), (64, 64))
        assert mask.mean() == 0.5 and mask[:, 32:].all(), name


@pytest.mark.parametrize("value, match", [(2.0, r"float values must be in \[0, 1\], got \[0, 2\]"),
                                          (float("nan"), r"float values must be in \[0, 1\], got 1 NaN")])
def test_a_float_mask_file_out_of_range_is_refused_as_the_array_is(tmp_path, value, match):
    arr = np.zeros((64, 64), np.float32)
    arr[0, 0] = value
    with pytest.raises(ValueError, match=match):
        user_mask(saved(tmp_path, Image.fromarray(arr, mode="F"), "bad.tif"), (64, 64))
    with pytest.raises(ValueError, match=match):
        user_mask(arr, (64, 64))


def test_a_mask_marked_by_transparency_is_refused(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:, 32:, 3] = 255  # white everywhere; only alpha says where
    with pytest.raises(ValueError, match=r"^mask: the mask has transparent pixels, which tools read both ways"):
        user_mask(saved(tmp_path, Image.fromarray(rgba, mode="RGBA"), "alpha.png"), (64, 64))


def test_a_mask_is_resized_or_cropped_with_its_image(tiny_model, image):
    big = image.resize((70, 66))
    mask = np.zeros((66, 70), bool)
    mask[10:40, 20:60] = True
    for fit in ("resize", "crop"):
        r = edit(tiny_model, *fit_inputs(tiny_model, big, mask, fit=fit))
        assert r.mask.shape == (r.image.height, r.image.width) != (66, 70)
        assert abs(r.mask.mean() - mask.mean()) < 0.05, fit


# ----------------------------------------------------------------------------- the edit command checks before the model loads
@pytest.fixture
def picture_file(tmp_path, image):
    path = tmp_path / "in.png"
    image.save(path)
    return path


def run_edit(picture_file, out, *extra) -> int:
    return main(["edit", str(picture_file), "--source", SRC, "--target", TGT, "--out", str(out), "--steps", "6",
                 "--n-noise", "2", "--quiet", *extra])


def test_a_dangling_link_as_out_is_refused_before_the_model_loads(tmp_path, picture_file, cli_with_tiny_model, capsys):
    link = tmp_path / "link"
    os.symlink(tmp_path / "gone", link)
    assert run_edit(picture_file, link) == 2
    assert "is a link to" in capsys.readouterr().err and cli_with_tiny_model == []


def test_a_name_too_long_for_the_file_system_is_refused_before_the_model_loads(tmp_path, picture_file, cli_with_tiny_model,
                                                                               capsys):
    assert run_edit(picture_file, tmp_path / ("x" * 300)) == 2
    assert "300 bytes long" in capsys.readouterr().err and cli_with_tiny_model == []


@pytest.mark.parametrize("mask", ["missing.png", "small.png"])
def test_a_missing_or_wrong_size_mask_is_refused_before_the_model_loads(tmp_path, picture_file, cli_with_tiny_model,
                                                                         capsys, mask):
    Image.new("L", (32, 32), 255).save(tmp_path / "small.png")
    assert run_edit(picture_file, tmp_path / "out", "--mask", str(tmp_path / mask)) == 2
    assert capsys.readouterr().err.startswith("error: --mask") and cli_with_tiny_model == []


# ----------------------------------------------------------------------------- settings and callbacks
def test_mask_batch_size_has_a_memory_bound():
    with pytest.raises(ConfigError, match=r"mask_batch_size must be an integer in \[1, 64\]") as e:
        DiffEditConfig(n_noise=400, mask_batch_size=800).validate()
    assert e.value.field == "mask_batch_size"
