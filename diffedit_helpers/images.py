"""Turning whatever the user passes (path, PIL image, array) into an RGB image the model can take.

Every conversion that changes the picture is said in a warning; a size that does not fit the
model is an error unless the caller asks to resize or crop (`fit=`).
Used from notebook 00_quickstart on (`to_rgb`), and by `diffedit` on every input.
"""

from __future__ import annotations

import io
import os
import re
import stat
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import DiffEditWarning

FITS = ("error", "resize", "crop")
MAX_PIXELS = 2048 * 2048


class ImageInputError(ValueError):
    "An input image cannot be used; the message names the argument and what is accepted."


def to_rgb(image, name: str = "image", max_pixels: int = MAX_PIXELS, multiple: int = 1) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an (H, W[, C]) array. Never modifies the input.

    RGBA/LA are composited on white, palette images converted, 16-bit and float images scaled
    to 8 bits; each with a warning that says so. A file is turned upright by its EXIF
    orientation; of a multi-frame file (animated GIF, multi-page TIFF) only the first frame is
    read, with a warning. A file or array over `max_pixels` is refused from its header or
    shape, before its pixels are decoded or copied; the size suggested instead is a multiple
    of `multiple`. Only regular files are read (never a FIFO or a device).
    """
    image = from_url_or_tensor(image, name, max_pixels, multiple)
    if isinstance(image, (str, os.PathLike)):
        image = read_image_file(Path(image), name, max_pixels, multiple)
    if isinstance(image, np.ndarray):
        if image.ndim >= 2:
            check_not_huge(image.shape[1], image.shape[0], name, max_pixels, multiple)
        image = _array_to_pil(image, name)
    if not isinstance(image, Image.Image):
        raise ImageInputError(f"{name} must be a path, a PIL image or a numpy array, got {type(image).__name__}")
    return _pil_to_rgb(image, name)


def read_picture(source, name: str, max_pixels: int = MAX_PIXELS, multiple: int = 1) -> Image.Image:
    "The picture at a path or an http(s) URL (any case), as a PIL image in its own mode."
    if isinstance(source, str) and _URL.match(source):
        return _fetch_image(source, name, max_pixels, multiple)
    return read_image_file(Path(source), name, max_pixels, multiple)


def read_image_file(path: Path, name: str, max_pixels: int, multiple: int) -> Image.Image:
    "Open an image file, check its size from the header, then decode it into memory."
    if not path.exists():
        raise ImageInputError(f"{name}: file {str(path)!r} does not exist")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):  # a FIFO or a device would block or never end
        raise ImageInputError(f"{name}: {str(path)!r} is not a regular file (a pipe, socket or device); pass an image file")
    kind = None  # the format PIL recognised: past this point a failure means a damaged file
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below if too large
            with Image.open(path) as im:
                kind = im.format
                check_not_huge(*im.size, name, max_pixels, multiple)
                frames = getattr(im, "n_frames", 1)
                im.load()
                upright = ImageOps.exif_transpose(im) or im.copy()
        if frames > 1:
            warnings.warn(f"{name}: {str(path)!r} has {frames} frames (pages); only the first is edited",
                          DiffEditWarning, stacklevel=4)
        return upright
    except Image.DecompressionBombError as e:
        raise ImageInputError(f"{name}: {str(path)!r} is far larger than the limit of {max_pixels:,} pixels ({e})") from e
    except ImageInputError:
        raise
    except (UnidentifiedImageError, OSError) as e:
        if kind is not None:  # a truncated JPEG, say
            detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise ImageInputError(f"{name}: {str(path)!r} is a damaged {kind} file ({detail})") from e
        raise ImageInputError(f"{name}: {str(path)!r} is not an image PIL can read ({type(e).__name__})") from e
    except (ValueError, SyntaxError, EOFError, IndexError, TypeError, MemoryError) as e:  # damaged files fail in many ways
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        raise ImageInputError(f"{name}: {str(path)!r} is damaged or not an image PIL can read "
                              f"({type(e).__name__}{': ' + detail if detail else ''})") from e


def check_not_huge(w: int, h: int, name: str = "image", max_pixels: int = MAX_PIXELS, multiple: int = 1):
    "Refuse a w x h image over `max_pixels`, naming the largest size of the same shape that fits."
    if w * h > max_pixels:
        s = (max_pixels / (w * h)) ** 0.5
        fw, fh = int(w * s) // multiple * multiple, int(h * s) // multiple * multiple
        raise ImageInputError(f"{name} is {w}x{h} ({w * h:,} pixels, limit {max_pixels:,}); resize it to at most {fw}x{fh}")


def _array_to_pil(arr: np.ndarray, name: str) -> Image.Image:
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        raise ImageInputError(f"{name}: arrays must be (H, W) or (H, W, C) with C in 1, 3, 4; got channels-first {arr.shape}")
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
        raise ImageInputError(f"{name}: arrays must be (H, W) or (H, W, C) with C in 1, 3, 4; got shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint8:
        return Image.fromarray(arr)
    if arr.dtype == np.uint16:
        warnings.warn(f"{name}: 16-bit image scaled to 8 bits", DiffEditWarning, stacklevel=4)
        return Image.fromarray((arr.astype(np.float32) / 257).round().astype(np.uint8))
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageInputError(f"{name}: float array contains NaN or inf")
        if arr.min() < 0 or arr.max() > 1:
            raise ImageInputError(f"{name}: float arrays must hold values in [0, 1], got [{arr.min():.3g}, {arr.max():.3g}]")
        return Image.fromarray((arr * 255).round().astype(np.uint8))
    raise ImageInputError(f"{name}: array dtype {arr.dtype} not supported (use uint8, uint16 or float in [0, 1])")


def _pil_to_rgb(im: Image.Image, name: str) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        if np.asarray(rgba)[..., 3].min() < 255:
            warnings.warn(f"{name}: transparent pixels composited on white (alpha dropped)", DiffEditWarning, stacklevel=4)
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if not np.isfinite(arr).all():
            raise ImageInputError(f"{name}: {im.mode} image holds NaN or inf values; pass finite pixel values")
        lo, peak = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        hi, why = value_scale(im.mode, peak)
        if lo < 0:
            warnings.warn(f"{name}: {im.mode} image holds values in [{lo:g}, {peak:g}]: scaled to 8 bits from the range "
                          f"[0, {hi:g}], those below 0 clipped to black", DiffEditWarning, stacklevel=4)
        else:
            warnings.warn(f"{name}: {im.mode} image scaled to 8 bits from the range [0, {hi:g}] ({why})", DiffEditWarning,
                          stacklevel=4)
        arr8 = np.clip(arr / hi * 255, 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if im.mode not in ("L", "P"):  # grey and palette images convert exactly; CMYK, YCbCr, LAB, 1-bit ... do not
        warnings.warn(f"{name}: {im.mode} image converted to RGB (PIL's conversion: colours may shift)", DiffEditWarning,
                      stacklevel=4)
    return im.convert("RGB")


def value_scale(mode: str, peak: float) -> tuple[float, str]:
    """The value that means white in a 16-bit, 32-bit or float image of `mode` whose largest
    value is `peak`, and why: [0, 1] floats, 0-255 levels (also in a 16-bit file), 16-bit levels."""
    if mode == "F" and peak <= 1.0:
        return 1.0, "its values are all in [0, 1]"
    if peak <= 255:
        return 255.0, "its values are all at most 255: read as 8-bit levels" + (", not 16-bit" if mode.startswith("I;16") else "")
    if peak <= 65535:
        return 65535.0, "16-bit levels"
    return peak, "its values exceed 16 bits: divided by its largest value"


def fit_size(image: Image.Image, multiple: int, fit: str = "error", name: str = "image", min_side: int | None = None,
             max_pixels: int = MAX_PIXELS, max_side: int | None = None) -> Image.Image:
    """Check (or make) both sides a multiple of `multiple` pixels (the VAE scale factor).

    fit: "error" (default) refuses a size that does not fit; "resize" scales to the nearest
    multiples, and first shrinks the picture so that its longer side is at most `max_side`
    pixels when that is given; "crop" cuts the right and bottom edges. Tiny and huge images
    are refused.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    if max_side is not None and fit != "resize":
        raise ValueError(f"max_side={max_side} shrinks the picture, which only fit='resize' does (CLI: --size needs --fit resize)")
    w, h = image.size
    min_side = min_side or multiple
    if max_side is not None:
        if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < min_side:
            raise ValueError(f"max_side must be an integer >= {min_side} (this model's smallest side), got {max_side!r}")
    if w < min_side or h < min_side:
        raise ImageInputError(f"{name} is {w}x{h}; this model needs at least {min_side}x{min_side} pixels")
    if max_side is not None and max(w, h) > max_side:
        s = max_side / max(w, h)  # shrink first: a huge file is refused from its header before it gets here
        nw, nh = (max(multiple, round(v * s / multiple) * multiple) for v in (w, h))
        if min(nw, nh) < min_side:
            raise ImageInputError(f"{name} is {w}x{h}; shrunk to a longer side of {max_side} it would be {nw}x{nh}, below this "
                                  f"model's {min_side}x{min_side}: use a larger size")
        warnings.warn(f"{name} resized from {w}x{h} to {nw}x{nh} (fit='resize', longer side at most {max_side})",
                      DiffEditWarning, stacklevel=3)
        return image.resize((nw, nh), Image.LANCZOS)
    check_not_huge(w, h, name, max_pixels, multiple)
    if w % multiple == 0 and h % multiple == 0:
        return image
    if fit == "error":
        raise ImageInputError(
            f"{name} is {w}x{h}, but both sides must be multiples of {multiple} (the VAE scale factor); "
            f"fit it first with inputs.fit_inputs(..., fit='resize' or 'crop') (CLI: --fit resize|crop)"
        )
    if fit == "crop":
        nw, nh = w // multiple * multiple, h // multiple * multiple
        warnings.warn(f"{name} cropped from {w}x{h} to {nw}x{nh} (fit='crop': right and bottom edges cut)", DiffEditWarning,
                      stacklevel=3)
        return image.crop((0, 0, nw, nh))
    nw, nh = (max(multiple, round(v / multiple) * multiple) for v in (w, h))
    warnings.warn(f"{name} resized from {w}x{h} to {nw}x{nh} (fit='resize')", DiffEditWarning, stacklevel=3)
    return image.resize((nw, nh), Image.LANCZOS)


