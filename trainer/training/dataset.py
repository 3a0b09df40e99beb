"""Training data: images + captions + a prompt template -> batches of cached latents and fresh prompts.

Every image is VAE-encoded once, when the dataset is built (the expensive part of a step on a small GPU and
the whole cost on a CPU), and kept on disk by `trainer.training.latent_cache` so later runs and resumes skip it; the
loop then only draws batches from memory.
"""
import io
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from common import events
from common.errors import UserError
from common.image_files import list_images, read_caption
from trainer.models.sdxl import vae_precision
from trainer.training.latent_cache import CachedLatent, LatentCache, file_digest, vae_identity

LEADING_NUMBERS = re.compile(r"^[-\d]+\s*")


@dataclass
class Sample:
    path: Path
    filewords: str
    latent: torch.Tensor  # [4, h, w]: the kept sample ("once"), or the posterior mean
    latent_std: torch.Tensor | None = None  # kept only for "random": re-sampled every time
    weight: torch.Tensor | None = None  # [4, h, w] loss weight from the PNG alpha channel
    original_size: tuple = (0, 0)  # (height, width) of the image file, before resizing (SDXL conditions on it)
    crop: tuple = (0, 0)  # (top, left) of the part of the image that was kept
    mean: torch.Tensor | None = None  # the posterior mean when `latent` is a sample ("once"); see `posterior_mean`

    @property
    def posterior_mean(self) -> torch.Tensor:
        """The image's latent without sampling noise: what does not depend on the training seed."""
        return self.mean if self.mean is not None else self.latent


@dataclass
class Batch:
    latents: torch.Tensor  # [B, 4, h, w]
    weights: torch.Tensor | None
    filewords: list
    paths: list
    original_sizes: list = field(default_factory=list)  # [(height, width)] of each image file
    crops: list = field(default_factory=list)  # [(top, left)]: always (0, 0) (resizing keeps the whole image,
    # not resizing trims the right/bottom edge pixels to a multiple of 8)


@dataclass
class DatasetReport:
    images: int = 0
    skipped: list = field(default_factory=list)  # [(file name, reason)]
    buckets: dict = field(default_factory=dict)  # (width, height) -> count
    cached: int = 0  # images whose latents came from the on-disk cache


def resolve_template(templates_dir, template: str) -> Path:
    """The prompt template file: `template` as a path, else by name in the templates folder."""
    path = Path(template)
    if not path.is_file():
        path = Path(templates_dir) / template
    if not path.is_file():
        raise UserError(f"Prompt template '{template}' was not found in {templates_dir}.")
    return path


def read_template(path: Path) -> list:
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise UserError(f"Prompt template {path} is not UTF-8 text; save it as UTF-8.") from None
    except OSError as e:
        raise UserError(f"Cannot read prompt template {path}: {e.strerror or e}.") from None
    lines = [line for line in lines if line]
    if not lines:
        raise UserError(f"Prompt template {path} is empty.")
    return lines


def filewords_for(image_path: Path, word_regex: str = "", join_string: str = " ") -> str:
    """The caption of an image: `<stem>.txt` beside it, else the file name without its leading numbers."""
    text = read_caption(image_path)
    if text is None:
        text = LEADING_NUMBERS.sub("", Path(image_path).stem)
    if word_regex:
        text = join_string.join(re.findall(word_regex, text))
    return text


def build_prompt(template_lines: list, name: str, filewords: str, rng: random.Random,
                 shuffle_tags: bool = False, tag_dropout: float = 0.0) -> str:
    """A template line picked afresh, `[filewords]` (shuffled / dropped out by tags) and `[name]` filled in."""
    line = rng.choice(template_lines)
    tags = filewords.split(",")
    if tag_dropout > 0:
        tags = [tag for tag in tags if rng.random() > tag_dropout]
    if shuffle_tags:
        rng.shuffle(tags)
    return line.replace("[filewords]", ",".join(tags)).replace("[name]", name)


def open_image(path: Path) -> Image.Image:
    """Open with EXIF rotation applied; RGBA when the image has transparency, RGB otherwise."""
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if image.mode == "I;16" or image.mode == "I":
        image = Image.fromarray((np.asarray(image, dtype=np.float32) / 257).clip(0, 255).astype(np.uint8))
    return image.convert("RGBA" if has_alpha else "RGB")


MIN_SIDE = 64  # smaller images leave the VAE's deepest level with a single pixel, which it cannot normalise


