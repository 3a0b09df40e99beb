"""Name the shape, colour and background of a toy-world picture, by colour and contour analysis (OpenCV).

No learned weights and nothing from the demo model: the judge looks at pixels the way a person would.

1. Background: the median colour of the image's outer ring of pixels.
2. Shape: the pixels far from that colour; their median (away from the edges) is the shape's colour. The mask
   is then redrawn at the midpoint between the two colours, which keeps blurred edges where they belong.
3. Its largest outline says which shape it is: a star is far from convex (solidity < 0.8); a square fills
   its tightest rectangle; a triangle fills about half of it; a circle about pi/4 and is round.
4. Both colours are named by the nearest of the world's eight palette colours.

    verdict = judge(Image.open("picture.png"))   # Verdict(shape="circle", colour="orange", background="blue")
"""
import math
from dataclasses import dataclass

import cv2
import numpy as np

from trainer.toy.world import PALETTE, Concept, with_article

_NAMES = tuple(PALETTE)
_RGB = np.array([PALETTE[n] for n in _NAMES], dtype=np.float32)
MIN_AREA = 0.02  # a shape covering less of the picture than this is "no shape"


@dataclass(frozen=True)
class Verdict:
    shape: str | None  # None: no shape found
    colour: str | None
    background: str

    def describe(self) -> str:
        if self.shape is None:
            return f"a plain {self.background} picture"
        return f"{with_article(self.colour)} {self.shape} on {with_article(self.background)} background"

    def shows(self, concept: Concept) -> bool:
        """True when every part the concept names is what the picture shows."""
        return self.shape is not None and concept.matches(self.shape, self.colour, self.background)


def nearest_colour(rgb) -> str:
    return _NAMES[int(np.argmin(((_RGB - np.asarray(rgb, dtype=np.float32)) ** 2).sum(axis=1)))]


def judge(image) -> Verdict:
    """What a picture (PIL image or HxWx3 uint8 RGB array) shows."""
    pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8)
    side = min(pixels.shape[:2])
    if side != 128:  # one working size, so that thresholds in pixels mean the same thing
        pixels = cv2.resize(pixels, (128, 128), interpolation=cv2.INTER_AREA)
    pixels = pixels.astype(np.float32)
    ring = max(2, pixels.shape[0] // 32)
    border = np.concatenate([pixels[:ring].reshape(-1, 3), pixels[-ring:].reshape(-1, 3),
                             pixels[:, :ring].reshape(-1, 3), pixels[:, -ring:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    background_name = nearest_colour(background)

    distance = np.linalg.norm(pixels - background, axis=2)
    rough = (distance > 45).astype(np.uint8)
    rough = cv2.morphologyEx(rough, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    if rough.sum() < MIN_AREA * rough.size:
        return Verdict(None, None, background_name)
    core = cv2.erode(rough, np.ones((5, 5), np.uint8))
    inside = pixels[core.astype(bool)] if core.sum() >= 20 else pixels[rough.astype(bool)]
    foreground = np.median(inside, axis=0)

    # How far along the line from the background to the shape colour each pixel lies; the shape is > 0.5.
    direction = foreground - background
    length2 = float(direction @ direction)
    if length2 < 30 ** 2:
        return Verdict(None, None, background_name)
    along = ((pixels - background) @ direction) / length2
    mask = (along > 0.5).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return Verdict(None, None, background_name)
    outline = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(outline)
    if area < MIN_AREA * mask.size:
        return Verdict(None, None, background_name)
    return Verdict(shape_of(outline), nearest_colour(foreground), background_name)


def shape_features(outline) -> dict:
    area = cv2.contourArea(outline)
    hull_area = max(cv2.contourArea(cv2.convexHull(outline)), 1e-6)
    (_, _), (w, h), _ = cv2.minAreaRect(outline)
    perimeter = max(cv2.arcLength(outline, True), 1e-6)
    return {"solidity": area / hull_area, "extent": area / max(w * h, 1e-6),
            "circularity": 4 * math.pi * area / perimeter ** 2}


def shape_of(outline) -> str:
    f = shape_features(outline)
    if f["solidity"] < 0.8:
        return "star"
    if f["extent"] > 0.88:
        return "square"
    if f["extent"] < 0.64:
        return "triangle"
    return "circle" if f["circularity"] > 0.75 or f["extent"] < 0.83 else "square"
