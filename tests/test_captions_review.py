"""Caption review engine: listing a dataset folder, saving captions atomically, thumbnails, clear errors."""
import os

import pytest
from PIL import Image

from helpers_images import make_dataset
from preprocess.captions_review import (caption_of, list_images, save_caption,
                                        thumbnail)
from common.errors import UserError


@pytest.fixture
def folder(tmp_path):
    return make_dataset(tmp_path / "data", count=3)


def leftovers(folder):
    """Anything a half-done write could leave behind: hidden or temporary files."""
    return [name for name in os.listdir(folder) if name.startswith(".") or name.endswith(".tmp")]


def test_lists_images_in_name_order_with_their_captions(folder):
    Image.new("RGB", (8, 8)).save(folder / "zz-upper.PNG")  # suffixes match whatever their case
    (folder / ".hidden.png").write_bytes(b"")
    (folder / "notes.md").write_text("not an image")
    (folder / "focal-debug").mkdir()  # sub-folders (like preprocessing's debug images) are not listed
    Image.new("RGB", (8, 8)).save(folder / "focal-debug" / "00000-0-astronaut.png")

    names = [p.name for p in list_images(folder)]
    assert names == ["00000-0-astronaut.png", "00001-0-coffee.png", "00002-0-chelsea.png", "zz-upper.PNG"]

    items = [caption_of(path) for path in list_images(folder)]
    assert [item.caption for item in items[:3]] == [f"a photo of a {n}, daylight, detailed"
                                                     for n in ("astronaut", "coffee", "chelsea")]
    assert all(item.has_caption_file for item in items[:3])
    last = items[3]
    assert (last.caption, last.has_caption_file, last.caption_path.name) == ("", False, "zz-upper.txt")


def test_save_caption_replaces_the_text_file_and_leaves_nothing_else(folder):
    image = folder / "00001-0-coffee.png"
    before = sorted(os.listdir(folder))

    written = save_caption(image, "  a cup of coffee, saucer, top view \n")

    assert written == folder / "00001-0-coffee.txt"
    assert written.read_text(encoding="utf-8") == "a cup of coffee, saucer, top view"
    assert caption_of(image).caption == "a cup of coffee, saucer, top view"
    assert sorted(os.listdir(folder)) == before
    assert leftovers(folder) == []


def test_save_caption_creates_a_missing_caption_and_keeps_an_empty_one(tmp_path):
    folder = make_dataset(tmp_path / "bare", captions=False, count=2)
    image = folder / "00000-0-astronaut.png"
    assert not caption_of(image).has_caption_file

    save_caption(image, "astronaut, flag, portrait — ünïcode")
    assert (folder / "00000-0-astronaut.txt").read_text(encoding="utf-8") == "astronaut, flag, portrait — ünïcode"

    save_caption(image, "   ")  # an empty caption is kept as an empty file (training then uses no words)
    assert (folder / "00000-0-astronaut.txt").read_text(encoding="utf-8") == ""
    assert caption_of(image).has_caption_file
    assert leftovers(folder) == []


def test_a_failed_write_keeps_the_old_caption_and_no_temporary_file(folder, monkeypatch):
    image = folder / "00000-0-astronaut.png"
    old = (folder / "00000-0-astronaut.txt").read_text()

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(UserError, match="Could not write 00000-0-astronaut.txt"):
        save_caption(image, "new words")
    monkeypatch.undo()

    assert (folder / "00000-0-astronaut.txt").read_text() == old
    assert leftovers(folder) == []


def test_errors_name_the_missing_folder_or_file(tmp_path, folder):
    with pytest.raises(UserError, match="Please choose a folder"):
        list_images("  ")
    with pytest.raises(UserError, match="does not exist"):
        list_images(tmp_path / "nowhere")
    with pytest.raises(UserError, match="is not a folder"):
        list_images(folder / "00000-0-astronaut.png")
    with pytest.raises(UserError, match="no longer in"):
        save_caption(folder / "gone.png", "text")
    with pytest.raises(UserError, match="does not exist any more"):
        save_caption(tmp_path / "nowhere" / "a.png", "text")
    assert not (folder / "gone.txt").exists()


def test_an_empty_folder_lists_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    assert list_images(tmp_path / "empty") == []


def test_thumbnails_are_small_cached_and_remade_when_the_image_changes(tmp_path, folder):
    cache = tmp_path / "thumbs"
    big = folder / "big.jpg"
    Image.new("RGB", (1600, 900), (10, 120, 200)).save(big, quality=90)

    first = thumbnail(big, 256, cache)
    with Image.open(first) as small:
        assert max(small.size) == 256 and small.size[0] > small.size[1]
    assert thumbnail(big, 256, cache) == first  # reused while the image is unchanged

    Image.new("RGB", (300, 600), (200, 10, 10)).save(big, quality=90)
    os.utime(big, ns=(1, 1))  # a different mtime even on a coarse clock
    second = thumbnail(big, 256, cache)
    assert second != first
    with Image.open(second) as small:
        assert small.size == (128, 256)

    broken = folder / "broken.png"
    broken.write_bytes(b"not a png")
    with Image.open(thumbnail(broken, 64, cache)) as placeholder:  # unreadable: a placeholder, no exception
        assert placeholder.size == (64, 64)
    assert not any(name.endswith(".tmp") for name in os.listdir(cache))
