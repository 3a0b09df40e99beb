"""Preprocess a folder of images for training: the engine behind the "Preprocess images" tab and
`python -m preprocess`.

Per source image, each enabled step writes its own outputs, all cut from the original image:
split → focal crop → auto-sized crop → keep original size; when none of them ran, the image is scaled to
cover the target and centre-cropped. Every output may get a mirrored copy (next subindex) and a caption
(`<output stem>.txt`). Output names are `{index:05}-{subindex}-{source stem}.png`.

Choices, where the reference (A1111 v1.6) left room or had a quirk:
- Files are taken in name order; `index` counts the images actually read (the reference counted every
  directory entry, so unreadable files left gaps). Unlike the reference, a run into a destination that already
  holds outputs numbers on after the highest `NNNNN-` there, so nothing written before (or a caption the user
  edited) is replaced; with `overwrite` the numbering starts at 0 again, outputs of the same names are
  replaced, and an outdated `<output stem>.txt` next to a replaced output is removed when the new output has
  no caption.
- `.txt` files (captions) and hidden files are not tried as images; sub-folders are ignored. Other files that
  are not readable images are listed in `skipped` with the reason.
- Focal crop runs when the image's aspect differs from the target's (the reference ran it for every
  non-square image, and never for a square image with a non-square target). When the aspects already match
  it would be a plain resize, which the default step does.
- The focal debug image is written to `<destination>/focal-debug/`, named like the crop it explains, so it
  does not end up in the training set (the reference saved it as one more training image, captioned and
  flipped).
- Transparent pixels are composited on white; 16-bit images keep their tonal range (see images.py).
- All writes are atomic (temporary file, then os.replace). The source folder is never written to.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from PIL import Image, ImageOps

from common import events
from common.errors import UserError
from common.files import atomic_write_text, save_png
from common.image_files import is_hidden, read_caption

from .autosize import OBJECTIVES, autosize_crop
from .caption import CAPTION_ACTIONS, DEFAULT_BLIP_DIR, BlipCaptioner, combine_caption
from .focal import FaceFinder, FocalSettings, find_yunet_model, focal_crop
from .images import ImageReadError, cover_crop, open_image
from .split import split_image

DEBUG_FOLDER = "focal-debug"
MIN_SIZE, MAX_SIZE = 64, 2048
MAX_STEM_BYTES = 180


@dataclass
class PreprocessConfig:
    """Every option of the "Preprocess images" tab; defaults are the reference's."""

    src: str | Path = ""
    dst: str | Path = ""
    width: int = 512
    height: int = 512
    caption_action: str = "ignore"  # "ignore" | "copy" | "prepend" | "append"
    keep_original_size: bool = False
    flip: bool = False
    split: bool = False
    split_threshold: float = 0.5
    overlap_ratio: float = 0.2
    focal_crop: bool = False
    face_weight: float = 0.9
    entropy_weight: float = 0.15
    edges_weight: float = 0.5
    focal_debug: bool = False
    autosize: bool = False
    min_dim: int = 384
    max_dim: int = 768
    min_area: int = 4096
    max_area: int = 409600
    objective: str = "Maximize area"  # "Maximize area" | "Minimize error"
    error_threshold: float = 0.1
    caption: str = ""  # "" (none) or "blip"
    blip_model: str | Path | None = None  # a transformers BLIP folder; None: blip_default_dir, then the HF cache
    blip_default_dir: str | Path | None = None  # the data folder's models/BLIP; None: ./models/BLIP
    beams: int = 1
    min_length: int = 24
    max_length: int = 48
    yunet_model: str | Path | None = None  # None: models/opencv/face_detection_yunet*.onnx when present
    device: str | None = None  # for BLIP; None: cuda when available, else cpu
    overwrite: bool = False  # number from 0 and replace earlier outputs (else: number on after them)


@dataclass
class SkippedFile:
    name: str
    reason: str