# ----------------------------------------------------------------------------- URLs and tensors, as diffusers takes them
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def from_url_or_tensor(image, name: str = "image", max_pixels: int = MAX_PIXELS, multiple: int = 1):
    """An http(s) URL -> the PIL image it serves; a torch tensor, (C, H, W) or (1, C, H, W) with C
    in 1, 3, 4 (uint8, or float in [0, 1] as diffusers' image processor takes it) -> an (H, W, C)
    numpy array; anything else is returned as it is (for `to_rgb` to read)."""
    if isinstance(image, str) and _URL.match(image):
        return _fetch_image(image, name, max_pixels, multiple)
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported
    if torch is None or not isinstance(image, torch.Tensor):
        return image
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ImageInputError(f"{name}: a tensor holds one image, (C, H, W) or (1, C, H, W); got {tuple(image.shape)} "
                                  "(pass a list of images for a batch)")
        image = image[0]
    if image.ndim == 3:
        if image.shape[0] not in (1, 3, 4):
            raise ImageInputError(f"{name}: tensors must be channels-first, (C, H, W) with C in 1, 3, 4; got {tuple(image.shape)}")
        image = image.permute(1, 2, 0)
    return tensor_to_numpy(image, name)


def tensor_to_numpy(tensor, name: str):
    """A tensor's values as a numpy array on the CPU: bfloat16 (which numpy lacks) as float32; a tensor
    on the meta device, which holds no values, refused naming the argument."""
    import torch

    if tensor.device.type == "meta":
        raise ImageInputError(f"{name}: the tensor is on the meta device and holds no values; pass one on the CPU or a GPU")
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()  # every bfloat16 value is a float32 value
    return tensor.cpu().numpy()


