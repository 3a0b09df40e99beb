"""Dataset folders as every part of the app sees them: which files are images, and what their captions say.

Training, preprocessing and the caption review all read folders through these three functions, so a file
that one of them uses is a file all of them use, and a caption reads the same everywhere.
"""
from pathlib import Path

from common.errors import UserError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# Captions are usually UTF-8 (some editors add a byte-order mark); older Windows tools write cp1252.
# latin-1 decodes any byte, so a caption is always read, never dropped.
CAPTION_ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")


def is_hidden(path: Path) -> bool:
    """Dot files (editor backups, macOS `._photo.jpg` resource forks) are never part of a dataset."""
    return Path(path).name.startswith(".")


def is_dataset_image(path: Path) -> bool:
    path = Path(path)
    return not is_hidden(path) and path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder) -> list:
    """The images of a dataset folder (not recursive), in name order; UserError when it is not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"Dataset directory {folder} does not exist or is not a folder.")
    try:
        entries = list(folder.iterdir())
    except OSError as e:
        raise UserError(f"Dataset directory {folder} could not be read ({e.strerror or e}).") from None
    images = []
    for path in entries:
        try:
            if is_dataset_image(path) and path.is_file():
                images.append(path)
        except OSError:
            continue
    return sorted(images, key=lambda p: p.name)


def caption_path(image_path) -> Path:
    return Path(image_path).with_suffix(".txt")


def read_caption(image_path) -> str | None:
    """The caption of an image (`<stem>.txt` beside it), stripped; None when there is none or it is unreadable."""
    path = caption_path(image_path)
    try:
        if not path.is_file():
            return None
        data = path.read_bytes()
    except OSError:
        return None
    for encoding in CAPTION_ENCODINGS:
        try:
            return data.decode(encoding).strip()
        except UnicodeDecodeError:
            continue
    return None  # unreachable: latin-1 decodes every byte