@dataclass
class PreprocessResult:
    destination: Path
    total: int = 0  # source files tried
    processed: int = 0  # source images that produced their outputs
    written: list[Path] = field(default_factory=list)  # output images (PNG), in order
    captions: list[Path] = field(default_factory=list)  # caption files written
    debug_images: list[Path] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    summary: str = ""

    @property
    def written_count(self) -> int:
        return len(self.written)


ProgressFn = Callable[[events.Progress], None]
StopFn = Callable[[], bool]


def run_preprocess(config: PreprocessConfig, progress: ProgressFn | None = None,
                   should_stop: StopFn | None = None) -> PreprocessResult:
    """Preprocess config.src into config.dst. Raises UserError for bad settings; per-file problems are
    reported in the result's `skipped`. `progress(events.Progress)` is called after each file;
    `should_stop()` is checked before each file (an interrupt lets the current image finish)."""
    config = validate_config(config)
    src, dst = Path(config.src), Path(config.dst)
    try:
        files = list_source_files(src)
    except OSError as exc:
        raise UserError(f"The source directory {src} could not be read ({exc.strerror or exc}).") from None
    result = PreprocessResult(destination=dst, total=len(files))
    faces = None
    if config.focal_crop and config.face_weight > 0:
        faces = FaceFinder(_yunet_path(config))
    captioner = None
    if config.caption == "blip":  # loaded before anything is written: a missing model changes nothing
        captioner = BlipCaptioner(config.blip_model, beams=config.beams, min_length=config.min_length,
                                  max_length=config.max_length, device=config.device,
                                  default_dir=config.blip_default_dir or DEFAULT_BLIP_DIR)
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if captioner is not None:
            captioner.close()
        raise UserError(f"The destination directory {dst} could not be created ({exc.strerror or exc}).") from None

    if progress:
        progress(events.Progress(0, len(files), "Preprocessing..."))
    try:
        index = 0 if config.overwrite else next_free_index(dst)
        for done, path in enumerate(files, start=1):
            if should_stop is not None and should_stop():
                result.interrupted = True
                break
            try:
                image = open_image(path)
            except ImageReadError as exc:
                result.skipped.append(SkippedFile(path.name, str(exc)))
            else:
                try:
                    _process_one(image, path, index, config, result, faces, captioner)
                except UserError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one bad image must not end the run
                    result.skipped.append(SkippedFile(path.name, f"Failed while processing: {_one_line(exc)}"))
                index += 1
            if progress:
                progress(events.Progress(done, len(files), f"Preprocessing [Image {done}/{len(files)}] {path.name}"))
    finally:
        if captioner is not None:
            captioner.close()
        if faces is not None:
            result.warnings.extend(faces.notes)
    result.summary = _summary(result, src)
    return result