FETCH_SECONDS = 60.0  # the whole fetch of one URL: connecting, the headers and every byte
FETCH_BYTES = 256 * 2**20
URL_SCHEMES = ("http", "https")


class FetchError(OSError):
    "A URL could not be fetched whole within the limits; the message says why."


def fetch_url(url: str, deadline_s: float | None = None, max_bytes: int | None = None) -> bytes:
    """The bytes an http(s) URL serves (standard library only), within `deadline_s` seconds for the
    whole fetch: connecting, the headers, every redirect and the body, however slowly the server
    sends (default FETCH_SECONDS; `FetchDeadline`), and at most `max_bytes` (default FETCH_BYTES;
    refused from the Content-Length header, else as soon as the data passes it). A body shorter
    than its Content-Length is refused. Redirects are followed only to http(s). FetchError says
    what went wrong; urllib's HTTPError (a status) and URLError pass through."""
    import http.client
    import urllib.request

    deadline_s = FETCH_SECONDS if deadline_s is None else deadline_s
    max_bytes = FETCH_BYTES if max_bytes is None else max_bytes
    deadline = FetchDeadline(deadline_s)
    opener = urllib.request.build_opener(_redirect_handler(), *deadline.handlers())
    request = urllib.request.Request(url, headers={"User-Agent": "diffedit-lab"})
    try:
        with opener.open(request, timeout=deadline_s) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
                raise FetchError(f"it is {int(declared):,} bytes, over the limit of {max_bytes:,}")
            data = _read_within(response, deadline, max_bytes)
            if getattr(response, "length", None):  # bytes its Content-Length announced that never came
                raise FetchError(f"the server closed the connection {response.length:,} bytes before the end its "
                                 f"Content-Length announced ({len(data):,} bytes came)")
            return data
    except FetchError:
        raise
    except (http.client.HTTPException, OSError) as e:
        if deadline.expired or isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError):
            raise FetchError(f"not finished within {deadline_s:g} s") from e
        if isinstance(e, http.client.IncompleteRead):
            raise FetchError("the server closed the connection before the end of its answer") from e
        if isinstance(e, http.client.HTTPException):
            raise FetchError(f"the server's answer is broken ({type(e).__name__})") from e
        raise
    finally:
        deadline.cancel()


