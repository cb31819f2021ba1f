"""postprocess.render: overlay drawing, pixel by pixel on a uniform frame."""

from __future__ import annotations

import numpy as np

from streamseg.postprocess.masks import LocalMasks
from streamseg.postprocess.render import class_color, draw_instances

GREY = (100, 150, 200)
NAMES = ["__background__", "circle", "square", "triangle"]


def frame(h: int, w: int) -> np.ndarray:
    image = np.empty((h, w, 3), np.uint8)
    image[:] = GREY
    return image


def local(crops: list[np.ndarray], corners: list[tuple[int, int]], size) -> LocalMasks:
    """LocalMasks from per-instance crops (bool[h, w]) and their (x0, y0) in the frame."""
    hm = max((c.shape[0] for c in crops), default=0)
    wm = max((c.shape[1] for c in crops), default=0)
    masks = np.zeros((len(crops), hm, wm), bool)
    for i, c in enumerate(crops):
        masks[i, : c.shape[0], : c.shape[1]] = c
    return LocalMasks(
        masks=masks,
        x0=np.array([x for x, _ in corners], np.int32),
        y0=np.array([y for _, y in corners], np.int32),
        h=np.array([c.shape[0] for c in crops], np.int32),
        w=np.array([c.shape[1] for c in crops], np.int32),
        frame_size=size,
    )


def test_class_color_is_stable_and_differs_per_label():
    assert class_color(1) == class_color(1) == (38, 101, 255)
    colors = [class_color(label) for label in (1, 2, 3)]
    assert len(set(colors)) == 3
    for c in colors:
        assert all(type(v) is int and 0 <= v <= 255 for v in c)


def test_no_instances_gives_an_equal_copy():
    image = frame(30, 40)
    out = draw_instances(
        image,
        local([], [], (30, 40)),
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.int64),
        np.zeros(0, np.float32),
        NAMES,
    )
    assert out is not image
    np.testing.assert_array_equal(out, frame(30, 40))


def test_one_instance_blends_its_mask_and_outlines_its_box():
    # 600 px frames draw 2 px outlines: their middle pixels carry the exact class colour.
    h, w = 600, 640
    x1, y1, x2, y2 = 200, 300, 350, 380
    crop = np.zeros((y2 - y1 + 1, x2 - x1 + 1), bool)  # the box's pixels, inclusive
    crop[20:61, 30:121] = True  # frame rows 320..360, columns 230..320: clear of the outline
    masks = local([crop], [(x1, y1)], (h, w))
    image = frame(h, w)
    out = draw_instances(
        image,
        masks,
        np.array([[x1, y1, x2, y2]], np.float32),
        np.array([1]),
        np.array([0.9], np.float32),
        NAMES,
    )
    np.testing.assert_array_equal(image, frame(h, w))  # the input is left alone

    in_mask = masks.full()[0]
    # alpha 0.45, colour (38, 101, 255) over (100, 150, 200), truncated to uint8:
    # 0.55 * 100 + 0.45 * 38 = 72.1, 0.55 * 150 + 0.45 * 101 = 127.95,
    # 0.55 * 200 + 0.45 * 255 = 224.75
    assert (out[in_mask] == (72, 127, 224)).all()
    assert out[340, 275].tolist() == [72, 127, 224]

    color = list(class_color(1))
    for row, col in [(340, x1), (340, x2), (y2, 275), (350, x1), (y2, 210)]:  # left, right, bottom
        assert out[row, col].tolist() == color, (row, col)

    changed = (out != image).any(axis=2)
    interior = np.zeros((h, w), bool)
    interior[y1 + 3 : y2 - 2, x1 + 3 : x2 - 2] = True  # inside the box, clear of its outline
    assert not changed[interior & ~in_mask].any()
    near_box = np.zeros((h, w), bool)
    near_box[y1 - 2 : y2 + 3, x1 - 2 : x2 + 3] = True
    label = np.zeros((h, w), bool)
    label[y1 - 40 : y1, x1 : x2 + 1] = True  # the label sits on the box's top edge
    assert changed[label].any()  # the label was drawn ...
    assert not changed[~near_box & ~label].any()  # ... and nothing else outside the box


def test_higher_scores_are_drawn_on_top():
    h, w = 60, 80
    crop = np.ones((41, 61), bool)
    masks = local([crop, crop], [(10, 10), (10, 10)], (h, w))
    out = draw_instances(
        frame(h, w),
        masks,
        np.array([[10, 10, 70, 50], [10, 10, 70, 50]], np.float32),
        np.array([1, 2]),
        np.array([0.9, 0.3], np.float32),  # label 1 on top of label 2
        NAMES,
    )
    # label 2 (164, 255, 38) first: (128.8, 197.25, 127.1) -> (128, 197, 127); then label 1
    # (38, 101, 255): (87.5, 153.8, 184.6) -> (87, 153, 184)
    assert out[35, 40].tolist() == [87, 153, 184]
