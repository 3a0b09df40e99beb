"""Auto focal point crop.

The image is scaled to cover the target (so the crop spans its short side), then three kinds of points of
interest are collected, each only when its weight is > 0:

- edges: Shi–Tomasi corners (`cv2.goodFeaturesToTrack`, ≤ 100 points, quality 0.04, minimum distance 6% of
  the short side) on greyscale with the bottom 10% greyed out (watermarks);
- entropy: a crop-sized window slides along the long axis one pixel at a time; the centre of the window of
  highest Shannon entropy (256-bin greyscale histogram) is the point;
- faces: YuNet (`cv2.FaceDetectorYN`) when a model file is available, otherwise OpenCV's Haar cascades
  (frontal default, frontal alt2, profile both ways, then eyes); a face point is the box centre horizontally
  and its upper third vertically (eyes: the box centre).

Each kind's centroid is averaged with the weights renormalised over the kinds that found points; the crop is
centred there and clamped inside the image. The optional debug image is the scaled image annotated with
each kind's points and weight, the focal point and the crop box.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from common.errors import first_line

KINDS = ("edges", "entropy", "faces")
COLOURS = {"edges": (0, 0, 255), "entropy": (255, 255, 0), "faces": (255, 0, 0)}
LABELS = {"edges": "Edges", "entropy": "Entropy", "faces": "Face"}
FOCUS_COLOUR = (0, 255, 0)

YUNET_GLOB = "face_detection_yunet*.onnx"
DEFAULT_YUNET_DIR = Path("models") / "opencv"
HAAR_MAX_SHORT_SIDE = 384


@dataclass(frozen=True)
class FocalSettings:
    width: int
    height: int
    face_weight: float = 0.9
    entropy_weight: float = 0.15
    edges_weight: float = 0.5
    debug: bool = False

    def weight(self, kind: str) -> float:
        return {"edges": self.edges_weight, "entropy": self.entropy_weight, "faces": self.face_weight}[kind]


@dataclass
class FocalCrop:
    image: Image.Image  # the crop, exactly width×height
    scale: float  # source → scaled image factor
    focus: tuple[int, int]  # focal point in the scaled image
    box: tuple[int, int, int, int]  # crop box in the scaled image
    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)  # renormalised, kinds that found points
    debug: Image.Image | None = None


def find_yunet_model(folder: str | Path = DEFAULT_YUNET_DIR) -> Path | None:
    """The newest `face_detection_yunet*.onnx` in `folder` (by name: 2023mar before 2022mar), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted(folder.glob(YUNET_GLOB), reverse=True)
    return found[0] if found else None