def validate_config(config: PreprocessConfig) -> PreprocessConfig:
    """Check every setting; returns a copy with resolved paths and whole numbers as int (sliders may send
    512.0). Raises UserError with one sentence."""
    config = replace(config, **{name: _as_int(getattr(config, name)) for name in _INT_FIELDS})
    if not str(config.src or "").strip():
        raise UserError("Please choose a source directory.")
    if not str(config.dst or "").strip():
        raise UserError("Please choose a destination directory.")
    src = Path(config.src).expanduser().resolve()
    dst = Path(config.dst).expanduser().resolve()
    if not src.exists():
        raise UserError(f"The source directory {src} does not exist.")
    if not src.is_dir():
        raise UserError(f"The source {src} is not a directory.")
    if src == dst:
        raise UserError("The source and destination directories must be different.")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"The destination {dst} exists and is not a directory.")
    for name in ("width", "height"):
        value = getattr(config, name)
        if not _is_int(value) or not MIN_SIZE <= value <= MAX_SIZE:
            raise UserError(f"{name.capitalize()} must be a whole number from {MIN_SIZE} to {MAX_SIZE}, not {value!r}.")
    if config.caption_action not in CAPTION_ACTIONS:
        raise UserError(f"The caption action must be one of {', '.join(CAPTION_ACTIONS)}, not {config.caption_action!r}.")
    if config.caption not in ("", None, "blip"):
        raise UserError(f"The caption model must be 'blip' or none, not {config.caption!r}.")
    if config.split:
        _check_range("The split threshold", config.split_threshold, 0.0, 1.0)
        _check_range("The overlap ratio", config.overlap_ratio, 0.0, 0.9)
    if config.focal_crop:
        for label, value in (("face", config.face_weight), ("entropy", config.entropy_weight),
                             ("edges", config.edges_weight)):
            _check_range(f"The {label} weight", value, 0.0, math.inf)
        if config.yunet_model and not Path(config.yunet_model).expanduser().is_file():
            raise UserError(f"The YuNet face model {config.yunet_model} does not exist.")
    if config.autosize:
        for name in ("min_dim", "max_dim", "min_area", "max_area"):
            if not _is_int(getattr(config, name)) or getattr(config, name) < 1:
                raise UserError(f"The auto-sized crop {name.replace('_', ' ')} must be a positive whole number.")
        if config.min_dim > config.max_dim:
            raise UserError("The auto-sized crop lower dimension bound is above the upper bound.")
        if config.min_area > config.max_area:
            raise UserError("The auto-sized crop lower area bound is above the upper bound.")
        if config.objective not in OBJECTIVES:
            raise UserError(f"The auto-sized crop objective must be \"Maximize area\" or \"Minimize error\", "
                            f"not {config.objective!r}.")
        _check_range("The auto-sized crop error threshold", config.error_threshold, 0.0, 1.0)
    if config.caption == "blip":
        if not _is_int(config.beams) or config.beams < 1:
            raise UserError("The number of BLIP beams must be at least 1.")
        if not _is_int(config.min_length) or not _is_int(config.max_length) or config.min_length < 0:
            raise UserError("The BLIP caption lengths must be whole numbers, 0 or more.")
        if config.max_length < config.min_length:
            raise UserError("The BLIP maximum caption length is below the minimum length.")
    return replace(config, src=src, dst=dst, caption=config.caption or "")


OUTPUT_NUMBER = re.compile(r"^(\d{5,})-\d+-")


def next_free_index(dst: Path) -> int:
    """One more than the highest output number (`NNNNN-` prefix) already in `dst`; 0 for an empty folder."""
    numbers = [int(match.group(1)) for entry in os.scandir(dst) if (match := OUTPUT_NUMBER.match(entry.name))]
    return max(numbers, default=-1) + 1


def list_source_files(src: Path) -> list[Path]:
    """The files of `src` that are tried as images, in name order (not recursive)."""
    files = []
    for entry in os.scandir(src):
        if is_hidden(Path(entry.name)) or entry.name.lower().endswith(".txt"):
            continue
        try:
            if not entry.is_file():
                continue
        except OSError:
            continue
        files.append(Path(entry.path))
    return sorted(files, key=lambda p: p.name)


def _process_one(image: Image.Image, path: Path, index: int, config: PreprocessConfig,
                 result: PreprocessResult, faces: FaceFinder | None, captioner) -> None:
    width, height = config.width, config.height
    existing = read_caption(path)
    stem = _safe_stem(path.stem)
    writer = _Writer(result, Path(result.destination), index, stem, config, existing, captioner)
    made_something = False

    if config.split:
        tiles = split_image(image, width, height, config.split_threshold, config.overlap_ratio)
        for tile in tiles:
            writer.save(tile)
        made_something = made_something or bool(tiles)

    if config.focal_crop and image.width * height != image.height * width:
        settings = FocalSettings(width, height, config.face_weight, config.entropy_weight,
                                 config.edges_weight, config.focal_debug)
        crop = focal_crop(image, settings, faces)
        subindex = writer.save(crop.image)
        if crop.debug is not None:
            writer.save_debug(crop.debug, subindex)
        made_something = True

    autosize_failed = False
    if config.autosize:
        cropped = autosize_crop(image, config.min_dim, config.max_dim, config.min_area, config.max_area,
                                config.objective, config.error_threshold)
        if cropped is None:
            autosize_failed = True
        else:
            writer.save(cropped)
        made_something = True

    if config.keep_original_size:
        writer.save(image)
        made_something = True

    if not made_something:
        writer.save(cover_crop(image, width, height))

    no_fit = (f"the auto-sized crop found no size for {image.width}×{image.height} within the bounds "
              "and the error threshold")
    if writer.count:
        result.processed += 1
        if autosize_failed:
            result.warnings.append(f"{path.name}: {no_fit}.")
    else:
        result.skipped.append(SkippedFile(path.name, f"No output: {no_fit}."))


