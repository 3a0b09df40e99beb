"""The per-image steps on their own: split, auto-sized crop, focal point."""
import math

import numpy as np
import pytest
from PIL import Image

from helpers_preprocess import astronaut_face_box, photo, wide_canvas_with_face_right
from preprocess.autosize import aspect_error, autosize_crop, choose_size
from preprocess.focal import (FaceFinder, FocalSettings, edge_points, entropy_points, find_yunet_model, focal_crop,
                              window_entropies)
from preprocess.split import plan_split, split_image, split_ratio, tile_count, tile_offsets


# ---- split -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length, tile, overlap, expected", [
    (1536, 512, 0.2, 4),  # ceil((1536 - 102.4) / 409.6) = ceil(3.5)
    (1024, 512, 0.2, 3),  # ceil(2.25)
    (600, 512, 0.2, 2),
    (2048, 512, 0.0, 4),
    (2049, 512, 0.0, 5),
    (1536, 512, 0.5, 5),  # ceil((1536 - 256) / 256)
    (512, 512, 0.2, 1),
])
def test_tile_count(length, tile, overlap, expected):
    assert tile_count(length, tile, overlap) == expected
    if length > tile:
        assert expected == math.ceil((length - tile * overlap) / (tile * (1 - overlap)))


def test_tiles_spread_first_and_last_flush():
    offsets = tile_offsets(1536, 512, 4)
    assert offsets == [0, 341, 682, 1024]
    assert offsets[-1] + 512 == 1536
    assert tile_offsets(600, 512, 2) == [0, 88]


def test_split_plan_vertical_and_horizontal():
    tall = plan_split(1000, 3000, 512, 512, 0.5, 0.2)  # resized to 512×1536
    assert tall.vertical and tall.resized == (512, 1536) and len(tall.boxes) == 4
    assert tall.boxes[0] == (0, 0, 512, 512) and tall.boxes[-1] == (0, 1024, 512, 1536)
    wide = plan_split(2000, 500, 512, 512, 0.5, 0.2)  # resized to 2048×512
    assert not wide.vertical and wide.resized == (2048, 512) and len(wide.boxes) == 5
    assert wide.boxes[-1] == (1536, 0, 2048, 512)


def test_split_threshold():
    assert plan_split(512, 512, 512, 512, 0.5, 0.2) is None  # not longer at all
    assert plan_split(512, 900, 512, 512, 0.5, 0.2) is None  # ratio 0.57 > 0.5
    assert plan_split(512, 900, 512, 512, 0.6, 0.2) is not None
    assert split_ratio(512, 1024, 512, 512) == (0.5, True)


def test_split_square_image_with_tall_target():
    # The reference never split a square photo; the aspect comparison cuts it into tall strips.
    tiles = split_image(photo("astronaut"), 128, 512, 0.5, 0.2)
    assert len(tiles) == tile_count(512, 128, 0.2) == 5
    assert all(tile.size == (128, 512) for tile in tiles)


def test_split_tiles_are_cut_from_resized_image():
    image = photo("coffee").resize((600, 1800))
    tiles = split_image(image, 256, 256, 0.5, 0.2)
    resized = np.asarray(image.resize((256, 768), Image.Resampling.LANCZOS))
    assert len(tiles) == 4
    assert np.array_equal(np.asarray(tiles[0]), resized[:256])
    assert np.array_equal(np.asarray(tiles[-1]), resized[-256:])


# ---- auto-sized crop -------------------------------------------------------------------------------------

def test_choose_size_objectives():
    bounds = (384, 768, 4096, 409600)
    assert choose_size(1600, 900, *bounds, "Maximize area", 0.1) == (768, 448)
    assert choose_size(1600, 900, *bounds, "Minimize error", 0.1) == (704, 384)
    assert choose_size(1000, 1000, *bounds, "Maximize area", 0.1) == (640, 640)  # 640² = max area
    assert choose_size(3000, 100, *bounds, "Maximize area", 0.1) is None


def test_choose_size_respects_bounds():
    for w, h in [(640, 480), (1000, 1500), (1800, 900)]:
        size = choose_size(w, h, 384, 768, 4096, 409600, "Maximize area", 0.1)
        assert size is not None
        sw, sh = size
        assert sw % 64 == 0 and sh % 64 == 0 and 384 <= sw <= 768 and 384 <= sh <= 768
        assert sw * sh <= 409600 and aspect_error(w, h, sw, sh) <= 0.1


def test_autosize_crop_output():
    out = autosize_crop(photo("coffee"), 384, 768, 4096, 409600, "Maximize area", 0.1)  # 600×400 = 3:2
    assert out.size == choose_size(600, 400, 384, 768, 4096, 409600, "Maximize area", 0.1)
    assert autosize_crop(Image.new("RGB", (3000, 100)), 384, 768, 4096, 409600, "Maximize area", 0.1) is None


