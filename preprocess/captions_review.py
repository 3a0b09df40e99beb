"""Caption review: list a dataset folder's images with their captions, save an edited caption, make thumbnails.

This is the engine behind the "Review captions" part of the Preprocess images tab (no gradio here). It works on
any dataset folder, not only on preprocessing outputs, so that captions can be fixed before training.

- Images are the files training uses (`common.image_files.is_dataset_image`), in name order, not recursive.
- A caption is `<stem>.txt` next to the image, read like preprocessing reads existing captions.
- Saving writes `<stem>.txt` atomically (temporary file in the same folder, then `os.replace`). An empty
  caption is saved as an empty file: for training that means "no words", while a missing file would mean
  "use the file name".
- Thumbnails are small PNG copies in a cache folder (the system temp folder by default), made one image at a
  time and reused while the image is unchanged, so a folder of hundreds of photos never sits in memory at once.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from common.image_files import is_dataset_image, read_caption
from common.errors import UserError
from common.files import atomic_write_text, save_png


THUMBNAIL_SIZE = 256
THUMBNAIL_FOLDER = "ti-trainer-thumbnails"


@dataclass
class CaptionedImage:
    """One image of a dataset folder and its caption ("" when it has no caption file)."""

    path: Path
    caption: str
    has_caption_file: bool

    @property
    def caption_path(self) -> Path:
        return self.path.with_suffix(".txt")


def check_folder(folder: str | Path) -> Path:
    """The folder as an absolute path; UserError when it is empty, missing or not a folder."""
    if not str(folder or "").strip():
        raise UserError("Please choose a folder of images to review.")
    path = Path(folder).expanduser().resolve()
    if not path.exists():
        raise UserError(f"The folder {path} does not exist.")
    if not path.is_dir():
        raise UserError(f"{path} is not a folder.")
    return path


def list_images(folder: str | Path) -> list[Path]:
    """The image files of `folder` (those training would use), in name order."""
    path = check_folder(folder)
    try:
        entries = list(os.scandir(path))
    except OSError as exc:
        raise UserError(f"The folder {path} could not be read ({exc.strerror or exc}).") from None
    images = []
    for entry in entries:
        if not is_dataset_image(Path(entry.name)):
            continue
        try:
            if entry.is_file():
                images.append(Path(entry.path))
        except OSError:
            continue
    return sorted(images, key=lambda p: p.name)


def caption_of(image: str | Path) -> CaptionedImage:
    """The image with its caption as it is on disk now."""
    path = Path(image)
    text = read_caption(path)
    return CaptionedImage(path, text or "", text is not None)


def save_caption(image: str | Path, caption: str) -> Path:
    """Write `caption` (surrounding white space removed) to the image's `<stem>.txt`, atomically; returns
    the caption file. UserError when the folder or the image no longer exists or the file cannot be written."""
    path = Path(image).expanduser()
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"The folder {folder} does not exist any more.")
    if not path.is_file():
        raise UserError(f"The image {path.name} is no longer in {folder}; reload the folder.")
    if path.suffix.lower() == ".txt":
        raise UserError(f"{path.name} is a caption file, not an image.")
    target = path.with_suffix(".txt")
    try:
        atomic_write_text(target, (caption or "").strip())
    except OSError as exc:
        raise UserError(f"Could not write {target.name} in {folder} ({exc.strerror or exc}).") from None
    return target


def thumbnail(image: str | Path, size: int = THUMBNAIL_SIZE, cache_dir: str | Path | None = None) -> Path:
    """A PNG copy of `image` at most `size` pixels on its longer side (EXIF rotation applied), kept in
    `cache_dir` (default: <temp>/ti-trainer-thumbnails) and remade when the image changes. An unreadable
    image gets a grey placeholder, so a gallery still lines up with the folder's list."""
    path = Path(image).resolve()
    cache = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / THUMBNAIL_FOLDER
    try:
        stat = path.stat()
        key = f"{path}|{stat.st_mtime_ns}|{stat.st_size}|{size}"
    except OSError:
        key = f"{path}|missing|{size}"
    target = cache / f"{hashlib.sha1(key.encode('utf-8')).hexdigest()}.png"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    try:
        small = _small_copy(path, size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        small = _placeholder(size)
    save_png(small, target)
    return target


def _small_copy(path: Path, size: int) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as opened:
            opened.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much less memory
            image = ImageOps.exif_transpose(opened)
            image.thumbnail((size, size), Image.Resampling.LANCZOS)
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "transparency" in image.info or image.mode in ("LA", "PA") else "RGB")
    return image


def _placeholder(size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), (200, 200, 200))
    ImageDraw.Draw(image).text((size // 2 - 30, size // 2 - 6), "unreadable", fill=(90, 90, 90))
    return image
