"""Step 1 of DiffEdit, all of it: where do the two prompts disagree? The mask.

Noise the image latents n times (independent draws) to the mask strength, ask the UNet for
its noise prediction under the source prompt and under the target prompt, and average
|eps_target - eps_source| over the draws and the latent channels (`noise_difference`). Where
the prompts agree (the background) the predictions match; where the image must change they
differ. The map is scaled to [0, 1] (`scale_map`: min-max, `normalise_map`, or diffusers' clamp at a
multiple of its mean, `clamp_map`), upsampled to the image
(`upsample_map`), optionally refined onto the image's edges (`refine_map`), then blurred,
thresholded and its holes filled (`make_mask`); `mask_maps` runs the whole chain from encoded
inputs, `user_mask` checks a mask the caller brings instead (no model work), and `latent_mask` carries the
mask back to the latent grid for steps 2 and 3 (`edit`).
`post_recipe_mask` is the blog post's mask line exactly, for comparison: threshold the raw map, blur
the 0/1 mask as an 8-bit array (so each blurred value rounds to 0 or 1) and threshold again: the outline
smooths and pinholes fill, no margin is added; `post_recipe_latent_mask` runs it where the post applied
it, on the latent grid (its blur in latent cells), then brings the mask up to the image.
Taught in notebooks 04_noise_to_mask and 05_threshold_and_blur; `ratio_mask`, diffusers' rule in place of
min-max, and `refine_for` on an attention map in 09_successors.

Classifier-free guidance does not change the map: with a shared unconditional prediction u,
    (u + g (c_t - u)) - (u + g (c_s - u)) = g (c_t - c_s),
so only the two conditional predictions are computed, and the normalisation removes g.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import DiffEditWarning, check_kernel, check_threshold
from .images import MAX_PIXELS, read_picture, tensor_to_numpy, value_scale
from .noising import add_noise, draw_noise, predict_noise, timestep_at


DRAWS_AT_ONCE = 64  # noise draws held in memory at once (with their 2 x 64 embeddings); more are taken chunk by chunk


@torch.no_grad()
def noise_difference(model, latents, source_emb, target_emb, scheduler, n_noise=10, strength=0.5,
                     generator=None, batch_size=32) -> torch.Tensor:
    """Mean |eps_target - eps_source| over `n_noise` noise draws and the latent channels.

    latents: (1, C, h, w) clean image latents. source_emb, target_emb: (1, L, D).
    Returns the raw (unnormalised) map, (h, w) float32.
    The draws are taken DRAWS_AT_ONCE at a time (the same noise as drawing them all at once), so memory
    does not grow with n_noise; the 2n UNet evaluations of a chunk run in batches of at most `batch_size` samples.
    """
    t = timestep_at(scheduler, strength)
    means = []  # (draws, their (h, w) mean) of each chunk
    for first in range(0, n_noise, DRAWS_AT_ONCE):
        n = min(DRAWS_AT_ONCE, n_noise - first)
        noise = draw_noise((n, *latents.shape[1:]), generator, latents.device, latents.dtype)  # (n, C, h, w)
        noisy = add_noise(scheduler, latents.expand(n, -1, -1, -1), noise, t)  # (n, C, h, w)
        diff = prompt_difference(model, noisy, t, source_emb.expand(n, -1, -1), target_emb.expand(n, -1, -1),
                                 batch_size)  # (n, C, h, w)
        means.append((n, diff.abs().mean(dim=(0, 1))))  # (h, w)
    if len(means) == 1:
        return means[0][1]
    return sum(n * m for n, m in means) / n_noise  # (h, w)


@torch.no_grad()
def prompt_difference(model, noisy, timestep, source_emb, target_emb, batch_size=32) -> torch.Tensor:
    """eps_target - eps_source for each noisy sample: noisy (N, C, h, w) at `timestep`, source_emb and
    target_emb (N, L, D), one row per sample. Returns (N, C, h, w) float32 from 2N UNet samples, run in
    batches of at most `batch_size` (guidance cancels from the difference: see the module's note)."""
    n = len(noisy)
    # every noisy sample once with each prompt: (2N, C, h, w) and (2N, L, D)
    x = torch.cat([noisy, noisy])
    emb = torch.cat([source_emb, target_emb])
    preds = torch.cat([predict_noise(model, x[i : i + batch_size], timestep, emb[i : i + batch_size])
                       for i in range(0, 2 * n, batch_size)])
    src, tgt = preds.float().chunk(2)  # (N, C, h, w) each
    return tgt - src


def normalise_map(raw: torch.Tensor) -> torch.Tensor:
    "Min-max to [0, 1]; a constant map (e.g. identical prompts) becomes all zeros, never NaN."
    raw = torch.nan_to_num(raw.float(), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = raw.min(), raw.max()
    if not hi - lo > 1e-8 * max(1.0, float(hi.abs())):  # an overflowing range (inf) counts as not constant
        return torch.zeros_like(raw)
    if not torch.isfinite(hi - lo):  # a range past float32's limit: divide first so it stays finite
        scale = torch.maximum(hi.abs(), lo.abs())
        raw, lo, hi = raw / scale, lo / scale, hi / scale
    return ((raw - lo) / (hi - lo)).clamp(0, 1)


def clamp_map(raw: torch.Tensor, ratio: float = 3.0) -> torch.Tensor:
    """diffusers' StableDiffusionDiffEditPipeline rule: raw / (ratio x mean(raw)), clipped to [0, 1].
    Every value at or above ratio times the mean becomes 1, so a few extreme cells cannot squash the
    rest of the map towards 0 as they do under min-max. raw: (h, w) >= 0; an all-zero map stays zero."""
    from .config import check_clamp_ratio

    check_clamp_ratio(ratio)
    raw = torch.nan_to_num(raw.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    top = raw.mean() * ratio
    if not top > 0:
        return torch.zeros_like(raw)
    if not torch.isfinite(top):  # past float32's range: divide first so it stays finite
        raw = raw / raw.max()
        top = raw.mean() * ratio
    return (raw / top).clamp(0, 1)


def scale_map(raw: torch.Tensor, normalise: str = "minmax", ratio: float = 3.0) -> torch.Tensor:
    "The raw map (h, w) scaled to [0, 1] by `normalise`: \"minmax\" (`normalise_map`) or \"clamp\" (`clamp_map`)."
    if normalise == "minmax":
        return normalise_map(raw)
    if normalise == "clamp":
        return clamp_map(raw, ratio)
    raise ValueError(f"normalise must be 'minmax' or 'clamp', got {normalise!r}")


def upsample_map(diff_map: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    "(h, w) map -> (H, W) float32 numpy array, bilinear, values kept in [0, 1]."
    up = F.interpolate(diff_map[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    return up.clamp(0, 1).cpu().numpy()


def blur_mask(x: np.ndarray, kernel: int) -> np.ndarray:
    """Gaussian blur of a 2-D map or mask with an odd `kernel` (pixels); 0 returns a copy.
    The sigma follows the kernel (OpenCV's rule: 0.3 ((k - 1) / 2 - 1) + 0.8)."""
    import cv2

    kernel = check_kernel("kernel", kernel)
    x = np.asarray(x, dtype=np.float32)
    if kernel <= 1:
        return x.copy()
    return cv2.GaussianBlur(x, (kernel, kernel), 0, borderType=cv2.BORDER_REPLICATE)


def threshold_mask(x: np.ndarray, threshold: float) -> np.ndarray:
    "Boolean mask of the values strictly above `threshold`: a higher threshold never grows it."
    return np.asarray(x) > threshold


def fill_holes(mask: np.ndarray) -> np.ndarray:
    "Fill the regions the mask encloses completely (a ring becomes a disc)."
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(np.asarray(mask, dtype=bool))


def _box(x: np.ndarray, r: int) -> np.ndarray:
    "Mean over the (2r + 1) x (2r + 1) window around each pixel (per channel)."
    import cv2

    return cv2.blur(x, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)


def refine_map(diff_map: np.ndarray, image, radius: int, eps: float = 1e-4) -> np.ndarray:
    """Edge-aware refinement of a difference map with the image as guide (a colour guided filter).

    In every (2r + 1)^2 window the refined map is an affine function of the pixel colours,
    a . rgb + b, fit to the map by ridge regression (eps). Where the window holds an object
    edge, the map's soft latent-resolution edge moves onto the image's sharp one; in flat
    regions it is the local mean. diff_map: (H, W) in [0, 1]; image: (H, W, 3) RGB (PIL or
    uint8); radius in pixels (0: no change). Returns (H, W) float32 in [0, 1].
    """
    p = np.asarray(diff_map, dtype=np.float32)
    if radius <= 0:
        return p.copy()
    guide = np.asarray(image, dtype=np.float32)[..., :3] / 255.0  # (H, W, 3)
    if guide.shape[:2] != p.shape:
        raise ValueError(f"image must match the map's size {p.shape}, got {guide.shape[:2]}")
    r = int(radius)
    mean_i, mean_p = _box(guide, r), _box(p, r)  # (H, W, 3), (H, W)
    cov_ip = _box(guide * p[..., None], r) - mean_i * mean_p[..., None]  # (H, W, 3)
    outer = guide[..., :, None] * guide[..., None, :]  # (H, W, 3, 3)
    var_i = _box(outer.reshape(*p.shape, 9), r).reshape(*p.shape, 3, 3) - mean_i[..., :, None] * mean_i[..., None, :]
    a = np.linalg.solve(var_i + eps * np.eye(3, dtype=np.float32), cov_ip[..., None])[..., 0]  # (H, W, 3)
    b = mean_p - (a * mean_i).sum(-1)  # (H, W)
    out = (_box(a, r) * guide).sum(-1) + _box(b, r)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def make_mask(diff_map: np.ndarray, threshold: float, blur: int = 0, holes: bool = False) -> np.ndarray:
    """Difference map (H, W) in [0, 1] -> boolean mask (H, W): blur, threshold, fill holes.
    threshold must be in [0, 1]; blur 0 (off) or odd (an even value is rounded up, with a warning)."""
    check_threshold(threshold)
    blur = check_kernel("blur", blur)
    mask = threshold_mask(blur_mask(diff_map, blur), threshold)
    return fill_holes(mask) if holes else mask


def user_mask(mask, shape: tuple[int, int], name: str = "mask", original: tuple[int, int] | None = None,
              fit: str = "error") -> np.ndarray:
    """A mask the caller brings, checked and binarised: (H, W) bool at `shape` = (H, W).
    A mask at the image's `original` (H, W), before `fit` ("crop" or "resize") made it `shape`,
    is cropped or resized (nearest) the same way.

    mask: a bool array; a float array (or tensor) in [0, 1], binarised at 0.5 (values >= 0.5 are
    inside, as in diffusers' inpainting); an integer array of 0 and 1; a PIL image (its values
    scaled to [0, 1] by `mask_levels`, then binarised at 0.5), or a path or an http(s) URL of
    one. Raises ValueError/TypeError naming `name`; no model work.
    """
    if isinstance(mask, (str, os.PathLike)):
        mask = read_picture(mask if isinstance(mask, str) else Path(mask), name, MAX_PIXELS, 1)
    if isinstance(mask, Image.Image):
        mask = mask_levels(mask, name)
    if isinstance(mask, torch.Tensor):
        mask = tensor_to_numpy(mask, name)
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{name} must be a bool or float array, a PIL 'L' image or a path, got {type(mask).__name__}")
    sizes = {tuple(shape), tuple(original or shape)}
    if mask.ndim != 2 or mask.shape not in sizes:
        size = f"{mask.shape[1]}x{mask.shape[0]}" if mask.ndim == 2 else f"shape {mask.shape}"
        accepted = " or ".join(f"{w}x{h}" for h, w in sorted(sizes, reverse=True))
        raise ValueError(f"{name} is {size}, but it must be (H, W) at the image's size {accepted}")
    binary = _binarise(mask, name)
    return binary if binary.shape == tuple(shape) else fit_mask(binary, shape, fit)


def fit_mask(mask: np.ndarray, shape: tuple[int, int], fit: str) -> np.ndarray:
    "A (H, W) bool mask taken to `shape` as `fit` took its image: the same crop, or a nearest-neighbour resize."
    h, w = shape
    if fit == "crop":
        return mask[:h, :w].copy()
    small = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)
    return np.asarray(small) >= 128


def _binarise(mask: np.ndarray, name: str) -> np.ndarray:
    "A checked (H, W) bool array from a bool, 0/1 integer or [0, 1] float array."
    if mask.dtype == bool:
        return mask.copy()
    if np.issubdtype(mask.dtype, np.integer):
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{name}: integer arrays must hold only 0 and 1, got values in [{mask.min()}, {mask.max()}]; "
                             "pass a float array in [0, 1] or a PIL 'L' image for grey levels")
        return mask.astype(bool)
    if not np.issubdtype(mask.dtype, np.floating):
        raise TypeError(f"{name}: array dtype {mask.dtype} not supported (use bool, 0/1 integers or float in [0, 1])")
    if not np.isfinite(mask).all():
        raise ValueError(f"{name}: float values must be in [0, 1], got {int((~np.isfinite(mask)).sum())} NaN or inf")
    if mask.min() < 0 or mask.max() > 1:
        raise ValueError(f"{name}: float values must be in [0, 1], got [{mask.min():.3g}, {mask.max():.3g}]")
    return mask >= 0.5


def mask_levels(im: Image.Image, name: str = "mask") -> np.ndarray:
    """A mask picture as (H, W) values to binarise at 0.5, read with the images' value-scale rules
    (`images.value_scale`): 8-bit grey as levels of 255; 16-bit and 32-bit integers of only 0 and 1
    as 0 and 1, else as 8-bit or 16-bit levels; floats as they are, which must lie in [0, 1].
    Transparency is refused (tools read it both ways: transparent as inside, or as outside), and so is a
    colour picture (a photo passed by mistake); grey stored as colour is converted, with a warning."""
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            raise ValueError(f"{name}: the mask has transparent pixels, which tools read both ways (transparent as inside, or "
                             f"as outside); save it as a grey image without alpha, white = edit")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            return arr
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name}: a {im.mode} mask must not hold negative values, got values down to {arr.min():g}")
        if np.isin(arr, (0, 1)).all():
            return arr
        return arr / value_scale(im.mode, float(arr.max()) if arr.size else 0.0)[0]
    if im.mode not in ("L", "1"):
        rgb = np.asarray(im.convert("RGB"))  # (H, W, 3)
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
            raise ValueError(f"{name}: the mask is a colour picture (its {im.mode} channels differ), not a mask: pass a grey "
                             f"image, white = edit, black = keep")
        warnings.warn(f"{name}: {im.mode} image converted to grey (L)", DiffEditWarning, stacklevel=4)
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def post_recipe_mask(raw_map: np.ndarray, threshold: float = 0.1, blur: int = 7) -> np.ndarray:
    """The blog post's mask line, exactly: `GaussianBlur(uint8(raw_map > threshold), (blur, blur), 0) > threshold`.
    The blur runs on an 8-bit 0/1 mask, so OpenCV rounds every blurred value to 0 or 1 and the result is
    where the blurred mask is at least one half: the outline smooths, pinholes and notches fill and specks
    thinner than the kernel vanish, but no margin is added around the outline. `blur` 0 skips the blur.
    raw_map: (H, W) in [0, 1]; returns (H, W) bool."""
    import cv2

    check_threshold(threshold)
    blur = check_kernel("blur", blur)
    binary = threshold_mask(raw_map, threshold).astype(np.uint8)  # (H, W) in {0, 1}, 8-bit as in the post
    if blur == 0:
        return binary > threshold
    return cv2.GaussianBlur(binary, (blur, blur), 0.0) > threshold  # OpenCV's default border, as in the post


def ratio_mask(raw: torch.Tensor | np.ndarray, ratio: float = 3.0) -> np.ndarray:
    """diffusers' DiffEdit rule (its `mask_thresholding_ratio`) as a mask: `clamp_map`, then keep
    what is above 0.5, i.e. the cells above ratio / 2 x the mean. raw: (h, w), not normalised.
    Returns (h, w) float32 in {0, 1}."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < float("inf"):
        raise ValueError(f"ratio must be a number > 0 (diffusers' default is 3.0), got {ratio!r}")
    m = torch.as_tensor(np.asarray(raw, dtype=np.float32))
    return (clamp_map(m, ratio) > 0.5).numpy().astype(np.float32)


def post_recipe_latent_mask(latent_map, size: tuple[int, int], threshold: float = 0.1, blur: int = 7) -> np.ndarray:
    """The threshold-then-blur recipe on the latent grid, where its kernel was chosen: `blur` is in
    latent cells (7 cells are 28 px on the bundled model, 56 px on Stable Diffusion). latent_map:
    (h, w) in [0, 1], a tensor or array; the (h, w) mask is brought up to `size` = (H, W) pixels
    by nearest neighbour, each cell a block of pixels. Returns (H, W) bool."""
    small = np.asarray(latent_map.cpu() if isinstance(latent_map, torch.Tensor) else latent_map, dtype=np.float32)
    if small.ndim != 2:
        raise ValueError(f"latent_map must be (h, w), got shape {small.shape}")
    mask = post_recipe_mask(small, threshold, blur)  # (h, w) bool
    up = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=tuple(size), mode="nearest")[0, 0]
    return up.numpy() > 0.5


def latent_mask(mask: np.ndarray, latent_size: tuple[int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel mask (H, W) -> latent mask (1, 1, h, w): a latent cell is edited if any of its
    pixels is in the mask, so the edit covers the whole object."""
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    return F.adaptive_max_pool2d(m, latent_size).to(device=device, dtype=dtype)


@torch.no_grad()
def raw_difference(model, x0, source_emb, target_emb, scheduler, config, generator=None) -> torch.Tensor:
    """`noise_difference` with config's n_noise, mask_strength and batch size: the (h, w) float32 map on
    the latent grid, before any scaling; zeros for prompts the text model cannot tell apart. Refuses NaN/inf."""
    if torch.equal(source_emb, target_emb):  # prompts the text model cannot tell apart: no difference, by definition
        raw = torch.zeros(x0.shape[-2:], device=x0.device)
    else:
        raw = noise_difference(model, x0, source_emb, target_emb, scheduler, config.n_noise, config.mask_strength,
                               generator, config.mask_batch_size)
    check_finite(raw, "the difference map", model)
    return raw


@torch.no_grad()
def mask_maps(model, image, x0, source_emb, target_emb, scheduler, config, generator=None) -> tuple[np.ndarray, np.ndarray]:
    """Step 1 of DiffEdit from encoded inputs: (raw_map, map), each (H, W) float32 in [0, 1].

    raw_map is the noise-prediction difference scaled to [0, 1] by config.normalise and upsampled to the image; map is the
    same refined with the image's edges when config.refine (else raw_map itself). The mask
    is `make_mask(map, config.threshold, config.blur, config.fill_holes)`.
    """
    raw = raw_difference(model, x0, source_emb, target_emb, scheduler, config, generator)  # (h, w)
    raw_map = upsample_map(scale_map(raw, config.normalise, config.clamp_ratio), (image.height, image.width)).astype(np.float32)
    if not config.refine or not raw_map.any():
        return raw_map, raw_map
    return raw_map, refine_for(model, raw_map, image, config)


def refine_for(model, a_map: np.ndarray, image, config) -> np.ndarray:
    "`refine_map` with a config's window (`refine_radius` latent cells, in pixels for `model`) and ridge term."
    radius = config.refine_radius * model.vae_scale_factor  # latent cells -> pixels
    return refine_map(a_map, image, radius, config.refine_eps)


def check_finite(x: torch.Tensor, what: str, model, setting: str | None = None):
    """Refuse to turn NaN/inf into a mask or a picture: in half precision the UNet overflowed; in
    float32 a `setting` (e.g. "guidance=1e+30") pushed the values past float32's range."""
    if not torch.isfinite(x).all():
        if model.dtype != torch.float32:
            hint = "; load the model with dtype=torch.float32"
        else:
            hint = f"; {setting} is too large for float32: use a smaller value" if setting else ""
        raise RuntimeError(f"the UNet produced NaN or inf in {model.dtype} ({what}){hint}")