class _Writer:
    """Writes one source image's outputs: numbering, flipped copies, captions, debug images."""

    def __init__(self, result, dst: Path, index: int, stem: str, config: PreprocessConfig,
                 existing: str | None, captioner):
        self.result, self.dst, self.index, self.stem = result, dst, index, stem
        self.config, self.existing, self.captioner = config, existing, captioner
        self.subindex = 0
        self.count = 0

    def save(self, image: Image.Image) -> int:
        """Save `image` (and its mirror when flipping); returns the subindex of `image`."""
        first = self._save_one(image)
        if self.config.flip:
            self._save_one(ImageOps.mirror(image))
        return first

    def _save_one(self, image: Image.Image) -> int:
        subindex = self.subindex
        basename = f"{self.index:05}-{subindex}-{self.stem}"
        generated = self.captioner(image) if self.captioner is not None else ""
        caption = combine_caption(self.config.caption_action, self.existing, generated)
        png = self.dst / f"{basename}.png"
        txt = self.dst / f"{basename}.txt"
        try:
            save_png(image, png, exclusive=not self.config.overwrite)
            self.result.written.append(png)
            if caption:
                atomic_write_text(txt, caption, exclusive=not self.config.overwrite)
                self.result.captions.append(txt)
            elif self.config.overwrite and txt.is_file():
                txt.unlink()  # outdated caption of an earlier run's output of the same name
        except FileExistsError:
            raise UserError(f"{png.name} or its caption appeared in {self.dst} while preprocessing (is another run "
                            "writing there?); it was kept, and preprocessing stopped.") from None
        except OSError as exc:
            raise UserError(f"Could not write {png.name} in {self.dst} ({exc.strerror or exc}).") from None
        self.subindex += 1
        self.count += 1
        return subindex

    def save_debug(self, image: Image.Image, subindex: int) -> None:
        folder = self.dst / DEBUG_FOLDER
        path = folder / f"{self.index:05}-{subindex}-{self.stem}.png"
        try:
            folder.mkdir(exist_ok=True)
            save_png(image, path)
        except OSError as exc:
            raise UserError(f"Could not write the debug image {path} ({exc.strerror or exc}).") from None
        self.result.debug_images.append(path)


def _yunet_path(config: PreprocessConfig) -> Path | None:
    if config.yunet_model:
        return Path(config.yunet_model).expanduser()
    return find_yunet_model()


def _safe_stem(stem: str) -> str:
    """The source stem, shortened if needed so that output names stay within file-system limits."""
    data = stem.encode("utf-8")
    if len(data) <= MAX_STEM_BYTES:
        return stem
    return data[:MAX_STEM_BYTES].decode("utf-8", errors="ignore")


def _summary(result: PreprocessResult, src: Path) -> str:
    if result.total == 0 and not result.interrupted:
        return f"No files to preprocess in {src}."
    head = "Interrupted" if result.interrupted else "Done"
    text = (f"{head}: {result.processed} of {result.total} source files preprocessed, "
            f"{_plural(len(result.written), 'image')} written to {result.destination}")
    if result.captions:
        text += f" with {_plural(len(result.captions), 'caption')}"
    if result.skipped:
        text += f"; {_plural(len(result.skipped), 'file')} skipped"
    return text + "."


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _check_range(label: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
            or not low <= value <= high:
        bound = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
        raise UserError(f"{label} must be {bound}, not {value!r}.")


_INT_FIELDS = ("width", "height", "min_dim", "max_dim", "min_area", "max_area", "beams", "min_length", "max_length")


def _as_int(value):
    """Integral floats (from sliders) become int; anything else is left for validation to judge."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _one_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
