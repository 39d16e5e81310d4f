"""The helpers the notebooks teach with: the clean latents a noise prediction implies, the
threshold-then-blur recipe, and the pictures (outlined masks, maps on one scale)."""

import numpy as np
import pytest
import torch

from diffedit_helpers import make_scheduler, post_recipe_mask, predicted_x0, threshold_mask
from diffedit_helpers.noising import add_noise, alpha_bar
from diffedit_helpers.plotting import OUTLINE_COLOURS, mask_edge, outline, show, show_maps


@pytest.fixture(scope="module")
def scheduler(tiny_model):
    return make_scheduler(tiny_model, 50)


def test_predicted_x0_from_the_true_noise_is_the_clean_latents(scheduler, gen):
    x0 = torch.randn((2, 4, 8, 8), generator=gen)
    noise = torch.randn((2, 4, 8, 8), generator=gen)
    for t in (1, 481, 981):
        x_t = add_noise(scheduler, x0, noise, t)
        torch.testing.assert_close(predicted_x0(scheduler, x_t, noise, t), x0, atol=2e-4, rtol=1e-4)
        wrong = predicted_x0(scheduler, x_t, torch.zeros_like(noise), t)
        assert (wrong - x0).abs().max() > 0.01  # another noise gives another x0


def test_a_ddim_step_is_x0_hat_renoised_to_the_next_level(scheduler, gen):
    x_t = torch.randn((1, 4, 8, 8), generator=gen)
    eps = torch.randn((1, 4, 8, 8), generator=gen)
    for k in (0, 25, 49):
        t = int(scheduler.timesteps[k])
        t_next = int(scheduler.timesteps[k + 1]) if k + 1 < len(scheduler.timesteps) else -1
        a_next = alpha_bar(scheduler, t_next) if t_next >= 0 else scheduler.final_alpha_cumprod.float()
        by_hand = a_next.sqrt() * predicted_x0(scheduler, x_t, eps, t) + (1 - a_next).sqrt() * eps
        torch.testing.assert_close(by_hand, scheduler.step(eps, t, x_t).prev_sample, atol=1e-5, rtol=1e-5)


def _posts_line(all_preds, threshold=0.1, blur=7):
    "The blog post's two lines, written as it writes them (initial_mask, then the 8-bit blur)."
    import cv2 as cv

    initial_mask = (all_preds > threshold).astype(float)
    return (cv.GaussianBlur(np.array(initial_mask, dtype=np.uint8), (blur, blur), 0.) > threshold).astype(float)


def _smooth_random_maps(n, size, seed=0):
    "Min-max scaled random maps with blobs, edges and specks, like difference maps: (size, size) float32 each."
    import cv2

    rng = np.random.default_rng(seed)
    for _ in range(n):
        m = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), rng.uniform(0.5, 3))
        m = (m - m.min()) / (m.max() - m.min())
        yield m ** rng.uniform(1, 4)  # mostly dark, a few bright regions, as a difference map


def test_the_post_recipe_is_the_posts_line_on_any_map_where_a_float_blur_is_not():
    import cv2

    differs = 0
    for size, blur, threshold in ((16, 7, 0.1), (64, 7, 0.1), (16, 3, 0.3), (64, 5, 0.05)):
        for m in _smooth_random_maps(20, size, seed=size + blur):
            ours = post_recipe_mask(m, threshold, blur)
            assert ours.dtype == bool and ours.shape == m.shape
            np.testing.assert_array_equal(ours, _posts_line(m, threshold, blur) > 0)
            binary = (m > threshold).astype(np.float32)
            float_blur = cv2.GaussianBlur(binary, (blur, blur), 0, borderType=cv2.BORDER_REPLICATE) > threshold
            differs += not np.array_equal(float_blur, ours)
    assert differs >= 40  # a floating-point blur grows the mask: on most of these maps it is not the post's line


def test_the_post_recipe_smooths_the_mask_and_does_not_grow_it():
    raw = np.zeros((64, 64), np.float32)
    raw[20:40, 20:40] = 0.5  # a 20 x 20 square above the threshold
    raw[30, 30] = 0.0  # a pinhole inside it
    raw[5, 50] = 0.9  # one isolated pixel
    mask = post_recipe_mask(raw, threshold=0.1, blur=7)
    square = np.zeros_like(mask)
    square[20:40, 20:40] = True
    assert mask[30, 30]  # the pinhole filled
    assert not mask[5, 50]  # the speck gone
    assert not (mask & ~square).any()  # nothing outside the square: no growth
    assert mask[21:39, 21:39].all() and (square & ~mask).sum() <= 4 * 3  # at most the corners rounded off


