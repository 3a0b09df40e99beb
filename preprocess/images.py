"""Reading source images (outputs are written by `common.files.save_png`, atomically).

- `open_image` opens any file Pillow can read, applies the EXIF orientation and returns an 8-bit RGB image,
  or raises `ImageReadError` with a sentence saying why the file was skipped.
- Transparent pixels are composited on **white** (the reference simply dropped the alpha channel, which turns
  transparent areas into whatever colour happens to be stored under them, often black).
- 16-bit and 32-bit greyscale ("I;16", "I", "F") are scaled down to 8 bits instead of being clipped.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


WHITE = (255, 255, 255)


class ImageReadError(Exception):
    """A source file that cannot be used as an image; the message says why, in one sentence."""


def open_image(path: str | Path) -> Image.Image:
    """Open `path` as an RGB image with EXIF orientation applied, fully loaded into memory."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Between MAX_IMAGE_PIXELS and twice that Pillow only warns; such photos are legitimate.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                oriented = ImageOps.exif_transpose(image)
                if oriented is image:
                    oriented = image.copy()
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"{path.name} is too large to open safely ({_pixel_count(exc)}the limit is "
            f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels)."
        ) from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path.name} is not an image file Pillow can read.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path.name} could not be read ({_short(exc)}).") from None
    if oriented.width < 1 or oriented.height < 1:
        raise ImageReadError(f"{path.name} has no pixels.")
    try:
        return to_rgb(oriented)
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"{path.name} could not be converted to RGB ({_short(exc)}).") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; alpha is composited on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _deep_grey_to_l(image)
        mode = "L"
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    elif mode == "L" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, WHITE)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def _deep_grey_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale → 8-bit "L", keeping the tonal range."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if array.size and np.nanmax(array) <= 1.0 else 255.0
    elif array.size and array.max() > 255:
        top = 65535.0
    else:
        top = 255.0
    array = np.nan_to_num(array, nan=0.0) * (255.0 / top)
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L")


def cover_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale `image` to cover width×height and centre-crop it (sub-pixel exact, Lanczos)."""
    iw, ih = image.size
    if iw * height > ih * width:  # wider than the target: crop the sides
        used = ih * width / height
        box = ((iw - used) / 2, 0.0, (iw + used) / 2, float(ih))
    else:
        used = iw * height / width
        box = (0.0, (ih - used) / 2, float(iw), (ih + used) / 2)
    return image.resize((width, height), Image.Resampling.LANCZOS, box=box)


def _pixel_count(exc: Exception) -> str:
    text = str(exc)
    # Pillow: "Image size (N pixels) exceeds limit of M pixels, could be decompression bomb DOS attack."
    if "(" in text and "pixels)" in text:
        number = text.split("(", 1)[1].split(" pixels)", 1)[0]
        if number.isdigit():
            return f"{int(number):,} pixels; "
    return ""


def _short(exc: Exception) -> str:
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    return text.splitlines()[0][:200]
