"""Embeddings carried by images, in the two ways the reference webui writes them (and reads them back).

1. A PNG text chunk ``sd-ti-embedding``: base64 of the embedding's dict as JSON, each tensor written as
   ``{"TORCHTENSOR": nested lists}``.
2. The "image embedding" look: the preview picture with a data panel on each side, separated from it by one
   black column. The dict's JSON is zlib-compressed; the low nibble of every byte goes into the left panel, the
   high nibble into the right one (three bytes per pixel, filling rows of the image's height). Each panel's
   nibbles are XOR'd with a fixed pseudo-random pattern (a linear congruential generator), and dots shaded from
   the first vector's magnitudes are drawn in the high nibbles, which a reader masks off. A reader crops the
   black border, finds the black separator columns, undoes the XOR and decompresses.
The preview also gets a caption overlay: ``<name>`` at the top, checkpoint name, ``[hash]`` and
``<vectors>v <step>s`` along the bottom, over a dark gradient (drawn with PIL's built-in font).
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from trainer.embeddings.core import Embedding, EmbeddingReadError, embedding_from_data, embedding_to_reference_dict
from trainer.embeddings.files import atomic_write

IMAGE_EXTENSIONS = (".png", ".webp", ".jxl", ".avif")
TEXT_CHUNK_KEY = "sd-ti-embedding"
TENSOR_TAG = "TORCHTENSOR"
CHANNELS = 3  # bytes per panel pixel

# ---------------------------------------------------------------------------------------------- JSON / base64


def _encode_tensor(value):
    if isinstance(value, torch.Tensor):
        return {TENSOR_TAG: value.detach().cpu().float().numpy().tolist()}
    raise TypeError(f"{type(value).__name__} cannot be written into an image embedding")


def _decode_tensor(obj: dict):
    if TENSOR_TAG in obj:
        return torch.from_numpy(np.asarray(obj[TENSOR_TAG], dtype=np.float32))
    return obj


def data_to_json(data: dict) -> str:
    """JSON text of an embedding dict, tensors as ``{"TORCHTENSOR": lists}`` (the reference's encoding)."""
    return json.dumps(data, default=_encode_tensor)


def data_from_json(text: str | bytes) -> dict:
    """Inverse of `data_to_json`: tensors come back as float32 tensors."""
    return json.loads(text, object_hook=_decode_tensor)


def data_to_b64(data: dict) -> str:
    """The value of the ``sd-ti-embedding`` text chunk."""
    return base64.b64encode(data_to_json(data).encode()).decode("ascii")


def data_from_b64(text: str | bytes) -> dict:
    """Decode an ``sd-ti-embedding`` text chunk; raises `EmbeddingReadError` when it is not base64 JSON."""
    try:
        return data_from_json(base64.b64decode(text))
    except (binascii.Error, ValueError, UnicodeDecodeError) as error:
        raise EmbeddingReadError(f"the {TEXT_CHUNK_KEY} text chunk is not base64 JSON ({error})") from None


# ------------------------------------------------------------------------------------------- pixel panels


def lcg_sequence(count: int) -> np.ndarray:
    """The reference's noise: seeds of ``seed = (1664525 * seed + 1013904223) mod 2**32`` from 0, each mod 255.

    Computed in blocks that double in size (the map applied L times is again affine), so a million values
    take milliseconds instead of a Python loop.
    """
    a, c, modulus = 1664525, 1013904223, 2**32
    seeds = np.empty(max(count, 1), dtype=np.uint64)
    seeds[0] = c
    filled, mult, add = 1, a, c  # (mult, add): the map that advances a seed by `filled` steps
    while filled < count:
        n = min(filled, count - filled)
        seeds[filled : filled + n] = (np.uint64(mult) * seeds[:n] + np.uint64(add)) & np.uint64(modulus - 1)
        filled += n
        mult, add = (mult * mult) % modulus, (mult * add + add) % modulus
    return (seeds[:count] % np.uint64(255)).astype(np.uint8)


def _scramble(block: np.ndarray) -> np.ndarray:
    """XOR the low nibbles with the noise pattern (its own inverse)."""
    noise = lcg_sequence(block.size).reshape(block.shape) & 0x0F
    return np.bitwise_xor(block.astype(np.uint8), noise)


def _decorate(block: np.ndarray, shades: np.ndarray) -> np.ndarray:
    """Draw a staggered grid of grey dots into the high nibbles (cosmetic; readers mask it off)."""
    height, width = block.shape[:2]
    canvas = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(canvas)
    count = 0
    for x in range(-6, width, 8):
        for row, y in enumerate(range(-6, height, 8)):
            shift = 4 if row % 2 == 0 else 0
            shade = int(shades[count % len(shades)])
            count += 1
            draw.ellipse((x + shift, y, x + shift + 6, y + 6), fill=(shade, shade, shade))
    return block ^ (np.asarray(canvas, dtype=np.uint8) & 0xF0)


def _padded_length(length: int, height: int) -> int:
    """The reference's panel size: round up past a multiple of the height, then to a multiple of height*3."""
    size = length + (height - length % height)
    return size + (height * CHANNELS - size % (height * CHANNELS))


def _dot_shades(data: dict) -> np.ndarray:
    """Grey levels from the first vector's magnitudes (first 1024 values), scaled to 0..255."""
    params = data.get("string_to_param") or {}
    first = next(iter(params.values()), None) if isinstance(params, dict) else None
    if not isinstance(first, torch.Tensor) or first.numel() == 0:
        return np.zeros(1, dtype=np.uint8)
    magnitudes = first.detach().float().reshape(-1, first.shape[-1])[0][:1024].abs().numpy()
    peak = float(magnitudes.max())
    if not math.isfinite(peak) or peak == 0.0:
        return np.zeros(len(magnitudes), dtype=np.uint8)
    return (magnitudes / peak * 255).astype(np.uint8)


def insert_data_panels(image: Image.Image, data: dict) -> Image.Image:
    """The image with the embedding dict hidden in a data panel on each side (RGB, wider than the input)."""
    height = image.size[1]
    raw = np.frombuffer(zlib.compress(data_to_json(data).encode(), level=9), dtype=np.uint8)
    size = _padded_length(len(raw), height)
    shades = _dot_shades(data)
    panels = []
    for nibbles, dot_shades in ((raw & 0x0F, shades), (raw >> 4, shades[::-1])):
        block = np.resize(nibbles, size).reshape(height, -1, CHANNELS)  # np.resize pads by repeating
        panels.append(Image.fromarray(_scramble(_decorate(block, dot_shades)), mode="RGB"))
    low, high = panels
    out = Image.new("RGB", (low.size[0] + image.size[0] + high.size[0] + 2, height), (0, 0, 0))
    out.paste(low, (0, 0))
    out.paste(image.convert("RGB"), (low.size[0] + 1, 0))
    out.paste(high, (low.size[0] + 1 + image.size[0] + 1, 0))
    return out


def _crop_black_border(pixels: np.ndarray) -> np.ndarray | None:
    """Crop to the bounding box of pixels whose three channels are all non-zero (None if there are none)."""
    lit = (pixels > 0).all(axis=2)
    rows, cols = np.flatnonzero(lit.any(axis=1)), np.flatnonzero(lit.any(axis=0))
    if len(rows) == 0:
        return None
    return pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def extract_data_panels(image: Image.Image) -> dict | None:
    """The embedding dict hidden in an image's side panels, or None when the image carries none."""
    pixels = _crop_black_border(np.asarray(image.convert("RGB"), dtype=np.uint8))
    if pixels is None:
        return None
    nibbles = pixels & 0x0F
    separators = np.flatnonzero(nibbles.sum(axis=(0, 2)) == 0)
    if len(separators) < 2:
        return None
    low = nibbles[:, : separators.min()]
    high = nibbles[:, separators.max() + 1 :]
    if low.shape != high.shape or low.size == 0:
        return None
    packed = (_scramble(high) << 4) | _scramble(low)
    try:
        return data_from_json(zlib.decompress(packed.tobytes()))
    except (zlib.error, ValueError, UnicodeDecodeError):
        return None


# ------------------------------------------------------------------------------------------------ caption


def _clamp_size(size: float) -> int:
    return max(4, min(int(size), 72))


def _font(size: float) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=_clamp_size(size))
    except TypeError:  # Pillow < 10.1: only the fixed-size bitmap font
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> float:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return max(right - left, 1)