def fit_image(image: Image.Image, width: int, height: int, resize: bool) -> Image.Image:
    if resize:
        return image.resize((width, height), Image.BICUBIC)
    # Keep the size, but the VAE needs multiples of 8: trim the odd edge pixels.
    w, h = image.size
    if min(w, h) < MIN_SIDE:
        raise ImageTooSmall(f"is {w}x{h}, smaller than {MIN_SIDE} px on a side (untick \"Do not resize images\" "
                            "to scale it up)")
    w8, h8 = w - w % 8, h - h % 8
    return image.crop((0, 0, w8, h8)) if (w8, h8) != (w, h) else image


class ImageTooSmall(ValueError):
    """An image too small to train on at its own size; the message is the reason shown to the user."""


def alpha_weight(image: Image.Image, latent_shape) -> torch.Tensor | None:
    """The alpha channel on the latent grid, shifted to min 0 and scaled to mean 1 (None without alpha)."""
    if image.mode != "RGBA":
        return None
    channels, h, w = latent_shape
    alpha = np.asarray(image.getchannel("A").resize((w, h), Image.BILINEAR), dtype=np.float32)
    weight = torch.from_numpy(alpha).expand(channels, h, w).clone()
    weight -= weight.min()
    mean = weight.mean()
    return weight / mean if mean > 0 else torch.ones_like(weight)


def to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