# ---- focal point -----------------------------------------------------------------------------------------

def test_window_entropy_matches_direct_computation():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 40, size=(20, 50), dtype=np.uint8)
    grey[:, 30:] = 7  # flat on the right
    values = window_entropies(grey, 10, axis=1)
    assert values.shape == (41,)
    for start in (0, 17, 40):
        hist = np.bincount(grey[:, start:start + 10].ravel(), minlength=256) / 200
        p = hist[hist > 0]
        assert values[start] == pytest.approx(-(p * np.log2(p)).sum())
    assert values[40] == 0.0 and int(np.argmax(values)) < 21


def test_entropy_point_finds_the_busy_part():
    grey = np.full((64, 256), 100, dtype=np.uint8)
    grey[:, 180:230] = np.random.default_rng(1).integers(0, 255, size=(64, 50))
    [(x, y)] = entropy_points(grey, 64, 64)
    assert 170 <= x <= 240 and y == 32
    assert entropy_points(np.zeros((64, 64), np.uint8), 64, 64) == []


def test_edge_points_ignore_the_bottom_tenth():
    grey = np.full((200, 200), 128, dtype=np.uint8)
    grey[185:, :] = (np.indices((15, 200)).sum(axis=0) % 2) * 255  # a "watermark" checkerboard at the bottom
    grey[40:60, 40:60] = 255  # one bright square: four corners
    points = edge_points(grey)
    assert points and all(y < 180 for _, y in points)
    assert len(points) <= 100


def test_haar_faces_are_found_and_tuples_handled():
    finder = FaceFinder(None)
    assert finder.method == "haar"
    points = finder.find(np.asarray(photo("astronaut")))
    x1, y1, x2, y2 = astronaut_face_box()
    assert points and all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in points)
    assert points[0][1] < (y1 + y2) / 2  # upper third of the box, not its centre
    assert finder.find(np.full((100, 100, 3), 90, np.uint8)) == []  # OpenCV returns an empty tuple here


def test_bad_yunet_model_falls_back_to_haar(tmp_path):
    bogus = tmp_path / "face_detection_yunet_2023mar.onnx"
    bogus.write_bytes(b"not a model")
    assert find_yunet_model(tmp_path) == bogus
    assert find_yunet_model(tmp_path / "missing") is None
    finder = FaceFinder(bogus)
    assert finder.method == "haar" and "Haar" in finder.notes[0]


def test_focal_crop_keeps_off_centre_face():
    wide = wide_canvas_with_face_right(1536)
    x1, y1, x2, y2 = astronaut_face_box()
    crop = focal_crop(wide, FocalSettings(512, 512), FaceFinder(None))
    assert crop.image.size == (512, 512) and crop.scale == 1.0
    cx1, cy1, cx2, cy2 = crop.box
    assert cx1 <= x1 + 1024 and x2 + 1024 <= cx2 and cy1 <= y1 and y2 <= cy2
    assert np.array_equal(np.asarray(crop.image), np.asarray(wide.crop(crop.box)))
    assert set(crop.weights) == {"edges", "entropy", "faces"}
    assert sum(crop.weights.values()) == pytest.approx(1.0)


def test_focal_crop_weights_renormalised_and_zero_weight_kinds_skipped():
    wide = wide_canvas_with_face_right(1536)
    crop = focal_crop(wide, FocalSettings(512, 512, face_weight=0.9, entropy_weight=0, edges_weight=0),
                      FaceFinder(None))
    assert crop.weights == {"faces": 1.0} and set(crop.points) == {"faces"}
    (fx, fy), = crop.points["faces"]
    assert crop.focus == (round(fx), round(fy))
    nothing = focal_crop(Image.new("RGB", (300, 100), (50, 50, 50)), FocalSettings(100, 100, 0.9, 0, 0.5))
    assert nothing.weights == {} and nothing.box == (100, 0, 200, 100)  # no points: centre crop


def test_focal_crop_scales_to_cover_and_clamps():
    tall = photo("chelsea").resize((100, 450))
    crop = focal_crop(tall, FocalSettings(128, 192, debug=True))
    assert crop.image.size == (128, 192)
    x1, y1, x2, y2 = crop.box
    assert x1 >= 0 and y1 >= 0 and x2 <= 128 and y2 <= round(450 * 128 / 100)
    assert crop.debug.size == (128, round(450 * 128 / 100))
    assert not np.array_equal(np.asarray(crop.debug), np.asarray(tall.resize(crop.debug.size)))