class FaceFinder:
    """Finds face points in RGB arrays; built once per run (detectors are loaded once)."""

    def __init__(self, yunet_model: str | Path | None = None):
        self.notes: list[str] = []
        self._yunet = None
        self._cascades: list[tuple[str, object, float]] | None = None
        if yunet_model is not None:
            try:
                self._yunet = cv2.FaceDetectorYN.create(str(yunet_model), "", (320, 320), 0.9, 0.3, 5000)
            except cv2.error as exc:
                self.notes.append(f"The YuNet face model {Path(yunet_model).name} could not be loaded "
                                  f"({first_line(exc)}); using OpenCV's Haar cascades instead.")
                self._yunet = None

    @property
    def method(self) -> str:
        return "yunet" if self._yunet is not None else "haar"

    def find(self, rgb: np.ndarray) -> list[tuple[float, float]]:
        if self._yunet is not None:
            return self._find_yunet(rgb)
        return self._find_haar(rgb)

    def _find_yunet(self, rgb: np.ndarray) -> list[tuple[float, float]]:
        height, width = rgb.shape[:2]
        try:
            self._yunet.setInputSize((width, height))
            _, faces = self._yunet.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        except cv2.error as exc:
            self.notes.append(f"YuNet face detection failed ({first_line(exc)}).")
            return []
        if faces is None:
            return []
        return [_face_point(*face[:4]) for face in np.asarray(faces).reshape(len(faces), -1)]

    def _load_cascades(self) -> list[tuple[str, object, float]]:
        if self._cascades is None:
            self._cascades = []
            base = Path(cv2.data.haarcascades)
            for kind, filename, min_fraction in (
                ("face", "haarcascade_frontalface_default.xml", 0.05),
                ("face", "haarcascade_frontalface_alt2.xml", 0.05),
                ("profile", "haarcascade_profileface.xml", 0.05),
                ("eye", "haarcascade_eye.xml", 0.02),
            ):
                path = base / filename
                classifier = cv2.CascadeClassifier(str(path)) if path.is_file() else None
                if classifier is None or classifier.empty():
                    continue
                self._cascades.append((kind, classifier, min_fraction))
            if not self._cascades:
                self.notes.append("OpenCV's Haar cascade files were not found; faces are not detected.")
        return self._cascades

    def _find_haar(self, rgb: np.ndarray) -> list[tuple[float, float]]:
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        # Cascades cost time in proportion to the pixels: look at a copy whose short side is at most
        # HAAR_MAX_SHORT_SIDE (faces smaller than ~6% of it are not looked for anyway) and scale back.
        factor = min(1.0, HAAR_MAX_SHORT_SIDE / min(grey.shape))
        if factor < 1.0:
            size = (max(1, round(grey.shape[1] * factor)), max(1, round(grey.shape[0] * factor)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        points = self._haar_points(grey)
        return [(x / factor, y / factor) for x, y in points]

    def _haar_points(self, grey: np.ndarray) -> list[tuple[float, float]]:
        height, width = grey.shape
        for kind, classifier, min_fraction in self._load_cascades():
            side = max(1, int(min(width, height) * min_fraction))
            boxes = _detect(classifier, grey, side)
            if kind == "profile":  # the cascade only knows one side: look at the mirror image too
                mirrored = _detect(classifier, cv2.flip(grey, 1), side)
                boxes += [(width - x - w, y, w, h) for x, y, w, h in mirrored]
            if boxes:
                if kind == "eye":
                    return [(x + w / 2, y + h / 2) for x, y, w, h in boxes]
                return [_face_point(x, y, w, h) for x, y, w, h in boxes]
        return []


def _detect(classifier, grey: np.ndarray, side: int) -> list[tuple[int, int, int, int]]:
    """detectMultiScale that tolerates OpenCV's return types (empty tuple or N×4 array) and errors."""
    try:
        found = classifier.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=7, minSize=(side, side),
                                            flags=cv2.CASCADE_SCALE_IMAGE)
    except cv2.error:
        return []
    if found is None or len(found) == 0:
        return []
    return [tuple(int(v) for v in box[:4]) for box in np.asarray(found).reshape(-1, 4)]


def _face_point(x: float, y: float, w: float, h: float) -> tuple[float, float]:
    return float(x + w / 2), float(y + h / 3)


def edge_points(grey: np.ndarray) -> list[tuple[float, float]]:
    """Shi–Tomasi corners with the bottom 10% of the image greyed out."""
    grey = grey.copy()
    height, width = grey.shape
    grey[int(height * 0.9):, :] = 153
    min_distance = max(1.0, min(width, height) * 0.06)
    try:
        corners = cv2.goodFeaturesToTrack(grey, maxCorners=100, qualityLevel=0.04, minDistance=min_distance,
                                          useHarrisDetector=False)
    except cv2.error:
        return []
    if corners is None:
        return []
    return [(float(x), float(y)) for x, y in np.asarray(corners).reshape(-1, 2)]


def window_entropies(grey: np.ndarray, window: int, axis: int) -> np.ndarray:
    """Shannon entropy (bits) of every `window`-long slice of `grey` along `axis` (1 = columns slide)."""
    lines = grey if axis == 0 else grey.T  # rows of `lines` are positions along the sliding axis
    length = lines.shape[0]
    index = np.arange(length, dtype=np.int64)[:, None] * 256 + lines.astype(np.int64)
    per_line = np.bincount(index.ravel(), minlength=length * 256).reshape(length, 256)
    cumulative = np.zeros((length + 1, 256), dtype=np.int64)
    np.cumsum(per_line, axis=0, out=cumulative[1:])
    hist = (cumulative[window:] - cumulative[:-window]).astype(np.float64)
    p = hist / hist.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p), 0.0)
    return -terms.sum(axis=1)


