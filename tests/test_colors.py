"""Instance colours as the inference stage measures them for the tracker."""

from __future__ import annotations

import numpy as np

from streamseg.inference.colors import instance_colors

H, W = 120, 160


def scene() -> np.ndarray:
    image = np.zeros((H, W, 3), np.uint8)
    image[:] = (0, 0, 255)  # blue background
    image[20:60, 20:60] = (0, 255, 0)  # a green ring of 2 px ...
    image[22:58, 22:58] = (255, 0, 0)  # ... around a red square
    return image


def test_the_median_of_the_mask_core() -> None:
    image = scene()
    rng = np.random.default_rng(0)
    full = np.ones((28, 28), np.float32)
    holes = full.copy()
    holes[rng.random((28, 28)) < 0.05] = 0.2  # cells the model is unsure of
    boxes = np.array(
        [
            [20, 20, 60, 60],  # the square, ring included: the eroded core is red
            [18, 18, 62, 62],  # a box a little too large, its mask says where the square is
            [100, 80, 103, 82],  # a tiny box on the background
            [20, 20, 60, 60],  # no cell above the threshold
            [-50, -50, -10, -10],  # outside the frame
        ],
        np.float32,
    )
    square_in_larger = np.zeros((28, 28), np.float32)
    square_in_larger[2:26, 2:26] = 0.9
    masks = np.stack([full, square_in_larger, holes, full * 0.1, full])
    colors = instance_colors(image, boxes, masks)
    assert colors.shape == (5, 3) and colors.dtype == np.float32
    assert colors[0].tolist() == [255.0, 0.0, 0.0]
    assert colors[1].tolist() == [255.0, 0.0, 0.0]
    assert colors[2].tolist() == [0.0, 0.0, 255.0]
    assert np.isnan(colors[3:]).all()
    assert instance_colors(image, np.zeros((0, 4), np.float32), np.zeros((0, 28, 28))).shape == (
        0,
        3,
    )


def test_a_thin_mask_uses_all_its_cells() -> None:
    """A mask one cell wide erodes to nothing: all of its cells count."""
    image = scene()
    mask = np.zeros((1, 28, 28), np.float32)
    mask[0, :, 14] = 1.0  # the middle column of the box: x = 40
    colors = instance_colors(image, np.array([[20, 20, 61, 60]], np.float32), mask)
    # Rows of the box 20..59: 2 green cells at each end of 28 would be 4 of 28; the median is red.
    assert colors.tolist() == [[255.0, 0.0, 0.0]]
