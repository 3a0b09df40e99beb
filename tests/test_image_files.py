"""One reader for dataset folders: training, preprocessing and the caption review see the same files and
read the same caption text, whatever encoding the caption was saved in."""
from PIL import Image

from preprocess.captions_review import caption_of, list_images as review_images
from preprocess.pipeline import list_source_files
from trainer.training.dataset import filewords_for
from common.image_files import list_images, read_caption

CAPTIONS = {
    "utf8": "café au lait, ñandú".encode("utf-8"),
    "bom": "\ufeffa dog on a sofa".encode("utf-8"),
    "cp1252": "café “quoted” – dash".encode("cp1252"),
    "latin1": b"caf\xe9 \x81",  # 0x81 is undefined in cp1252: read byte for byte
}
EXPECTED = {
    "utf8": "café au lait, ñandú",
    "bom": "a dog on a sofa",
    "cp1252": "café “quoted” – dash",
    "latin1": "café \x81",
}


def _folder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for stem, data in CAPTIONS.items():
        Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_bytes(data)
    Image.new("RGB", (64, 64)).save(folder / ".hidden.png")
    Image.new("RGB", (64, 64)).save(folder / "._resource-fork.jpg")
    (folder / "notes.md").write_text("not an image")
    return folder


def test_every_part_reads_captions_as_written(tmp_path):
    folder = _folder(tmp_path)
    for stem, text in EXPECTED.items():
        image = folder / f"{stem}.png"
        assert read_caption(image) == text
        assert filewords_for(image) == text  # what training puts in [filewords]
        assert caption_of(image).caption == text  # what the caption review shows


def test_every_part_sees_the_same_files(tmp_path):
    folder = _folder(tmp_path)
    names = sorted(f"{stem}.png" for stem in CAPTIONS)
    assert [p.name for p in list_images(folder)] == names
    assert [p.name for p in review_images(folder)] == names
    # Preprocessing also tries non-image files (to name them as skipped) but never hidden ones.
    sources = {p.name for p in list_source_files(folder)}
    assert not any(name.startswith(".") for name in sources)
    assert set(names) <= sources
