"""Auto-sized crop: pick an output size close to the image's own aspect, centre-crop and resize to it.

Candidates are every (w, h) with w and h in `range(min_dim, max_dim + 1, 64)` whose area lies in
[min_area, max_area] and whose aspect error `1 - min(r, 1/r)` (r = image aspect / candidate aspect) is at
most the threshold. "Maximize area" picks the largest area (ties: the smaller error); "Minimize error" picks
the smallest error (ties: the larger area). Remaining ties go to the first candidate in w-then-h order,
as in the reference.
"""
from __future__ import annotations

from PIL import Image

from .images import cover_crop

OBJECTIVES = ("Maximize area", "Minimize error")
STEP = 64


def aspect_error(image_w: int, image_h: int, w: int, h: int) -> float:
    r = (image_w / image_h) / (w / h)
    return 1.0 - min(r, 1.0 / r)


def choose_size(image_w: int, image_h: int, min_dim: int, max_dim: int, min_area: int, max_area: int,
                objective: str, threshold: float) -> tuple[int, int] | None:
    """The best (w, h) for an image of that size, or None when no candidate fits the bounds."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}")
    best = None
    best_key = None
    for w in range(min_dim, max_dim + 1, STEP):
        for h in range(min_dim, max_dim + 1, STEP):
            if not (min_area <= w * h <= max_area):
                continue
            err = aspect_error(image_w, image_h, w, h)
            if err > threshold:
                continue
            key = (w * h, -err) if objective == "Maximize area" else (-err, w * h)
            if best_key is None or key > best_key:
                best, best_key = (w, h), key
    return best


def autosize_crop(image: Image.Image, min_dim: int, max_dim: int, min_area: int, max_area: int,
                  objective: str, threshold: float) -> Image.Image | None:
    """The image centre-cropped to the chosen aspect and resized to it, or None when nothing fits."""
    size = choose_size(image.width, image.height, min_dim, max_dim, min_area, max_area, objective, threshold)
    if size is None:
        return None
    return cover_crop(image, *size)
