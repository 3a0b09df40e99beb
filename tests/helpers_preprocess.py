"""Fixtures for the preprocess tests: real photographs from scikit-image, odd files, a tiny BLIP."""
from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

ORIENTATION = 0x0112


@lru_cache(maxsize=None)
def _photo_array(name: str) -> np.ndarray:
    return getattr(data, name)()


def photo(name: str = "astronaut") -> Image.Image:
    """A real photograph shipped by scikit-image: astronaut (a face), coffee, chelsea (a cat), rocket..."""
    array = _photo_array(name)
    image = Image.fromarray(array)
    return image.convert("RGB")


def astronaut_face_box() -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the astronaut's face, found with OpenCV's frontal-face cascade."""
    import cv2

    grey = cv2.cvtColor(np.asarray(photo("astronaut")), cv2.COLOR_RGB2GRAY)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    faces = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=7, minSize=(25, 25))
    assert len(faces) == 1, faces
    x, y, w, h = (int(v) for v in faces[0])
    return x, y, x + w, y + h


def wide_canvas_with_face_right(width: int = 1536) -> Image.Image:
    """The astronaut pasted flush right on a wide canvas of the coffee photo stretched (texture on the left)."""
    canvas = photo("coffee").resize((width - 512, 512))
    wide = Image.new("RGB", (width, 512))
    wide.paste(canvas, (0, 0))
    wide.paste(photo("astronaut"), (width - 512, 0))
    return wide


def exif_rotated_jpeg(path: Path, orientation: int = 6) -> Path:
    """A 60×40 JPEG stored sideways: left half red, right half blue, with an EXIF Orientation tag."""
    stored = Image.new("RGB", (60, 40), (255, 0, 0))
    stored.paste((0, 0, 255), (30, 0, 60, 40))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    stored.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    return path


def cmyk_jpeg(path: Path) -> Path:
    photo("chelsea").resize((120, 80)).convert("CMYK").save(path, "JPEG")
    return path


def palette_png_with_transparency(path: Path) -> Path:
    """A palette image: left half transparent, right half opaque green."""
    image = Image.new("P", (40, 20), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * (254 * 3))
    image.paste(1, (20, 0, 40, 20))
    image.save(path, transparency=0)
    return path


def rgba_png(path: Path) -> Path:
    """Left half fully transparent (stored colour black), right half opaque red."""
    array = np.zeros((20, 40, 4), dtype=np.uint8)
    array[:, 20:] = (255, 0, 0, 255)
    Image.fromarray(array, "RGBA").save(path)
    return path


def grey16_png(path: Path, value: int = 32768) -> Path:
    Image.fromarray(np.full((16, 16), value, dtype=np.uint16)).save(path)
    return path


def junk_png(path: Path) -> Path:
    path.write_text("this is not a picture")
    return path


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    photo("coffee").save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[:2000])
    return path


def make_tiny_blip(folder: Path) -> Path:
    """A tiny random BLIP captioner saved with save_pretrained (TECH_NOTES recipe); ~0.1 s per caption."""
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil,
                              BlipProcessor)

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]", "a", "photo", "of", "cat", "dog",
             "man", "woman", "on", "the", "table", "cup", "coffee", "in", "space", "suit", "with", "red", "blue"]
    vocab = folder / "vocab-src.txt"
    vocab.write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]", additional_special_tokens=["[ENC]"])
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, encoder_hidden_size=32, bos_token_id=tokenizer.bos_token_id,
                pad_token_id=tokenizer.pad_token_id, sep_token_id=tokenizer.sep_token_id,
                eos_token_id=tokenizer.sep_token_id)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(vision_config=vision, text_config=text))
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    vocab.unlink()
    return folder


def png_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))
