"""Post-processing of a batch of masks in torch (the accelerators' path) gives scipy's masks."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from ncawss.method.readout.components import components, fill_holes_masks, post_process, post_process_masks


def disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_components_label_each_4_connected_region_by_its_first_pixel():
    masks = np.zeros((2, 6, 7), bool)
    masks[0, 1:3, 1:3] = True          # a square
    masks[0, 3, 3] = True              # touches the square only at a corner: its own component
    masks[0, 5, 0:7] = True            # a bar along the bottom
    masks[1, 0, 6] = True              # one pixel in the corner
    labels = components(torch.from_numpy(masks)).numpy()
    assert set(labels[0][masks[0]]) == {1 * 7 + 1, 3 * 7 + 3, 5 * 7 + 0}
    assert (labels[0][~masks[0]] == -1).all() and labels[1, 0, 6] == 6 and (labels[1] == -1).sum() == 41
    scipy_labels, count = ndimage.label(masks[0])
    assert count == 3 and len(np.unique(labels[0][masks[0]])) == count


def test_largest_and_centre_pick_different_blobs_and_fill_their_holes():
    big = disc(40, 40, 10, 10, 8)       # larger, off-centre
    small = disc(40, 40, 20, 22, 4)     # smaller, nearest the centre
    hole = disc(40, 40, 10, 10, 3)
    mask = (big & ~hole) | small
    batch = torch.from_numpy(np.stack([mask, np.zeros_like(mask)]))
    largest, centre = post_process_masks(batch, "largest").numpy(), post_process_masks(batch, "centre").numpy()
    assert (largest[0] == big).all()    # the hole is filled
    assert (centre[0] == small).all()
    assert not largest[1].any() and not centre[1].any()  # an empty mask stays empty


def test_a_background_region_open_to_the_border_is_not_a_hole():
    mask = disc(20, 20, 10, 10, 8) & ~disc(20, 20, 10, 18, 4)  # a bite that reaches the right border
    mask &= ~disc(20, 20, 10, 6, 2)                             # and a true hole
    filled = fill_holes_masks(torch.from_numpy(mask)[None])[0].numpy()
    assert (filled == (mask | disc(20, 20, 10, 6, 2))).all()


def test_ties_go_to_the_component_that_starts_first_as_in_scipy():
    mask = np.zeros((9, 9), bool)
    mask[1:3, 1:3] = mask[6:8, 6:8] = True   # same size, same distance from the centre
    for post in ("largest", "centre"):
        got = post_process_masks(torch.from_numpy(mask)[None], post)[0].numpy()
        assert (got == post_process(mask, post)).all() and got[1, 1] and not got[7, 7]


@pytest.mark.parametrize("post", ["largest", "centre"])
@pytest.mark.parametrize("shape, density", [((13, 17), 0.5), ((40, 31), 0.6), ((64, 64), 0.45), ((1, 6), 0.5)])
def test_random_masks_post_process_as_scipy_does(post, shape, density):
    masks = np.random.default_rng(sum(shape)).random((12, *shape)) < density
    masks[0] = False
    got = post_process_masks(torch.from_numpy(masks), post).numpy()
    want = np.stack([post_process(m, post) for m in masks])
    assert want.any() and (got == want).all()
