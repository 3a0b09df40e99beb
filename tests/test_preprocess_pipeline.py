"""run_preprocess end to end on real photographs and odd files."""
import os

import numpy as np
import pytest
from PIL import Image

from helpers_preprocess import (astronaut_face_box, cmyk_jpeg, exif_rotated_jpeg, junk_png,
                                palette_png_with_transparency, photo, png_names, rgba_png,
                                wide_canvas_with_face_right)
from preprocess import PreprocessConfig, run_preprocess
from preprocess.pipeline import validate_config
from common.errors import UserError

SMALL = dict(width=64, height=64)


def _snapshot(folder):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    photo("coffee").save(folder / "coffee.png")
    photo("chelsea").save(folder / "b cat.jpg")
    (folder / "b cat.txt").write_text("a cat on a sofa\n")
    exif_rotated_jpeg(folder / "c-rotated.jpg")
    cmyk_jpeg(folder / "d-cmyk.jpg")
    palette_png_with_transparency(folder / "e-palette.png")
    rgba_png(folder / "f-alpha.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "g-dot.png")
    junk_png(folder / "h-junk.png")
    (folder / "subfolder").mkdir()
    photo("rocket").save(folder / "subfolder" / "rocket.png")
    return folder


def test_default_run_over_a_mixed_folder(src, tmp_path):
    dst = tmp_path / "out" / "nested"
    before = _snapshot(src)
    events = []
    result = run_preprocess(PreprocessConfig(src=src, dst=dst, **SMALL), progress=events.append)
    assert _snapshot(src) == before  # the source folder is never written to
    assert result.total == 8 and result.processed == 7 and not result.interrupted
    assert [(s.name, "not an image" in s.reason) for s in result.skipped] == [("h-junk.png", True)]
    assert png_names(dst) == ["00000-0-b cat.png", "00001-0-c-rotated.png", "00002-0-coffee.png",
                              "00003-0-d-cmyk.png", "00004-0-e-palette.png", "00005-0-f-alpha.png",
                              "00006-0-g-dot.png"]
    assert result.written == [dst / name for name in png_names(dst)]
    for path in result.written:
        with Image.open(path) as image:
            assert image.size == (64, 64) and image.mode == "RGB"
    assert not list(dst.glob("*.txt"))  # "ignore" and no BLIP: no captions
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert events[0].done == 0 and [e.done for e in events[1:]] == list(range(1, 9))
    assert all(e.total == 8 for e in events) and "h-junk.png" in events[-1].message
    assert result.summary == (f"Done: 7 of 8 source files preprocessed, 7 images written to {dst}; "
                              "1 file skipped.")
    rotated = np.asarray(Image.open(dst / "00001-0-c-rotated.png"))
    assert rotated[5, 32, 0] > 200 and rotated[60, 32, 2] > 200  # EXIF-rotated: red on top, blue below


def test_caption_actions(src, tmp_path):
    expected = {"ignore": None, "copy": "a cat on a sofa", "prepend": "a cat on a sofa",
                "append": "a cat on a sofa"}
    for action, caption in expected.items():
        dst = tmp_path / action
        run_preprocess(PreprocessConfig(src=src, dst=dst, caption_action=action, **SMALL))
        txt = dst / "00000-0-b cat.txt"
        assert (txt.read_text() if txt.exists() else None) == caption, action
        assert len(list(dst.glob("*.txt"))) == (0 if caption is None else 1)


def test_rerun_numbers_on_and_keeps_edited_captions(src, tmp_path):
    dst = tmp_path / "out"
    run_preprocess(PreprocessConfig(src=src, dst=dst, caption_action="copy", **SMALL))
    (dst / "00000-0-b cat.txt").write_text("my edited caption")
    first = {p.name: p.read_bytes() for p in dst.iterdir()}
    result = run_preprocess(PreprocessConfig(src=src, dst=dst, caption_action="ignore", **SMALL))
    assert result.written_count == 7 and len(png_names(dst)) == 14
    assert result.written[0].name == "00007-0-b cat.png"  # numbering goes on after the first run's 0..6
    assert {p.name: p.read_bytes() for p in dst.iterdir() if p.name in first} == first


def test_rerun_with_overwrite_replaces_and_removes_outdated_captions(src, tmp_path):
    dst = tmp_path / "out"
    run_preprocess(PreprocessConfig(src=src, dst=dst, caption_action="copy", **SMALL))
    assert (dst / "00000-0-b cat.txt").exists()
    result = run_preprocess(PreprocessConfig(src=src, dst=dst, caption_action="ignore", overwrite=True, **SMALL))
    assert result.written_count == 7 and len(png_names(dst)) == 7
    assert not (dst / "00000-0-b cat.txt").exists()


def test_flipped_copies_are_mirror_images(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    photo("chelsea").save(src / "cat.png")
    (src / "cat.txt").write_text("a cat")
    dst = tmp_path / "dst"
    result = run_preprocess(PreprocessConfig(src=src, dst=dst, flip=True, caption_action="copy", width=128,
                                             height=96))
    assert png_names(dst) == ["00000-0-cat.png", "00000-1-cat.png"]
    original = np.asarray(Image.open(dst / "00000-0-cat.png"))
    flipped = np.asarray(Image.open(dst / "00000-1-cat.png"))
    assert original.shape == (96, 128, 3)
    assert np.array_equal(flipped, original[:, ::-1]) and not np.array_equal(flipped, original)
    assert (dst / "00000-1-cat.txt").read_text() == "a cat"
    assert len(result.captions) == 2


def test_split_keep_original_and_autosize_each_write_outputs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    photo("coffee").resize((300, 900)).save(src / "tall.png")
    dst = tmp_path / "dst"
    result = run_preprocess(PreprocessConfig(src=src, dst=dst, width=128, height=128, split=True,
                                             keep_original_size=True, autosize=True, flip=True,
                                             min_dim=128, max_dim=384, min_area=64 * 64))
    sizes = [Image.open(p).size for p in result.written]
    # split: 128×384 → ceil((384 - 25.6) / 102.4) = 4 tiles, each flipped → subindex 0..7
    assert sizes[:8] == [(128, 128)] * 8
    assert sizes[8] == sizes[9] and sizes[8][0] < sizes[8][1]  # auto-sized crop (portrait) + flip
    assert sizes[10:] == [(300, 900)] * 2  # original size + flip
    assert [p.name for p in result.written][-1] == "00000-11-tall.png"


def test_split_off_when_image_is_not_long(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    photo("coffee").save(src / "c.png")  # 600×400: ratio 0.67 > 0.5
    result = run_preprocess(PreprocessConfig(src=src, dst=tmp_path / "d", split=True, **SMALL))
    assert len(result.written) == 1  # the default resize ran instead


def test_focal_crop_keeps_the_face(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    wide = wide_canvas_with_face_right(1536)
    wide.save(src / "wide.png")
    photo("astronaut").save(src / "square.png")  # already the target aspect: default resize
    dst = tmp_path / "dst"
    result = run_preprocess(PreprocessConfig(src=src, dst=dst, focal_crop=True, focal_debug=True))
    assert png_names(dst) == ["00000-0-square.png", "00001-0-wide.png"]
    crop = np.asarray(Image.open(dst / "00001-0-wide.png"))
    x1, y1, x2, y2 = astronaut_face_box()
    face = np.asarray(wide)[y1:y2, 1024 + x1:1024 + x2]
    # the face appears, pixel for pixel, somewhere in the crop (the crop is a 1:1 window of the canvas)
    found = [x for x in range(0, 512 - (x2 - x1) + 1) if np.array_equal(crop[y1:y2, x:x + x2 - x1], face)]
    assert found
    assert result.debug_images == [dst / "focal-debug" / "00001-0-wide.png"]
    assert Image.open(result.debug_images[0]).size == (1536, 512)


def test_bad_yunet_file_is_a_warning_not_a_failure(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    photo("coffee").resize((90, 60)).save(src / "c.png")
    bogus = tmp_path / "face_detection_yunet_2023mar.onnx"
    bogus.write_bytes(b"junk")
    result = run_preprocess(PreprocessConfig(src=src, dst=tmp_path / "d", focal_crop=True, yunet_model=bogus,
                                             **SMALL))
    assert result.written_count == 1 and any("Haar" in w for w in result.warnings)


def test_autosize_without_a_fit_skips_the_image(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (3000, 100), (9, 9, 9)).save(src / "strip.png")
    photo("coffee").save(src / "coffee.png")
    result = run_preprocess(PreprocessConfig(src=src, dst=tmp_path / "d", autosize=True))
    assert [s.name for s in result.skipped] == ["strip.png"]
    assert "auto-sized crop found no size" in result.skipped[0].reason
    assert [p.name for p in result.written] == ["00000-0-coffee.png"]
    assert Image.open(result.written[0]).size == (768, 512)  # 3:2 → the largest 3:2-ish size within area


def test_interrupt_stops_after_the_current_image(src, tmp_path):
    events = []
    result = run_preprocess(PreprocessConfig(src=src, dst=tmp_path / "d", **SMALL), progress=events.append,
                            should_stop=lambda: len(events) >= 3)
    assert result.interrupted and result.processed == 2 and result.written_count == 2
    assert result.summary.startswith("Interrupted: 2 of 8")


def test_decompression_bomb_is_skipped_with_a_sentence(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (200, 200)).save(src / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    result = run_preprocess(PreprocessConfig(src=src, dst=tmp_path / "d"))
    assert result.written_count == 0 and "too large" in result.skipped[0].reason


def test_empty_source(tmp_path):
    (tmp_path / "src").mkdir()
    result = run_preprocess(PreprocessConfig(src=tmp_path / "src", dst=tmp_path / "d"))
    assert result.total == 0 and result.summary.startswith("No files to preprocess")


@pytest.mark.parametrize("change, message", [
    (dict(src=""), "choose a source"),
    (dict(dst=""), "choose a destination"),
    (dict(src="/nonexistent/folder"), "does not exist"),
    (dict(width=32), "Width must be"),
    (dict(height=4096), "Height must be"),
    (dict(width="512"), "Width must be"),
    (dict(caption_action="replace"), "caption action"),
    (dict(caption="deepbooru"), "caption model"),
    (dict(split=True, overlap_ratio=0.95), "overlap ratio"),
    (dict(split=True, split_threshold=-1), "split threshold"),
    (dict(focal_crop=True, face_weight=-0.1), "face weight"),
    (dict(focal_crop=True, yunet_model="/nonexistent.onnx"), "YuNet"),
    (dict(autosize=True, objective="Maximize fun"), "objective"),
    (dict(autosize=True, min_dim=800, max_dim=700), "lower dimension bound"),
    (dict(autosize=True, min_area=10, max_area=5), "lower area bound"),
    (dict(autosize=True, error_threshold=2.0), "error threshold"),
    (dict(caption="blip", beams=0), "beams"),
    (dict(caption="blip", min_length=10, max_length=5), "maximum caption length"),
])
def test_bad_settings_are_user_errors(tmp_path, change, message):
    (tmp_path / "src").mkdir()
    config = PreprocessConfig(src=tmp_path / "src", dst=tmp_path / "dst")
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(UserError, match=message):
        run_preprocess(config)
    assert not (tmp_path / "dst").exists()


def test_source_equal_to_destination_and_source_not_a_folder(tmp_path):
    (tmp_path / "src").mkdir()
    same = os.path.join(str(tmp_path), "x", "..", "src")
    with pytest.raises(UserError, match="must be different"):
        run_preprocess(PreprocessConfig(src=tmp_path / "src", dst=same))
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(UserError, match="not a directory"):
        run_preprocess(PreprocessConfig(src=tmp_path / "file.png", dst=tmp_path / "d"))
    with pytest.raises(UserError, match="not a directory"):
        run_preprocess(PreprocessConfig(src=tmp_path / "src", dst=tmp_path / "file.png"))


def test_slider_floats_are_accepted(tmp_path):
    (tmp_path / "src").mkdir()
    config = validate_config(PreprocessConfig(src=tmp_path / "src", dst=tmp_path / "d", width=512.0,
                                              min_dim=384.0))
    assert config.width == 512 and isinstance(config.width, int) and isinstance(config.min_dim, int)