def caption_overlay(image: Image.Image, title: str, left: str, middle: str, right: str) -> Image.Image:
    """The image darkened towards top and bottom, with a title at the top and three footers (RGBA)."""
    out = image.convert("RGBA")
    width, height = out.size
    rows = np.arange(height, dtype=np.float64)
    darkness = np.maximum(1 - np.cos(rows / height * 1.5), 1 - np.cos((height - rows) / height * 1.65))
    alpha = np.clip(darkness * 255, 0, 255).astype(np.uint8)
    shade = np.zeros((height, width, 4), dtype=np.uint8)
    shade[..., 3] = alpha[:, None]
    out = Image.alpha_composite(out, Image.fromarray(shade, mode="RGBA"))

    draw = ImageDraw.Draw(out)
    padding, base_size, fill = 10, 32, (255, 255, 255, 230)
    title_size = _clamp_size(base_size * (width * 0.75 - padding * 4) / _text_width(draw, title, _font(base_size)))
    title_font = _font(title_size)
    draw.text((padding, padding), title, anchor="lt", font=title_font, fill=fill)

    footers = [text for text in (left, middle, right) if text]
    sizes = [title_size * (width / 3 - padding) / _text_width(draw, t, title_font) for t in footers]
    footer_font = _font(min(sizes, default=base_size))
    bottom = height - padding
    draw.text((padding, bottom), left, anchor="ls", font=footer_font, fill=fill)
    draw.text((width / 2, bottom), middle, anchor="ms", font=footer_font, fill=fill)
    draw.text((width - padding, bottom), right, anchor="rs", font=footer_font, fill=fill)
    return out