class TextualInversionDataset:
    """Cached latents and captions of one dataset folder, drawn in shuffled batches (one size per batch).

    Images are encoded one at a time (peak memory is one image's VAE pass, whatever the dataset) and kept in
    the on-disk latent cache (`trainer.training.latent_cache`) under `cache_dir`; with `cache_dir=None` they are kept
    in memory for this run only. A warm start reads each image's bytes (for its hash) and its cache file,
    nothing more."""

    def __init__(self, model, folder, width=512, height=512, resize=True, latent_sampling="once",
                 use_alpha_weight=False, word_regex="", join_string=" ", seed=0, progress=None, should_stop=None,
                 cache_dir=None):
        self.model = model
        self.latent_sampling = latent_sampling
        self.report = DatasetReport()
        self.samples = []
        generator = torch.Generator().manual_seed(seed)
        cache = LatentCache(cache_dir, vae_identity(model.vae))
        self.cache_folder = cache.folder
        vsf = model.vae_scale_factor
        channels = model.vae.config.latent_channels
        size_setting = f"resize {width}x{height}" if resize else "own size, trimmed to multiples of 8"
        expected_hw = (height // vsf, width // vsf) if resize else None
        paths = list_images(folder)
        for i, path in enumerate(paths):
            if should_stop and should_stop():
                break
            try:
                content = path.read_bytes()
            except OSError as e:
                self.report.skipped.append((path.name, f"cannot be read ({e.strerror or e.__class__.__name__})"))
                continue
            key = LatentCache.key(file_digest(content), size_setting, cache.vae_id)
            entry = cache.load(key, channels, expected_hw)
            if entry is not None:
                self.report.cached += 1
            else:
                try:
                    image = open_image(io.BytesIO(content))
                    original_size = (image.height, image.width)
                    image = fit_image(image, width, height, resize)
                except ImageTooSmall as e:
                    self.report.skipped.append((path.name, str(e)))
                    continue
                except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
                    self.report.skipped.append((path.name, f"cannot be read as an image ({e.__class__.__name__})"))
                    continue
                entry = self._encode(image, original_size)
                del image
                cache.store(key, entry, path.name)
            self._add(path, filewords_for(path, word_regex, join_string), entry, use_alpha_weight, generator)
            if progress:
                progress(events.Progress(i + 1, len(paths)))
        if not self.samples:
            reason = f" ({len(self.report.skipped)} unreadable files)" if self.report.skipped else ""
            raise UserError(f"Dataset directory {folder} has no images to train on{reason}.")
        self.report.images = len(self.samples)
        self._index_buckets()

    def _index_buckets(self):
        self.buckets = {}
        for index, sample in enumerate(self.samples):
            self.buckets.setdefault(tuple(sample.latent.shape[1:]), []).append(index)
        vsf = self.model.vae_scale_factor
        self.report.buckets = {(w * vsf, h * vsf): len(v) for (h, w), v in self.buckets.items()}

    def hold_out(self, share: float) -> list:
        """Take a share of the images out of training and return them (for validation): evenly spread over the
        files in name order, so the same images whatever the seed. At least one image stays to train on."""
        count = max(1, round(share * len(self.samples)))
        if count >= len(self.samples):
            raise UserError(f"Holding out {share:g} of {len(self.samples)} images for validation leaves none to "
                            "train on; lower the validation share or add images.")
        picked = {int((i + 0.5) * len(self.samples) / count) for i in range(count)}
        held = [s for i, s in enumerate(self.samples) if i in picked]
        self.samples = [s for i, s in enumerate(self.samples) if i not in picked]
        self.report.images = len(self.samples)
        self._index_buckets()
        return held

    @torch.inference_mode()
    def _encode(self, image: Image.Image, original_size: tuple) -> CachedLatent:
        """One image through the VAE encoder, in the VAE's own dtype (outside any autocast)."""
        vae = self.model.vae
        with vae_precision(self.model):
            pixels = to_tensor(image)[None].to(self.model.device, dtype=next(vae.parameters()).dtype)
            dist = vae.encode(pixels).latent_dist
        mean = dist.mean[0].float().cpu() * self.model.latent_scale
        std = dist.std[0].float().cpu() * self.model.latent_scale
        weight = alpha_weight(image, mean.shape)
        return CachedLatent(mean.clone(), std.clone(), weight[0].clone() if weight is not None else None,
                            original_size)

    def _add(self, path, words, entry: CachedLatent, use_alpha_weight, generator):
        sample = Sample(path, words, entry.mean, original_size=entry.original_size)
        if self.latent_sampling == "once":
            noise = torch.randn(entry.mean.shape, generator=generator)
            sample.latent = entry.mean + entry.std * noise
            sample.mean = entry.mean
        elif self.latent_sampling == "random":
            sample.latent_std = entry.std
        if use_alpha_weight and entry.alpha_weight is not None:
            sample.weight = entry.alpha_weight.expand(entry.mean.shape).clone()
        self.samples.append(sample)

    def __len__(self):
        return len(self.samples)

    def batches_per_epoch(self, batch_size: int) -> int:
        return sum(max(1, math.ceil(len(v) / batch_size)) for v in self.buckets.values())

    def epoch(self, batch_size: int, rng: random.Random, generator: torch.Generator, rank=0, world_size=1):
        """One shuffled pass: batches of `batch_size` from one bucket at a time (the last of a bucket may be
        smaller). With several processes, process `rank` takes every `world_size`-th batch."""
        order = []
        for indices in self.buckets.values():
            indices = indices[:]
            rng.shuffle(indices)
            order += [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
        rng.shuffle(order)
        for group in order[rank::world_size]:
            yield self._collate([self.samples[i] for i in group], generator)

    def _collate(self, samples, generator) -> Batch:
        latents = []
        for s in samples:
            if s.latent_std is not None:
                latents.append(s.latent + s.latent_std * torch.randn(s.latent.shape, generator=generator))
            else:
                latents.append(s.latent)
        weights = None
        if any(s.weight is not None for s in samples):
            weights = torch.stack([s.weight if s.weight is not None else torch.ones_like(s.latent) for s in samples])
        return Batch(torch.stack(latents), weights, [s.filewords for s in samples], [s.path for s in samples],
                     [s.original_size for s in samples], [s.crop for s in samples])


def dataset_from_settings(model, cfg, seed: int, emit, should_stop) -> TextualInversionDataset:
    """The cached-latent dataset of `cfg.dataset`, saying what it does; each skipped file is a Warning."""
    emit(events.Message(f"Preparing dataset from {cfg.dataset}..."))
    dataset = TextualInversionDataset(
        model, cfg.dataset, cfg.width, cfg.height, resize=not cfg.no_resize,
        latent_sampling=cfg.latent_sampling, use_alpha_weight=cfg.alpha_weight, word_regex=cfg.word_regex,
        join_string=cfg.join_string, seed=seed, progress=emit, should_stop=should_stop,
        cache_dir=cfg.latent_cache_folder())
    for file_name, reason in dataset.report.skipped:
        emit(events.Warning(f"Skipped {file_name}: {reason}."))
    cached = (f" ({dataset.report.cached} from the latent cache in {dataset.cache_folder})"
              if dataset.cache_folder is not None else "")
    skipped = "".join(f"; skipped {file_name} ({reason})" for file_name, reason in dataset.report.skipped)
    emit(events.Message(f"Dataset: {len(dataset)} images{cached}{skipped}."))
    return dataset