def test_the_post_recipe_without_blur_is_the_threshold():
    raw = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    np.testing.assert_array_equal(post_recipe_mask(raw, 0.3, blur=0), threshold_mask(raw, 0.3))
    with pytest.raises(ValueError, match="threshold"):
        post_recipe_mask(raw, 1.5)


def test_outline_draws_the_edge_and_darkens_only_the_outside():
    image = np.full((16, 16, 3), 200, np.uint8)
    image[..., 0] = 255  # a pinkish picture: red would vanish on it
    mask = np.zeros((16, 16), bool)
    mask[4:12, 4:12] = True
    edge = mask_edge(mask)
    assert edge.sum() == 28 and not edge[5:11, 5:11].any()  # the ring of an 8 x 8 square
    out = np.asarray(outline(image, mask))
    np.testing.assert_array_equal(out[5:11, 5:11], image[5:11, 5:11])  # inside untouched
    assert (out[~mask] < image[~mask]).all()  # outside darker
    colour = tuple(out[4, 4])
    assert colour in OUTLINE_COLOURS and colour != (255, 40, 40)  # a colour far from the picture's
    assert np.linalg.norm(np.array(colour, float) - image[0, 0]) > 200


def test_maps_share_one_scale_and_have_a_colour_bar():
    import matplotlib

    matplotlib.use("Agg")
    fig = show_maps([np.zeros((4, 4)), np.full((4, 4), 3.0)], ["a", "b"], label="value", axes_labels=("x", "y"))
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2 and all(im.get_clim() == (0.0, 3.0) for im in images)
    assert len(fig.axes) == 3 and fig.axes[-1].get_ylabel() == "value"  # two panels and the bar
    fig2 = show([np.zeros((4, 4), np.float32), np.zeros((4, 4), bool)], cmap="magma")
    assert len(fig2.axes) == 3  # a bar for the map, none for the mask


def test_the_posts_recipe_on_the_latent_grid_blurs_in_cells_and_brings_whole_cells_up():
    from diffedit_helpers import post_recipe_latent_mask

    small = np.zeros((16, 16), np.float32)
    small[6:10, 6:10] = 1.0  # a 4 x 4-cell object
    mask = post_recipe_latent_mask(torch.from_numpy(small), (64, 64), threshold=0.1, blur=7)
    cells = post_recipe_mask(small, 0.1, 7)  # the same recipe, at latent resolution
    assert mask.shape == (64, 64) and mask.dtype == bool
    np.testing.assert_array_equal(mask, np.kron(cells, np.ones((4, 4), bool)))  # each cell a 4 x 4 block
    # a 7-cell kernel (sigma 1.4 cells) on a 4-cell object: the rounded blur keeps only its core, never more
    assert 0 < cells.sum() < (small > 0.1).sum() and not (cells & (small <= 0.1)).any()
    # the same 7 read as image pixels (under two cells here) keeps far more of the upsampled object
    pixels = post_recipe_mask(np.kron(small, np.ones((4, 4), np.float32)), 0.1, 7)
    assert pixels.sum() > mask.sum()
    with pytest.raises(ValueError, match=r"latent_map must be \(h, w\)"):
        post_recipe_latent_mask(np.zeros((1, 16, 16)), (64, 64))


def test_every_mask_on_one_picture_is_outlined_in_the_same_colour():
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, :8] = (255, 255, 0)  # half yellow: the edge colour depended on which half a mask's edge lay in
    small, right = np.zeros((16, 16), bool), np.zeros((16, 16), bool)
    small[2:6, 2:6] = True  # its edge on the yellow half
    right[10:14, 10:14] = True  # its edge on the black half
    a, b = np.asarray(outline(image, small)), np.asarray(outline(image, right))
    assert tuple(a[2, 2]) == tuple(b[10, 10]) and tuple(a[2, 2]) in OUTLINE_COLOURS