def entropy_points(grey: np.ndarray, crop_w: int, crop_h: int) -> list[tuple[float, float]]:
    """Centre of the crop-sized window of highest entropy along the long axis ([] when it cannot slide)."""
    height, width = grey.shape
    if width > crop_w:
        best = int(np.argmax(window_entropies(grey, crop_w, axis=1)))
        return [(best + crop_w / 2, height / 2)]
    if height > crop_h:
        best = int(np.argmax(window_entropies(grey, crop_h, axis=0)))
        return [(width / 2, best + crop_h / 2)]
    return []


def centroid(points: list[tuple[float, float]]) -> tuple[float, float]:
    xs, ys = zip(*points)
    return sum(xs) / len(xs), sum(ys) / len(ys)


def scale_to_cover(image: Image.Image, width: int, height: int) -> tuple[Image.Image, float]:
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if size == image.size:
        return image, scale
    return image.resize(size, Image.Resampling.LANCZOS), scale


def focal_crop(image: Image.Image, settings: FocalSettings, faces: FaceFinder | None = None) -> FocalCrop:
    """Crop `image` to settings.width×height around its focal point."""
    crop_w, crop_h = settings.width, settings.height
    scaled, scale = scale_to_cover(image, crop_w, crop_h)
    rgb = np.asarray(scaled)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)

    points: dict[str, list[tuple[float, float]]] = {}
    if settings.edges_weight > 0:
        points["edges"] = edge_points(grey)
    if settings.entropy_weight > 0:
        points["entropy"] = entropy_points(grey, crop_w, crop_h)
    if settings.face_weight > 0:
        points["faces"] = (faces or FaceFinder()).find(rgb)

    found = [kind for kind in KINDS if points.get(kind)]
    total = sum(settings.weight(kind) for kind in found)
    weights = {kind: settings.weight(kind) / total for kind in found}
    if found:
        fx = sum(centroid(points[kind])[0] * weights[kind] for kind in found)
        fy = sum(centroid(points[kind])[1] * weights[kind] for kind in found)
    else:
        fx, fy = scaled.width / 2, scaled.height / 2
    focus = (int(round(fx)), int(round(fy)))

    x1 = min(max(0, int(round(fx - crop_w / 2))), scaled.width - crop_w)
    y1 = min(max(0, int(round(fy - crop_h / 2))), scaled.height - crop_h)
    box = (x1, y1, x1 + crop_w, y1 + crop_h)
    result = FocalCrop(scaled.crop(box), scale, focus, box, points, weights)
    if settings.debug:
        result.debug = draw_debug(scaled, result)
    return result


def draw_debug(scaled: Image.Image, crop: FocalCrop) -> Image.Image:
    """The scaled image with each kind's points and weight, the focal point and the crop box drawn on it."""
    canvas = scaled.copy()
    draw = ImageDraw.Draw(canvas)
    marker = max(4, int(min(canvas.size) * 0.07))
    for kind in KINDS:
        found = crop.points.get(kind) or []
        if not found:
            continue
        colour = COLOURS[kind]
        for x, y in found:
            draw.rectangle((x - 2, y - 2, x + 2, y + 2), outline=colour)
        cx, cy = centroid(found)
        weight = crop.weights.get(kind, 0.0)
        radius = max(3, marker * weight / 2)
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=colour, width=2)
        draw.text((cx - radius, cy - radius - 14), f"{LABELS[kind]}: {weight:.2f}", fill=colour)
    fx, fy = crop.focus
    radius = marker / 2
    draw.ellipse((fx - radius, fy - radius, fx + radius, fy + radius), outline=FOCUS_COLOUR, width=3)
    x1, y1, x2, y2 = crop.box
    draw.rectangle((x1, y1, x2 - 1, y2 - 1), outline=FOCUS_COLOUR, width=2)
    return canvas
