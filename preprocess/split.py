"""Split oversized images into overlapping tiles of the target size.

An image qualifies when it is much longer than the target aspect along one axis: with
`ratio = min(image_aspect / target_aspect, target_aspect / image_aspect)` the image is split when
`ratio < 1 and ratio <= threshold`. It is then resized so that its short side (across the split axis)
matches the target, and cut into `count = ceil((L - T*overlap) / (T*(1 - overlap)))` tiles of length T,
spread evenly: the first flush with the start, the last flush with the end.

Same tiles as the reference whenever the reference splits. The reference chose the split axis from the
image's own orientation (portrait → vertical), so a square photo with a very wide or tall target was never
split; here the axis follows the aspect comparison, which covers that case too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class SplitPlan:
    vertical: bool  # True: tiles stacked top to bottom; False: left to right
    resized: tuple[int, int]  # (width, height) the image is resized to before cutting
    boxes: tuple[tuple[int, int, int, int], ...]  # crop boxes in the resized image


def split_ratio(image_w: int, image_h: int, width: int, height: int) -> tuple[float, bool]:
    """(ratio, vertical): ratio ≤ 1 says how much longer the image is than the target; vertical is the axis."""
    image_aspect = image_w / image_h
    target_aspect = width / height
    if image_aspect < target_aspect:  # relatively taller than the target: cut along the height
        return image_aspect / target_aspect, True
    return target_aspect / image_aspect, False


def tile_count(length: int, tile: int, overlap: float) -> int:
    """Number of tiles of size `tile` covering `length` with at least `overlap` (a fraction) between them."""
    if length <= tile:
        return 1
    return max(1, math.ceil((length - tile * overlap) / (tile * (1.0 - overlap))))


def tile_offsets(length: int, tile: int, count: int) -> list[int]:
    """Start offsets of `count` tiles spread evenly over `length` (first at 0, last at length - tile)."""
    if count <= 1 or length <= tile:
        return [0]
    step = (length - tile) / (count - 1)
    return [int(step * i) for i in range(count)]


def plan_split(image_w: int, image_h: int, width: int, height: int, threshold: float,
               overlap: float) -> SplitPlan | None:
    """The tiles for an image of that size, or None when it is not long enough to split."""
    ratio, vertical = split_ratio(image_w, image_h, width, height)
    if not (ratio < 1.0 and ratio <= threshold):
        return None
    if vertical:
        length = max(height, image_h * width // image_w)
        offsets = tile_offsets(length, height, tile_count(length, height, overlap))
        boxes = tuple((0, y, width, y + height) for y in offsets)
        return SplitPlan(True, (width, length), boxes)
    length = max(width, image_w * height // image_h)
    offsets = tile_offsets(length, width, tile_count(length, width, overlap))
    boxes = tuple((x, 0, x + width, height) for x in offsets)
    return SplitPlan(False, (length, height), boxes)


def split_image(image: Image.Image, width: int, height: int, threshold: float,
                overlap: float) -> list[Image.Image]:
    """The tiles of `image` (each exactly width×height), or [] when the image is not split."""
    plan = plan_split(image.width, image.height, width, height, threshold, overlap)
    if plan is None:
        return []
    resized = image.resize(plan.resized, Image.Resampling.LANCZOS)
    return [resized.crop(box) for box in plan.boxes]