# ----------------------------------------------------------------------------------------- files


def write_image_embedding(embedding: Embedding, preview_image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a PNG that carries ``embedding`` both ways: captioned preview + data panels, and the text chunk."""
    data = embedding_to_reference_dict(embedding)
    footer_mid = f"[{embedding.sd_checkpoint}]" if embedding.sd_checkpoint else ""
    footer_right = f"{embedding.num_vectors}v {embedding.step or 0}s"
    captioned = caption_overlay(
        preview_image, f"<{embedding.name}>", embedding.sd_checkpoint_name or "", footer_mid, footer_right
    )
    picture = insert_data_panels(captioned, data)
    info = PngImagePlugin.PngInfo()
    info.add_text(TEXT_CHUNK_KEY, data_to_b64(data))
    return atomic_write(path, lambda temp: picture.save(temp, format="PNG", pnginfo=info))


MAX_EMBEDDING_IMAGE_PIXELS = 4096 * 4096  # embedding images are previews of a few hundred pixels a side


def read_image_embedding(path: str | os.PathLike) -> Embedding | None:
    """The embedding an image carries (text chunk first, then the pixel panels), or None if it carries none.

    The name is the one stored inside (as the reference does), else the file stem.
    Raises `EmbeddingReadError` when the image cannot be opened or its embedding data is unusable.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size  # from the header: nothing is decoded yet
            if width * height > MAX_EMBEDDING_IMAGE_PIXELS:  # reading its text chunks would decode every pixel
                raise EmbeddingReadError(
                    f"the image is {width}x{height} pixels, larger than an embedding image can be "
                    f"(at most {MAX_EMBEDDING_IMAGE_PIXELS // 1_000_000} megapixels), so it was not decoded")
            text = getattr(image, "text", None) or {}
            if TEXT_CHUNK_KEY in text:
                data = data_from_b64(text[TEXT_CHUNK_KEY])
            else:
                data = extract_data_panels(image)
    except EmbeddingReadError:
        raise
    except Exception as error:
        raise EmbeddingReadError(f"the image could not be read ({str(error).strip()[:200]})") from None
    if data is None:
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return embedding_from_data(data, name=name if isinstance(name, str) and name else path.stem, filename=str(path))
