"""Reading odd source files: EXIF orientation, modes, tiny, huge, junk."""
import numpy as np
import pytest
from PIL import Image

from helpers_preprocess import (cmyk_jpeg, exif_rotated_jpeg, grey16_png, junk_png, palette_png_with_transparency,
                                photo, rgba_png, truncated_jpeg)
from common.files import save_png
from preprocess.images import ImageReadError, cover_crop, open_image, to_rgb
from common.image_files import read_caption


def test_exif_orientation_is_applied(tmp_path):
    image = open_image(exif_rotated_jpeg(tmp_path / "sideways.jpg", orientation=6))
    assert image.mode == "RGB"
    assert image.size == (40, 60)  # stored 60×40, shown rotated 90° clockwise
    top = np.asarray(image)[5, 20]
    bottom = np.asarray(image)[55, 20]
    assert top[0] > 200 and top[2] < 60  # the stored left half (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_cmyk_becomes_rgb(tmp_path):
    image = open_image(cmyk_jpeg(tmp_path / "cat.jpg"))
    assert image.mode == "RGB" and image.size == (120, 80)
    reference = np.asarray(photo("chelsea").resize((120, 80)), dtype=float)
    assert np.abs(np.asarray(image, dtype=float) - reference).mean() < 20


def test_palette_transparency_composited_on_white(tmp_path):
    image = open_image(palette_png_with_transparency(tmp_path / "p.png"))
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == (255, 255, 255)
    assert image.getpixel((30, 5)) == (0, 255, 0)


def test_alpha_composited_on_white(tmp_path):
    image = open_image(rgba_png(tmp_path / "a.png"))
    assert image.getpixel((5, 5)) == (255, 255, 255)
    assert image.getpixel((30, 5)) == (255, 0, 0)


def test_la_and_semitransparent(tmp_path):
    la = Image.new("LA", (4, 4), (0, 128))  # black at half opacity over white → mid grey
    assert abs(to_rgb(la).getpixel((0, 0))[0] - 127) <= 2


def test_16_bit_grey_keeps_its_tone(tmp_path):
    image = open_image(grey16_png(tmp_path / "g.png", value=32768))
    assert image.mode == "RGB"
    assert abs(image.getpixel((3, 3))[0] - 128) <= 1  # not clipped to white


def test_junk_and_truncated_files_are_reported(tmp_path):
    with pytest.raises(ImageReadError, match="not an image"):
        open_image(junk_png(tmp_path / "junk.png"))
    with pytest.raises(ImageReadError, match="could not be read"):
        open_image(truncated_jpeg(tmp_path / "cut.jpg"))


def test_decompression_bomb_is_a_sentence(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageReadError) as info:
        open_image(path)
    assert "too large" in str(info.value) and "10,000 pixels" in str(info.value)


def test_one_pixel_image(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(path)
    image = open_image(path)
    assert image.size == (1, 1)
    assert cover_crop(image, 64, 128).size == (64, 128)


def test_existing_caption(tmp_path):
    (tmp_path / "a.b.png").touch()
    (tmp_path / "a.b.txt").write_text("\ufeffa photo\n", encoding="utf-8")
    assert read_caption(tmp_path / "a.b.png") == "a photo"
    assert read_caption(tmp_path / "none.png") is None


def test_cover_crop_centres():
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 0, 255), (100, 0, 200, 100))  # blue middle third
    out = cover_crop(image, 64, 64)
    assert out.size == (64, 64)
    assert np.asarray(out)[:, 5:59, 2].min() > 200  # only the blue middle remains


def test_atomic_save_leaves_no_temp_files(tmp_path):
    save_png(photo("coffee"), tmp_path / "x.png")
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
    assert Image.open(tmp_path / "x.png").size == (600, 400)