class FetchDeadline:
    """One deadline over a whole fetch. Every connection the fetch opens (one per redirect) connects
    within the time left, and when the deadline passes a timer shuts them all down, so that no
    server, however slowly it sends its headers or its body, holds a fetch past it."""

    def __init__(self, seconds: float):
        import threading
        import time

        self.seconds, self.end, self.expired = seconds, time.monotonic() + seconds, False
        self._sockets, self._lock = [], threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        "Seconds left; TimeoutError when none are."
        import time

        left = self.end - time.monotonic()
        if left <= 0 or self.expired:
            raise TimeoutError(f"not finished within {self.seconds:g} s")
        return left

    def watch(self, sock):
        "Shut `sock` down when the deadline passes (at once if it has)."
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self):
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def cancel(self):
        self._timer.cancel()

    def handlers(self) -> tuple:
        "urllib handlers for http and https whose connections keep to this deadline."
        import urllib.request

        deadline = self

        def timed(connection_class):
            class Timed(connection_class):
                def connect(self):
                    self.timeout = deadline.left()
                    super().connect()
                    deadline.watch(self.sock)

            return Timed

        class HTTP(urllib.request.HTTPHandler):
            def do_open(self, http_class, req, **kwargs):
                return super().do_open(timed(http_class), req, **kwargs)

        class HTTPS(urllib.request.HTTPSHandler):
            def do_open(self, http_class, req, **kwargs):
                return super().do_open(timed(http_class), req, **kwargs)

        return HTTP(), HTTPS()


def _shut(sock):
    import socket

    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _read_within(response, deadline: FetchDeadline, max_bytes: int) -> bytes:
    "Read a response chunk by chunk until its end, the deadline or the size limit."
    chunks, size = [], 0
    while True:
        try:
            deadline.left()
        except TimeoutError:
            raise FetchError(f"not finished within {deadline.seconds:g} s ({size:,} bytes so far)") from None
        chunk = response.read1(1 << 16)
        if not chunk:
            if deadline.expired:
                raise FetchError(f"not finished within {deadline.seconds:g} s ({size:,} bytes so far)")
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"more than the limit of {max_bytes:,} bytes")
        chunks.append(chunk)


def _redirect_handler():
    import urllib.request

    class HttpOnly(urllib.request.HTTPRedirectHandler):
        "Follow a redirect only to another http(s) URL."

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            scheme = newurl.split("://", 1)[0].lower() if "://" in newurl else "http"
            if scheme not in URL_SCHEMES:
                raise FetchError(f"it redirects to {newurl!r}; only http:// and https:// are followed")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return HttpOnly


def is_url(text) -> bool:
    "True if `text` is a string that starts like a URL, scheme://, whatever the scheme."
    return isinstance(text, str) and _URL.match(text) is not None


def check_scheme(url: str, name: str):
    "Refuse a URL whose scheme is not http(s) (file://, ftp://, ...), naming the argument."
    scheme = url.split("://", 1)[0].lower()
    if scheme not in URL_SCHEMES:
        raise ImageInputError(f"{name}: only http:// and https:// URLs are accepted, got {scheme}:// ({url!r})")


def _fetch_image(url: str, name: str, max_pixels: int, multiple: int) -> Image.Image:
    "Fetch an http(s) URL (`fetch_url`) and decode it, its size checked from the header first."
    import urllib.error
    import urllib.request

    check_scheme(url, name)
    try:
        data = fetch_url(url)
    except urllib.error.HTTPError as e:
        if 300 <= e.code < 400:  # urllib's own message for this spans three lines
            raise ImageInputError(f"{name}: {url!r} redirects in a loop or more than "
                                  f"{urllib.request.HTTPRedirectHandler.max_redirections} times (HTTP {e.code})") from e
        raise ImageInputError(f"{name}: {url!r} answered HTTP {e.code} ({' '.join(str(e.reason).split())})") from e
    except FetchError as e:
        raise ImageInputError(f"{name}: could not fetch {url!r}: {e}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ImageInputError(f"{name}: could not fetch {url!r} ({reason}); offline? download it and pass the file") from e
    try:
        im = Image.open(io.BytesIO(data))
        check_not_huge(*im.size, name, max_pixels, multiple)
        im.load()
        im = ImageOps.exif_transpose(im) or im  # upright, as a file is read
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ImageInputError(f"{name}: {url!r} did not serve an image PIL can read ({type(e).__name__})") from e
    return im
